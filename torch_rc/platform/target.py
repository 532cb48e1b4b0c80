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
from torch_rc.platform.tvm_shim import tvm_api

__all__ = [
    "GPUProperties",
    "TargetInfo",
    "cuda_target_spec",
    "describe_target_key",
    "detect_target",
    "graph_device",
    "host_target_key",
    "local_target_keys",
    "target_key",
]


@dataclass(frozen=True)
class GPUProperties:
    """The facts about an NVIDIA GPU that its TVM target, cache keys and tuning rules need.

    Read from ``torch.cuda.get_device_properties`` (:meth:`from_torch`); tests and tools build
    one by hand for GPUs that are not present (e.g. :data:`KNOWN_GPUS`).
    """

    name: str
    major: int
    minor: int
    multi_processor_count: int
    warp_size: int = 32
    shared_memory_per_block: int = 48 * 1024
    max_threads_per_block: int = 1024
    registers_per_block: int = 64 * 1024
    l2_cache_bytes: int = 0
    total_memory: int = 0

    @property
    def arch(self) -> str:
        """The ``sm_XY`` name of the compute capability (what nvcc/NVRTC compile for)."""
        return f"sm_{self.major}{self.minor}"

    @classmethod
    def from_torch(cls, index: int = 0) -> GPUProperties:
        """The properties of CUDA device ``index`` as PyTorch reports them."""
        props = torch.cuda.get_device_properties(index)
        return cls(
            name=str(props.name),
            major=int(props.major),
            minor=int(props.minor),
            multi_processor_count=int(props.multi_processor_count),
            warp_size=int(getattr(props, "warp_size", 32)),
            shared_memory_per_block=int(getattr(props, "shared_memory_per_block", 48 * 1024)),
            registers_per_block=int(getattr(props, "regs_per_multiprocessor", 64 * 1024)),
            l2_cache_bytes=int(getattr(props, "L2_cache_size", 0)),
            total_memory=int(getattr(props, "total_memory", 0)),
        )

    def describe(self) -> str:
        return (
            f"{self.name} ({self.arch}, {self.multi_processor_count} SMs, warp {self.warp_size}, "
            f"{self.shared_memory_per_block // 1024} KiB shared memory per block, "
            f"L2 {self.l2_cache_bytes // (1024 * 1024)} MiB)"
        )


# Two GPUs as PyTorch 2.11 reported them on lent machines (H100) and from NVIDIA's data sheet
# (A100); used by tests and ``benchmarks/gpu_check.py --dry-run`` where no GPU is present.
KNOWN_GPUS = {
    "h100": GPUProperties("NVIDIA H100 80GB HBM3", 9, 0, 132, l2_cache_bytes=50 * 1024 * 1024),
    "a100": GPUProperties("NVIDIA A100-SXM4-80GB", 8, 0, 108, l2_cache_bytes=40 * 1024 * 1024),
}


def cuda_target_spec(gpu: GPUProperties, host: Any = None) -> dict[str, Any]:
    """The JSON-dict TVM target of ``gpu`` (TVM 0.27 takes dicts, not ``-arch=`` strings)."""
    spec: dict[str, Any] = {
        "kind": "cuda",
        "arch": gpu.arch,
        "max_num_threads": gpu.max_threads_per_block,
        "max_threads_per_block": gpu.max_threads_per_block,
        "thread_warp_size": gpu.warp_size,
        "max_shared_memory_per_block": gpu.shared_memory_per_block,
        "registers_per_block": gpu.registers_per_block,
    }
    if gpu.l2_cache_bytes:
        spec["l2_cache_size_bytes"] = gpu.l2_cache_bytes
    if host is not None:
        spec["host"] = host
    return spec


@dataclass(frozen=True)
class TargetInfo:
    """The compile target and the facts about it that cache keys and reports need.

    Creating one imports nothing from TVM: the ``tvm.target.Target`` is made on first use of
    :attr:`target` (only a build needs it; a warm start that loads cached kernels does not).

    Attributes:
        kind: ``"cpu"`` (LLVM) or ``"cuda"``.
        num_threads: Threads TVM kernels may use (host code of CUDA targets too).
        description: One line for reports, e.g. ``llvm, AMD EPYC 7B13 (AVX2), 2 threads``.
        key: The cache key of this target (:func:`target_key`).
        device_index: The CUDA device ordinal (0 for CPU targets).
        gpu: The GPU's properties (CUDA targets only).
    """

    kind: str
    num_threads: int
    description: str
    key: str
    device_index: int = 0
    gpu: GPUProperties | None = None

    @functools.cached_property
    def target(self) -> Any:
        """The ``tvm.target.Target``: this host's real ``mcpu`` (so AVX2/AVX-512 are used), or
        the GPU's ``sm_XY`` with this host as the host target."""
        api = tvm_api()
        if self.gpu is not None:
            host = api.cpu_target(self.num_threads)
            return api.tvm.target.Target(cuda_target_spec(self.gpu), host=host)
        return api.cpu_target(self.num_threads)

    def tvm_device(self) -> Any:
        """The TVM device executables for this target run on."""
        tvm = tvm_api().tvm
        return tvm.cuda(self.device_index) if self.kind == "cuda" else tvm.cpu(0)

    @property
    def torch_device(self) -> torch.device:
        return (
            torch.device("cuda", self.device_index) if self.kind == "cuda" else torch.device("cpu")
        )


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
    which a warm start must not pay just to look up a key).

    The thread count is not part of it: built kernels are the same whatever the thread count
    (parallel loops take their team size at run time), so a replica with another thread count
    reuses them; the first-call decisions, which do depend on it, record it and are measured
    again where it differs (:mod:`torch_rc.backends.decisions`).
    """
    del options  # the key is the CPU's; options do not change it
    return json.dumps(
        {
            "kind": "llvm",
            "cpu": _cpu_identity(),
            "isa": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
        },
        sort_keys=True,
    )


def gpu_target_key(gpu: GPUProperties) -> str:
    """Cache key of a CUDA target: the architecture, and the GPU model and SM count (tuned
    schedules depend on both: an H100 PCIe and an H100 SXM share ``sm_90``, not their SMs)."""
    return json.dumps(
        {
            "kind": "cuda",
            "arch": gpu.arch,
            "gpu": gpu.name,
            "sms": gpu.multi_processor_count,
            "shared_memory_per_block": gpu.shared_memory_per_block,
        },
        sort_keys=True,
    )


def target_key(options: Options, device: torch.device | None = None) -> str:
    """Cache key of the target that graphs on ``device`` compile for (CPU when None)."""
    if device is not None and device.type == "cuda":
        return gpu_target_key(GPUProperties.from_torch(_index(device)))
    return host_target_key(options)


def local_target_keys(options: Options) -> list[str]:
    """Keys of every target this machine can run: its CPU and each visible CUDA GPU."""
    keys = [host_target_key(options)]
    if torch.cuda.is_available():
        keys += [
            gpu_target_key(GPUProperties.from_torch(i)) for i in range(torch.cuda.device_count())
        ]
    return keys


def describe_target_key(key: str) -> str:
    """A target key as a person reads it (``NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)``)."""
    try:
        parts = json.loads(key)
    except (TypeError, ValueError):
        return str(key)
    if not isinstance(parts, dict):
        return str(key)
    if parts.get("kind") == "cuda":
        return f"{parts.get('gpu')} ({parts.get('arch')}, {parts.get('sms')} SMs)"
    cpu = str(parts.get("cpu", "")).split(" flags:")[0]
    return f"CPU {cpu} ({parts.get('isa')})"


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def detect_target(options: Options, device: torch.device | None = None) -> TargetInfo:
    """The target for graphs on ``device``: this host's LLVM target and thread count, or the
    CUDA target of that GPU (TVM is not imported here)."""
    threads = options.num_threads or torch.get_num_threads()
    if device is not None and device.type == "cuda":
        index = _index(device)
        gpu = GPUProperties.from_torch(index)
        return TargetInfo(
            kind="cuda",
            num_threads=threads,
            description=f"cuda, {gpu.describe()}",
            key=gpu_target_key(gpu),
            device_index=index,
            gpu=gpu,
        )
    cpu = _cpu_identity().split(" flags:")[0]
    isa = torch.backends.cpu.get_cpu_capability()
    return TargetInfo(
        kind="cpu",
        num_threads=threads,
        description=f"llvm, {cpu} ({isa}), {threads} threads",
        key=host_target_key(options),
    )
