"""Candidates build in a child process with a time limit: a build that runs past it is stopped
and becomes a failed sample; a normal build runs like an in-process one."""

import numpy as np
import pytest

from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.bounded_build import BuildFailed, BuildTimedOut, build_module
from torch_rc.tuning.measure import Measurer


def _exp_kernel(n: int, unroll: int = 0):
    """``B = exp(A)`` over ``n`` floats; ``unroll``: the whole loop explicitly unrolled (one
    basic block of ``n`` copies of the exp arithmetic, which LLVM takes a long time over)."""
    api = tvm_api()
    te = api.tvm.te
    a = te.placeholder((n,), "float32", name="A")
    b = te.compute((n,), lambda i: te.exp(a[i]) * 2.0 + 1.0, name="B")
    sch = api.s_tir.Schedule(api.tvm.IRModule({"main": te.create_prim_func([a, b])}))
    if unroll:
        (loop,) = sch.get_loops(sch.get_sblock("B"))
        sch.annotate(loop, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(loop, "pragma_unroll_explicit", 1)
    return sch.mod


def _target():
    return tvm_api().cpu_target(1)


def test_a_child_build_computes_what_an_in_process_build_computes():
    tvm = tvm_api().tvm
    mod = _exp_kernel(1000)
    x = np.random.default_rng(0).standard_normal(1000).astype("float32")
    outputs = []
    for timeout_s in (30.0, None):  # a child process, then this process
        module = build_module(mod, _target(), timeout_s)
        out = tvm.runtime.tensor(np.zeros_like(x))
        module["main"](tvm.runtime.tensor(x), out)
        outputs.append(out.numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0], np.exp(x) * 2 + 1, rtol=1e-6)


def test_a_build_past_its_limit_is_stopped():
    with pytest.raises(BuildTimedOut, match="build timed out after 0.5 s"):
        build_module(_exp_kernel(4096, unroll=4096), _target(), 0.5)


def test_a_build_error_in_the_child_comes_back_with_its_message():
    api = tvm_api()
    te = api.tvm.te
    a = te.placeholder((64,), "float32", name="A")
    b = te.compute((64,), lambda i: a[i] + 1.0, name="B")
    sch = api.s_tir.Schedule(api.tvm.IRModule({"main": te.create_prim_func([a, b])}))
    (loop,) = sch.get_loops(sch.get_sblock("B"))
    sch.bind(loop, "threadIdx.x")  # a GPU thread axis cannot be built for a CPU
    with pytest.raises(BuildFailed) as failed:
        build_module(sch.mod, _target(), 30.0)
    assert not isinstance(failed.value, BuildTimedOut)
    assert str(failed.value)


def test_the_measurer_counts_a_timed_out_build_as_a_failed_sample():
    measurer = Measurer(_target(), repeats=1, min_repeat_ms=1, build_timeout_s=0.5)
    reference = _exp_kernel(4096)
    slow = measurer.measure(reference, _exp_kernel(4096, unroll=4096))
    assert not slow.ok and slow.latency_s is None
    assert slow.error.startswith("build timed out")
    fine = measurer.measure(reference, reference)
    assert fine.ok and fine.latency_s > 0
    assert measurer.count == 2


@pytest.mark.parametrize("timeout_s", [30.0, None])
def test_candidates_run_their_parallel_loops_on_pytorchs_openmp_threads(timeout_s):
    """A candidate is timed the way it is served: its parallel loop runs on PyTorch's OpenMP
    team (TVM's own pool ran every task on one worker here, so parallel schedules were timed
    on half the machine). Each task records the OpenMP thread that ran it."""
    import torch

    from torch_rc.platform.threads import launcher_status

    if not launcher_status().openmp:
        pytest.skip(launcher_status().detail)
    if torch.get_num_threads() < 2:
        pytest.skip("needs PyTorch to use two threads or more")
    api = tvm_api()
    src = """
@I.ir_module
class Module:
    @T.prim_func(s_tir=True)
    def main(b: T.Buffer((T.int64(64),), "int32")):
        T.func_attr({"tirx.noalias": True})
        for i in T.parallel(T.int64(64)):
            with T.sblock("b"):
                vi = T.axis.spatial(T.int64(64), i)
                b[vi] = T.call_extern("int32", "omp_get_thread_num")
"""
    module = build_module(api.tvm.script.from_source(src), _target(), timeout_s)
    out = api.tvm.runtime.tensor(np.full(64, -1, "int32"))
    module["main"](out)
    threads = set(out.numpy().tolist())
    assert len(threads) >= 2 and threads <= set(range(torch.get_num_threads()))
