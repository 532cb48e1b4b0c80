"""Vectorisable exp/sigmoid/tanh/erf in torch_rc's TIR pipeline: accuracy against float64, the
special values, and that kernels built for CPUs no longer call LLVM's (scalarised) exp."""

import re

import numpy as np
import pytest
import torch

from torch_rc.platform.tvm_shim import tvm_api

N = 1 << 16


def _kernel(op: str, n: int = N, lanes: int = 16, dtype: str = "float32"):
    """A 1-D elementwise kernel; vectorised by ``lanes`` (1: scalar loop)."""
    api = tvm_api()
    te = api.tvm.te
    fn = {"exp": te.exp, "sigmoid": te.sigmoid, "tanh": te.tanh, "erf": te.erf}[op]
    a = te.placeholder((n,), dtype, name="A")
    b = te.compute((n,), lambda i: fn(a[i]), name="B")
    sch = api.s_tir.Schedule(api.tvm.IRModule({"main": te.create_prim_func([a, b])}))
    if lanes > 1:
        (loop,) = sch.get_loops(sch.get_sblock("B"))
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
    return sch.mod


def _target():
    return tvm_api().cpu_target(1)


def _run(built, x: np.ndarray) -> np.ndarray:
    tvm = tvm_api().tvm
    out = tvm.runtime.tensor(np.zeros_like(x))
    built["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in units in the last place (the float32 bit patterns are ordered per sign)."""

    def ordered(a):
        bits = a.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(got) - ordered(want))


def _reference(op: str, x: np.ndarray) -> np.ndarray:
    x64 = torch.from_numpy(x.astype(np.float64))
    want = {"exp": torch.exp, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "erf": torch.erf}[op](
        x64
    )
    return want.numpy().astype(np.float32)


def _sweep(op: str, built, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``stride``-th float32 bit pattern (both signs, NaNs and infinities included)."""
    x = np.arange(0, 1 << 32, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x, np.zeros((-len(x)) % N, np.float32)])
    got = np.concatenate([_run(built, chunk) for chunk in x.reshape(-1, N)])
    with np.errstate(all="ignore"):
        want = _reference(op, x)
    return x, got, want


@pytest.mark.parametrize(("op", "max_ulps"), [("exp", 1), ("sigmoid", 3), ("tanh", 1), ("erf", 5)])
def test_accuracy_over_all_float32_ranges(op, max_ulps):
    built = tvm_api().compile(_kernel(op), _target())
    x, got, want = _sweep(op, built, stride=1009)
    assert np.array_equal(np.isnan(got), np.isnan(want)), x[np.isnan(got) != np.isnan(want)][:5]
    finite = ~np.isnan(want)
    ulps = _ulps(got[finite], want[finite])
    worst = int(ulps.argmax())
    assert ulps.max() <= max_ulps, (x[finite][worst], got[finite][worst], want[finite][worst])


@pytest.mark.parametrize("lanes", [1, 16])
def test_special_values_exact(lanes):
    specials = np.array(
        [
            np.inf,
            -np.inf,
            np.nan,
            0.0,
            -0.0,
            88.72283,
            88.7229,
            89.5,
            1e30,
            -87.3,
            -103.9,
            -104.5,
            -1e30,
            1e-30,
            -1e-30,
            1e-40,
            -1e-40,
        ],
        np.float32,
    )
    x = np.zeros(N, np.float32)
    x[: len(specials)] = specials
    for op in ("exp", "sigmoid", "tanh", "erf"):
        got = _run(tvm_api().compile(_kernel(op, lanes=lanes), _target()), x)[: len(specials)]
        with np.errstate(all="ignore"):
            want = _reference(op, specials)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        finite = ~np.isnan(want)
        assert (_ulps(got[finite], want[finite]) <= 1).all(), (op, specials, got, want)
        # The sign of zero is kept (tanh(-0) = -0).
        np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(want[finite]))


def _llvm_calls(built) -> set[str]:
    return set(re.findall(r"call [^@]*@([\w.]+)", built.mod.inspect_source("ll")))


def test_kernels_no_longer_call_libm_but_references_do():
    for op in ("exp", "sigmoid", "tanh"):
        kernel = _kernel(op)
        fast = _llvm_calls(tvm_api().compile(kernel, _target()))
        reference = _llvm_calls(tvm_api().compile(kernel, _target(), reference=True))
        assert not any("exp" in name for name in fast), fast
        assert "llvm.exp.v16f32" in reference, reference
    erf = _kernel("erf")
    assert "erff" not in _llvm_calls(tvm_api().compile(erf, _target()))
    assert "erff" in _llvm_calls(tvm_api().compile(erf, _target(), reference=True))


def test_other_float_types_keep_tvms_lowering():
    fast = _llvm_calls(tvm_api().compile(_kernel("exp", dtype="float64", lanes=8), _target()))
    assert "llvm.exp.v8f64" in fast


def test_softmax_through_the_backend_matches_eager_with_nan_and_inf_rows():
    torch._dynamo.reset()
    x = torch.randn(6, 37)
    x[1, 3] = float("nan")
    x[2, :] = float("-inf")
    x[3, 5] = float("inf")
    x[4, 7] = 80.0
    compiled = torch.compile(lambda t: torch.softmax(t * 2.0, dim=-1), backend="reasoning")
    torch.testing.assert_close(compiled(x), torch.softmax(x * 2.0, dim=-1), equal_nan=True)


def test_gelu_through_the_backend_matches_eager():
    torch._dynamo.reset()
    x = torch.randn(4, 300) * 4
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), float("-inf")
    compiled = torch.compile(torch.nn.GELU(), backend="reasoning")
    torch.testing.assert_close(compiled(x), torch.nn.functional.gelu(x), equal_nan=True)
