"""The correctness gate for tuned kernels: a scheduled TIR function must compute what the
unscheduled one computes, on random inputs, before its record may be stored or used."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from torch_rc.cache.records import Check
from torch_rc.numerics import compare_outputs, max_abs_error, tolerances
from torch_rc.platform.tvm_shim import tvm_api

__all__ = [
    "check_schedule",
    "compare",
    "random_inputs",
    "reference_run",
    "reference_target",
    "run_once",
    "target_device",
    "timed_reference_run",
]


def reference_target(target: Any, *, host_cpu: bool = False) -> Any:
    """Where the unscheduled reference runs: the target itself on a CPU; on a GPU the host CPU
    (an unscheduled GPU kernel binds no threads and does not build). ``host_cpu``: the target is
    a remote device's (maybe another CPU), so the reference runs on this host's CPU."""
    if str(target.kind.name) == "cuda" and target.host is not None:
        return target.host
    return tvm_api().tvm.target.Target({"kind": "llvm"}) if host_cpu else target


def reference_run(
    reference_mod: Any, target: Any, seed: int = 0, *, host_cpu: bool = False
) -> tuple[list[np.ndarray], torch.Tensor]:
    """The random inputs of ``reference_mod`` (:func:`random_inputs`) and the output the
    unscheduled kernel computes from them, built for :func:`reference_target`."""
    arrays, want, _ = timed_reference_run(reference_mod, target, seed, host_cpu=host_cpu)
    return arrays, want


def timed_reference_run(
    reference_mod: Any, target: Any, seed: int = 0, *, host_cpu: bool = False
) -> tuple[list[np.ndarray], torch.Tensor, float]:
    """:func:`reference_run`, and the seconds the unscheduled kernel's one (cold) run took."""
    arrays = random_inputs(reference_mod, seed)
    built = tvm_api().compile(
        reference_mod, reference_target(target, host_cpu=host_cpu), reference=True
    )
    start = time.perf_counter()
    want, _ = run_once(built, arrays)
    return arrays, want, time.perf_counter() - start


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


def target_device(target: Any) -> Any:
    """The TVM device kernels built for ``target`` run on (CUDA targets: GPU 0 of this process,
    i.e. the current torch CUDA device)."""
    tvm = tvm_api().tvm
    if str(target.kind.name) == "cuda":
        return tvm.cuda(torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return tvm.cpu(0)


def run_once(
    executable: Any, arrays: list[np.ndarray], device: Any = None
) -> tuple[torch.Tensor, list[Any]]:
    """Run a built TIR function once on copies of ``arrays`` on ``device`` (CPU by default);
    return its output (copied to the host, which waits for the kernel) and the tensors."""
    tvm = tvm_api().tvm
    device = device if device is not None else tvm.cpu(0)
    tensors = [tvm.runtime.tensor(array.copy(), device) for array in arrays]
    executable["main"](*tensors)
    return torch.from_numpy(tensors[-1].numpy()), tensors


def compare(got: torch.Tensor, want: torch.Tensor, inputs: str) -> Check:
    """The Check of ``got`` against ``want``: the runtime's verdict (:mod:`torch_rc.numerics`)."""
    rtol, atol = tolerances(want.dtype)
    match = compare_outputs(want, got)
    error = max_abs_error(want, got)
    return Check("untuned-kernel", rtol, atol, 0.0 if error is None else error, match.ok, inputs)


def check_schedule(reference_mod: Any, scheduled_mod: Any, target: Any, *, seed: int = 0) -> Check:
    """Build both modules for ``target``, run them on the same random inputs, compare outputs."""
    arrays, want = reference_run(reference_mod, target, seed)
    got, _ = run_once(tvm_api().compile(scheduled_mod, target), arrays, target_device(target))
    return compare(got, want, f"standard normal, seed {seed}")
