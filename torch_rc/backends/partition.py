"""Split an ATen graph into TVM partitions and PyTorch remainder, from the support table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from torch_rc.backends.support import is_compute_node, qualified_name, unsupported_reason
from torch_rc.options import Options

__all__ = ["PartitionResult", "partition_graph", "FallbackNode", "PARTITION_PREFIX"]

PARTITION_PREFIX = "tvm_part_"


@dataclass(frozen=True)
class FallbackNode:
    """One ATen node that runs in PyTorch, and why."""

    op: str
    reason: str


@dataclass
class PartitionResult:
    """The partitioned graph and what the partitioner decided.

    Attributes:
        graph_module: The graph with each TVM partition fused into a ``call_module`` of a
            submodule named ``tvm_part_<i>``; everything else is left as ATen calls.
        partitions: Submodule names of the TVM partitions, in graph order.
        fallbacks: ATen nodes left to PyTorch, with reasons.
        total_ops: Compute ops in the whole graph (views and tuple indexing excluded).
        partition_ops: Compute ops inside each TVM partition.
    """

    graph_module: torch.fx.GraphModule
    partitions: list[str]
    fallbacks: list[FallbackNode]
    total_ops: int
    partition_ops: dict[str, int]


class _TableSupport(OperatorSupportBase):
    def __init__(self, options: Options) -> None:
        self.options = options
        self.reasons: dict[torch.fx.Node, str] = {}

    def is_node_supported(
        self, submodules: Mapping[str, torch.nn.Module], node: torch.fx.Node
    ) -> bool:
        reason = unsupported_reason(node, self.options)
        if reason is not None and node.op == "call_function":
            self.reasons[node] = reason
        return reason is None


def partition_graph(gm: torch.fx.GraphModule, options: Options) -> PartitionResult:
    """Fuse the TVM-supported regions of ``gm`` into submodules; record the rest with reasons.

    Partitions with fewer than ``options.min_partition_size`` compute ops stay in PyTorch: a
    kernel launch through the VM costs more than a lone cheap op saves.
    """
    support = _TableSupport(options)
    partitioner = CapabilityBasedPartitioner(gm, support, allows_single_node_partition=True)
    proposed = partitioner.propose_partitions()
    total_ops = sum(1 for node in gm.graph.nodes if is_compute_node(node))

    kept = []
    small_reason = f"partition smaller than min_partition_size={options.min_partition_size}"
    for part in proposed:
        compute = sum(1 for node in part.nodes if is_compute_node(node))
        if compute >= options.min_partition_size:
            kept.append(part)
        else:
            for node in part.nodes:
                if is_compute_node(node):
                    support.reasons[node] = small_reason

    fallbacks = [
        FallbackNode(qualified_name(node.target), support.reasons[node])
        for node in gm.graph.nodes
        if node in support.reasons and is_compute_node(node)
    ]
    fused = partitioner.fuse_partitions(kept, prefix=PARTITION_PREFIX) if kept else gm
    names = [
        str(node.target)
        for node in fused.graph.nodes
        if node.op == "call_module" and str(node.target).startswith(PARTITION_PREFIX)
    ]
    counts = {
        name: sum(1 for node in getattr(fused, name).graph.nodes if is_compute_node(node))
        for name in names
    }
    return PartitionResult(
        graph_module=fused,
        partitions=names,
        fallbacks=fallbacks,
        total_ops=total_ops,
        partition_ops=counts,
    )
