"""Which TVM target a graph compiles for, from its input tensors and the options."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torch_rc.options import Options
from torch_rc.tvm_shim import tvm_api

__all__ = ["TargetInfo", "detect_target", "graph_device", "host_target_key"]


@dataclass(frozen=True)
class TargetInfo:
    """The compile target and the facts about it that cache keys and reports need.

    Creating one imports nothing from TVM: the ``tvm.target.Target`` is made on first use of
    :attr:`target` (only a build needs it; a warm start that loads cached kernels does not).

    Attributes:
        kind: ``"cpu"`` (LLVM) for now; the CUDA path is added by the GPU work.
        num_threads: Threads TVM kernels may use.
        description: One line for reports, e.g. ``llvm, AMD EPYC 7B13 (AVX2), 2 threads``.
        key: The cache key of this target (:func:`host_target_key`).
    """

    kind: str
    num_threads: int
    description: str
    key: str

    @functools.cached_property
    def target(self) -> Any:
        """The ``tvm.target.Target``: this host's real ``mcpu`` (so AVX2/AVX-512 are used)."""
        return tvm_api().cpu_target(self.num_threads)

    def tvm_device(self) -> Any:
        """The TVM device executables for this target run on."""
        return tvm_api().tvm.cpu(0)


def graph_device(example_inputs: Sequence[object]) -> torch.device:
    """The device of a graph's tensor inputs (CPU when it has none)."""
    devices = {value.device for value in example_inputs if isinstance(value, torch.Tensor)}
    cuda = [device for device in devices if device.type == "cuda"]
    return cuda[0] if cuda else torch.device("cpu")


@functools.cache
def _cpu_identity() -> str:
    """The CPU model and feature flags (what LLVM's host detection derives ``mcpu`` from)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            info = handle.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags", "Features", "CPU part") and name not in fields:
            fields[name] = value.strip()
    flags = hashlib.sha256(fields.get("flags", fields.get("Features", "")).encode()).hexdigest()[
        :16
    ]
    return f"{fields.get('model name', fields.get('CPU part', platform.machine()))} flags:{flags}"


def host_target_key(options: Options) -> str:
    """Cache key of the CPU target, computed without importing TVM (that import costs ~2 s,
    which a warm start must not pay just to look up a key)."""
    threads = options.num_threads or torch.get_num_threads()
    return json.dumps(
        {
            "kind": "llvm",
            "cpu": _cpu_identity(),
            "num_cores": threads,
            "isa": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
        },
        sort_keys=True,
    )


def detect_target(options: Options) -> TargetInfo:
    """The LLVM target of this host and its thread count (TVM is not imported here)."""
    threads = options.num_threads or torch.get_num_threads()
    cpu = _cpu_identity().split(" flags:")[0]
    isa = torch.backends.cpu.get_cpu_capability()
    return TargetInfo(
        kind="cpu",
        num_threads=threads,
        description=f"llvm, {cpu} ({isa}), {threads} threads",
        key=host_target_key(options),
    )
