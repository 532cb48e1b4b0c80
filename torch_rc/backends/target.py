"""Which TVM target a graph compiles for, from its input tensors and the options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torch_rc.options import Options
from torch_rc.tvm_shim import tvm_api

__all__ = ["TargetInfo", "detect_target", "graph_device"]


@dataclass(frozen=True)
class TargetInfo:
    """A TVM target plus the facts about it that cache keys and reports need.

    Attributes:
        kind: ``"cpu"`` (LLVM) for now; the CUDA path is added by the GPU work.
        target: The ``tvm.target.Target``.
        num_threads: Threads TVM kernels may use.
        description: One line for reports, e.g. ``llvm znver3, 2 threads``.
    """

    kind: str
    target: Any
    num_threads: int
    description: str

    def tvm_device(self) -> Any:
        """The TVM device executables for this target run on."""
        return tvm_api().tvm.cpu(0)


def graph_device(example_inputs: Sequence[object]) -> torch.device:
    """The device of a graph's tensor inputs (CPU when it has none)."""
    devices = {value.device for value in example_inputs if isinstance(value, torch.Tensor)}
    cuda = [device for device in devices if device.type == "cuda"]
    return cuda[0] if cuda else torch.device("cpu")


def detect_target(options: Options) -> TargetInfo:
    """The LLVM target of this host: real ``mcpu`` (so AVX2/AVX-512 are used) and thread count."""
    api = tvm_api()
    threads = options.num_threads or torch.get_num_threads()
    target = api.cpu_target(threads)
    mcpu = str(target.attrs.get("mcpu", "generic"))
    return TargetInfo(
        kind="cpu",
        target=target,
        num_threads=threads,
        description=f"llvm {mcpu}, {threads} threads",
    )
