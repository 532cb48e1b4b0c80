"""What the tuning proposers know about the machine: cores, vector width, caches; or the GPU's
SMs, warp size, shared memory and registers.

Read once from the OS (``/sys`` cache sizes, the CPU capability PyTorch detected) or from PyTorch's
CUDA device properties; the same description feeds the built-in proposer's rules and the LLM
prompt.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from torch_rc.platform.target import GPUProperties

__all__ = [
    "AnyHardware",
    "GPUHardware",
    "Hardware",
    "gpu_hardware",
    "host_hardware",
    "vector_bytes",
]


def vector_bytes() -> int:
    """Width of the host's widest vector registers in bytes (AVX-512: 64, AVX2: 32, else 16)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" in capability:
        return 64
    if "AVX2" in capability:
        return 32
    return 16


@dataclass(frozen=True)
class Hardware:
    """A CPU as the tuner sees it.

    Attributes:
        name: Model name (e.g. ``AMD EPYC 7B13``).
        cores: Threads the kernels run on.
        vector_bytes: Width of the widest vector registers (AVX2: 32).
        vector_registers: Number of architectural vector registers.
        l1_bytes, l2_bytes, l3_bytes: Data cache sizes per core (L3: shared).
        isa: PyTorch's CPU capability string (``AVX2``, ``AVX512``, ...).
    """

    name: str
    cores: int
    vector_bytes: int
    vector_registers: int
    l1_bytes: int
    l2_bytes: int
    l3_bytes: int
    isa: str

    kind = "cpu"

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(1, self.vector_bytes * 8 // dtype_bits)

    def describe(self) -> str:
        return (
            f"CPU {self.name}: {self.cores} cores used by kernels, {self.isa} "
            f"({self.vector_bytes * 8}-bit vectors = {self.lanes(32)} fp32 lanes, "
            f"{self.vector_registers} vector registers), L1d {self.l1_bytes // 1024} KiB, "
            f"L2 {self.l2_bytes // 1024} KiB per core, L3 {self.l3_bytes // 1024} KiB shared"
        )


def _size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        if text.endswith(suffix):
            return int(text[:-1]) * factor
    return int(text) if text.isdigit() else 0


def _caches() -> dict[int, int]:
    sizes: dict[int, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")) if root.exists() else []:
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            if kind in ("Data", "Unified"):
                sizes[level] = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
    return sizes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def host_hardware(num_threads: int | None = None) -> Hardware:
    """This machine (``num_threads`` overrides the core count the kernels use)."""
    caches = _caches()
    cores = num_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    isa = torch.backends.cpu.get_cpu_capability()
    vbytes = vector_bytes()
    return Hardware(
        name=_cpu_name(),
        cores=int(cores),
        vector_bytes=vbytes,
        vector_registers=32 if vbytes == 64 else 16,
        l1_bytes=caches.get(1, 32 * 1024),
        l2_bytes=caches.get(2, 512 * 1024),
        l3_bytes=caches.get(3, 8 * 1024**2),
        isa=isa,
    )


@dataclass(frozen=True)
class GPUHardware:
    """An NVIDIA GPU as the tuner sees it: a view of the target's
    :class:`torch_rc.platform.target.GPUProperties` (the one record of the GPU's facts)."""

    gpu: GPUProperties

    kind = "cuda"

    @property
    def sms(self) -> int:
        return self.gpu.multi_processor_count

    @property
    def warp_size(self) -> int:
        return self.gpu.warp_size

    @property
    def max_threads_per_block(self) -> int:
        return self.gpu.max_threads_per_block

    @property
    def shared_memory_per_block(self) -> int:
        return self.gpu.shared_memory_per_block

    def describe(self) -> str:
        gpu = self.gpu
        return (
            f"GPU {gpu.name} ({gpu.arch}): {self.sms} SMs, warp size {gpu.warp_size}, at most "
            f"{gpu.max_threads_per_block} threads and {gpu.shared_memory_per_block // 1024} KiB "
            f"shared memory per block, {gpu.registers_per_block} 32-bit registers per block, "
            f"L2 {gpu.l2_cache_bytes // (1024 * 1024)} MiB"
        )


def gpu_hardware(gpu: GPUProperties) -> GPUHardware:
    """The tuner's view of ``gpu``."""
    return GPUHardware(gpu)


AnyHardware = Hardware | GPUHardware
