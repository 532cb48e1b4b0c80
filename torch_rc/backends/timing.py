"""Time callables against each other on the same inputs, on the CPU or a CUDA GPU.

CUDA work is asynchronous: a call returns once its kernels are queued. Each timed call is
therefore bracketed by a synchronisation of the inputs' devices, so the times compared are the
work itself (PyTorch's cuBLAS/cuDNN kernels against TVM's), not launch overhead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["cuda_devices", "median_ms"]


def cuda_devices(args: Sequence[Any]) -> list[torch.device]:
    """The distinct CUDA devices of the tensors in ``args``."""
    seen: dict[torch.device, None] = {}
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            seen[arg.device] = None
    return list(seen)


def median_ms(
    fns: Mapping[str, Callable[..., Any]],
    args: Sequence[Any],
    repeats: int,
    budget_s: float = float("inf"),
) -> dict[str, float]:
    """Median milliseconds of each of ``fns`` called on ``args``, interleaved ``repeats`` times;
    a side stops being timed once it has spent ``budget_s`` (slow sides get fewer runs)."""
    devices = cuda_devices(args)

    def synchronize() -> None:
        for device in devices:
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            if spent[name] > budget_s and times[name]:
                continue
            synchronize()
            start = time.perf_counter()
            fn(*args)
            synchronize()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent[name] += elapsed
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}
