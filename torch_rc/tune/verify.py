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

__all__ = ["check_schedule"]


def check_schedule(reference_mod: Any, scheduled_mod: Any, target: Any, *, seed: int = 0) -> Check:
    """Build both modules for ``target``, run them on the same random inputs, compare outputs.

    The last parameter of the function is taken as its output (TIR's destination-passing style).
    Inputs are standard normal (integers: 0..9); the tolerance is the runtime's dtype-aware one.
    """
    api = tvm_api()
    tvm = api.tvm
    # TIR 0.27 params are typed Vars (no buffer_map); MetaSchedule's ArgInfo reads their types.
    infos = api.s_tir.meta_schedule.arg_info.ArgInfo.from_prim_func(reference_mod["main"])
    rng = np.random.default_rng(seed)
    arrays = []
    for info in infos:
        shape = [int(dim) for dim in info.shape]
        dtype = str(info.dtype)
        if "float" in dtype:
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
    device = tvm.cpu(0)
    results = []
    for mod in (reference_mod, scheduled_mod):
        lib = tvm.compile(mod, target)
        tensors = [tvm.runtime.tensor(array.copy(), device) for array in arrays]
        lib["main"](*tensors)
        results.append(torch.from_numpy(tensors[-1].numpy()))
    want, got = results
    rtol, atol = tolerances(want.dtype, Options())
    error = float((got.double() - want.double()).abs().max()) if want.numel() else 0.0
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        passed = True
    except AssertionError:
        passed = False
    return Check(
        reference="untuned-kernel",
        rtol=rtol,
        atol=atol,
        max_abs_error=error,
        passed=passed,
        inputs=f"standard normal, seed {seed}",
    )
