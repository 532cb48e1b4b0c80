"""The correctness gate for tuned kernels: a scheduled TIR function must compute what the
unscheduled one computes, on random inputs, before its record may be stored or used."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch_rc.backends.select import tolerances
from torch_rc.cache.records import Check
from torch_rc.options import Options
from torch_rc.tvm_shim import tvm_api

__all__ = ["check_schedule", "compare", "random_inputs", "run_once"]


def random_inputs(mod: Any, seed: int = 0) -> list[np.ndarray]:
    """Random arrays for every parameter of ``mod["main"]`` (floats: standard normal; integers:
    0..9). The last one is the output buffer (TIR's destination-passing style)."""
    # TIR 0.27 params are typed Vars (no buffer_map); MetaSchedule's ArgInfo reads their types.
    infos = tvm_api().s_tir.meta_schedule.arg_info.ArgInfo.from_prim_func(mod["main"])
    rng = np.random.default_rng(seed)
    arrays = []
    for info in infos:
        shape = [int(dim) for dim in info.shape]
        dtype = str(info.dtype)
        if "float" in dtype:
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
    return arrays


def run_once(executable: Any, arrays: list[np.ndarray]) -> tuple[torch.Tensor, list[Any]]:
    """Run a built TIR function once on copies of ``arrays``; return its output and the tensors."""
    tvm = tvm_api().tvm
    tensors = [tvm.runtime.tensor(array.copy(), tvm.cpu(0)) for array in arrays]
    executable["main"](*tensors)
    return torch.from_numpy(tensors[-1].numpy()), tensors


def compare(got: torch.Tensor, want: torch.Tensor, inputs: str) -> Check:
    """The Check of ``got`` against ``want`` with the runtime's dtype-aware tolerances."""
    rtol, atol = tolerances(want.dtype, Options())
    error = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        passed = True
    except AssertionError:
        passed = False
    return Check("untuned-kernel", rtol, atol, error, passed, inputs)


def check_schedule(reference_mod: Any, scheduled_mod: Any, target: Any, *, seed: int = 0) -> Check:
    """Build both modules for ``target``, run them on the same random inputs, compare outputs."""
    tvm = tvm_api().tvm
    arrays = random_inputs(reference_mod, seed)
    want, _ = run_once(tvm.compile(reference_mod, target), arrays)
    got, _ = run_once(tvm.compile(scheduled_mod, target), arrays)
    return compare(got, want, f"standard normal, seed {seed}")
