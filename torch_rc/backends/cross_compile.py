"""Build a model's TVM partitions for a target that need not be present (a GPU on a CPU machine).

The graph goes through the same Dynamo capture, AOTAutograd, partitioning, lowering and build as a
real compile, for any :class:`TargetInfo` (e.g. an H100 described by
:data:`torch_rc.platform.target.KNOWN_GPUS`), but nothing is loaded or run: the model runs
eagerly. For CUDA targets the generated CUDA C source of every kernel can then be compiled with
nvcc for the target's architecture (:func:`nvcc_compile`), which is what the CUDA runtime does with
it when the module is loaded on the GPU (docs/tvm-facts.md). It answers "does this model build for
that GPU" on a machine without one; whether the kernels are right and fast needs the GPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torch_rc.backends.decompositions import decomposition_table
from torch_rc.backends.lower import lower_partition
from torch_rc.backends.partition import partition_graph
from torch_rc.errors import TorchRCError
from torch_rc.options import Options
from torch_rc.passes.build import build_executable
from torch_rc.platform.target import TargetInfo

__all__ = ["BuiltPartition", "cross_compile", "cuda_sources", "nvcc_available", "nvcc_compile"]


@dataclass
class BuiltPartition:
    """One partition built for the target: its name, op count and the Relax executable."""

    name: str
    num_ops: int
    executable: Any


def cross_compile(
    model: Callable[..., Any],
    inputs: Sequence[Any],
    target: TargetInfo,
    options: Mapping[str, Any] | None = None,
) -> list[BuiltPartition]:
    """Build every TVM partition of ``model`` on ``inputs`` for ``target`` (nothing runs on it).

    Raises:
        LoweringError, BuildError: A partition did not lower or build (this is a check: nothing
            falls back).
    """
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    resolved = Options.resolve(options)
    built: list[BuiltPartition] = []

    def forward_compiler(aten_gm: torch.fx.GraphModule, _inputs: Sequence[object]) -> Any:
        result = partition_graph(aten_gm, resolved)
        parent = result.graph_module
        calls = {str(n.target): n for n in parent.graph.nodes if n.op == "call_module"}
        for name in result.partitions:
            values = [
                arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
                for arg in calls[name].args
            ]
            lowered = lower_partition(getattr(parent, name), values)
            executable = build_executable(lowered.mod, target, resolved)
            built.append(BuiltPartition(name, result.partition_ops[name], executable))
        return make_boxed_func(aten_gm.forward)

    backend = aot_autograd(
        fw_compiler=forward_compiler,
        inference_compiler=forward_compiler,
        decompositions=decomposition_table(),
        keep_inference_input_mutations=True,
    )
    torch._dynamo.reset()
    try:
        with torch.no_grad(), torch._functorch.config.patch(enable_autograd_cache=False):
            torch.compile(model, backend=backend, fullgraph=False)(*inputs)
    finally:
        torch._dynamo.reset()
    return built


def cuda_sources(executable: Any) -> list[str]:
    """The CUDA C source of every CUDA module inside a built executable (Relax or TIR)."""
    root = executable
    while not hasattr(root, "kind") and hasattr(root, "mod"):
        root = root.mod
    sources: list[str] = []
    pending = [root]
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            sources.append(module.inspect_source())
        pending.extend(module.imports)
    return sources


def nvcc_available() -> bool:
    return shutil.which("nvcc") is not None


def nvcc_compile(source: str, target: TargetInfo) -> bytes:
    """Compile CUDA C ``source`` with nvcc to a fatbin for ``target``'s architecture (TVM's own
    flags), as the CUDA runtime compiles it at load time.

    Raises:
        TorchRCError: nvcc is missing or the source does not compile (nvcc's message included).
    """
    if not nvcc_available():
        raise TorchRCError("nvcc is not on PATH (install the CUDA toolkit)")
    from tvm.support import nvcc

    with target.target:  # TVM's nvcc driver reads the architecture from the current target
        try:
            return bytes(nvcc.compile_cuda(source, target_format="fatbin", compiler="nvcc"))
        except Exception as exc:
            raise TorchRCError(f"nvcc failed for {target.description}: {exc}") from exc
