"""Compile one ATen graph: partition it, lower and build each TVM partition, wire in the chooser."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from torch_rc.backends.decisions import Decision, Machine
from torch_rc.backends.library import choose_library_nodes
from torch_rc.backends.lower import lower_partition, tensor_spec
from torch_rc.backends.partition import FallbackNode, partition_graph
from torch_rc.backends.runtime import KernelSignature, TVMKernel
from torch_rc.backends.select import PartitionReport, SelectingPartition
from torch_rc.backends.support import is_compute_node, qualified_name
from torch_rc.cache.location import open_store
from torch_rc.cache.ms_database import make_database
from torch_rc.errors import BuildError, LoweringError
from torch_rc.options import Options
from torch_rc.passes.build import build_executable
from torch_rc.platform.hardware import gpu_hardware
from torch_rc.platform.target import TargetInfo
from torch_rc.platform.tvm_shim import prepare_meta_schedule
from torch_rc.tuning.session import tune_modules

__all__ = ["GraphReport", "compile_aten_graph"]

logger = logging.getLogger(__name__)


@dataclass
class GraphReport:
    """What torch_rc did with one graph Dynamo handed it.

    Attributes:
        index: Order in which the backend saw this graph.
        target: Target description (``llvm znver3, 2 threads`` or why none was used).
        total_ops: Compute ATen ops in the graph.
        fallbacks: ATen ops left to PyTorch by the partitioner, with reasons.
        partitions: One report per TVM partition (decisions fill in on the first call).
        compile_s: Seconds spent partitioning, lowering and building.
        rerun_safe: The graph neither mutates inputs nor draws random numbers, so it may be run
            again to time it.
        choice: ``"compiled"`` or ``"eager"`` once the whole-graph gate decided (else ``"pending"``).
        choice_reason: Why.
        eager_ms: Median time of the original graph run eagerly, when measured.
        compiled_ms: Median time of the compiled graph, when measured.
        cache: ``"off"``, ``"miss"`` (built and stored) or ``"hit"`` (kernels and decisions loaded).
        decision: The whole-graph decision once made (state, numbers, machine).
    """

    index: int
    target: str
    total_ops: int = 0
    fallbacks: list[FallbackNode] = field(default_factory=list)
    partitions: list[PartitionReport] = field(default_factory=list)
    compile_s: float = 0.0
    rerun_safe: bool = True
    choice: str = "pending"
    choice_reason: str = ""
    eager_ms: float | None = None
    compiled_ms: float | None = None
    cache: str = "off"
    tuning: Any = None  # the TuningRun when this compile tuned
    tuned_kernels: int = 0  # kernels built from tuned records in the cache
    decision: Decision | None = None

    @property
    def lowered_ops(self) -> int:
        """Compute ops inside partitions TVM built successfully."""
        return sum(p.num_ops for p in self.partitions if p.status != "failed")

    @property
    def executed_ops(self) -> int:
        """Compute ops inside partitions that run on TVM after the first-call choices."""
        if self.choice == "eager":
            return 0
        return sum(p.num_ops for p in self.partitions if p.status == "tvm")


def _skip_kernel(preset: Decision | None, machine: Machine) -> bool:
    """An earlier run's decision that PyTorch runs this partition, still valid here."""
    return preset is not None and preset.choice in ("torch", "failed") and preset.valid_on(machine)


def static_input_positions(gm: torch.fx.GraphModule) -> frozenset[int]:
    """Positions of ``gm``'s inputs that are the model's parameters and buffers (the same tensors
    on every call), as AOTAutograd's metadata marks them; empty when unknown."""
    from torch._guards import TracingContext

    context = TracingContext.try_get()
    metadata = getattr(context, "fw_metadata", None) if context is not None else None
    indices = getattr(metadata, "static_input_indices", None) or ()
    return frozenset(int(i) for i in indices)


def compile_aten_graph(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[object],
    options: Options,
    target: TargetInfo,
    report: GraphReport,
    kernels: dict[str, Any] | None = None,
    prebuilt: Mapping[str, Any] | None = None,
    decisions: Mapping[str, Decision] | None = None,
    machine: Machine | None = None,
    partitions: dict[str, SelectingPartition] | None = None,
    static_inputs: Collection[int] = (),
) -> torch.fx.GraphModule:
    """Partition ``gm`` and replace each TVM partition with a :class:`SelectingPartition`.

    Lowering and build failures are recorded in ``report`` and that partition runs in PyTorch;
    with ``options.strict`` they are raised instead.

    Args:
        kernels: Filled with the TVM kernel of each partition, by submodule name.
        prebuilt: Kernel blobs (from a serialized artifact) to load instead of building, by
            submodule name; a blob whose input specs do not match is ignored and rebuilt.
        decisions: First-call decisions of an earlier run, by submodule name.
        machine: What timed decisions are valid for (default: ``target`` and its threads).
        partitions: Filled with the SelectingPartition of each partition, by name.
        static_inputs: Positions of ``gm``'s inputs that are weights (parameters, buffers).
    """
    start = time.perf_counter()
    machine = machine or Machine(target.key, target.num_threads)
    decisions = decisions or {}
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    # By name: partitioning rebuilds the graph, so node objects do not survive it.
    static_nodes = {placeholders[i].name for i in static_inputs if i < len(placeholders)}
    report.rerun_safe = report.rerun_safe and not any(
        _has_side_effects(node) for node in gm.graph.nodes
    )
    result = partition_graph(gm, options)
    report.total_ops += result.total_ops
    report.fallbacks.extend(result.fallbacks)
    parent = result.graph_module
    calls = {str(node.target): node for node in parent.graph.nodes if node.op == "call_module"}
    database = tuning_database(options, target)
    lowered: dict[str, Any] = {}
    weights = {name: _weight_positions(calls[name], static_nodes) for name in result.partitions}
    buildable = [
        name
        for name in result.partitions
        if not (
            _skip_kernel(decisions.get(name), machine)
            or name in (prebuilt or {})
            or _device_mismatch(calls[name], target)
        )
    ]
    if options.tuning and buildable:
        # Tune first, with every product in TVM: a tuned kernel may beat the library, which is
        # decided afterwards against the tuned records.
        for name in buildable:
            try:
                lowered[name] = lower_partition(
                    getattr(parent, name), _input_values(calls[name]), weights[name]
                )
            except LoweringError:
                continue  # reported (or raised with strict) when the partition is built below
        if lowered:
            hardware = None
            if target.gpu is not None:
                hardware = gpu_hardware(target.gpu)
            run = tune_modules(
                [low.mod for low in lowered.values()],
                target.target,
                target.key,
                options,
                database,
                hardware=hardware,
            )
            report.tuning = run
    library = {
        name: _library_choices(getattr(parent, name), target, options, database)
        for name in buildable
    }
    for name in result.partitions:
        sub = getattr(parent, name)
        part = PartitionReport(name=name, num_ops=result.partition_ops[name], ops=_op_counts(sub))
        nodes, choices = library.get(name, (set(), []))
        part.library = [choice.reason for choice in choices]
        report.partitions.append(part)
        preset = decisions.get(name)
        kernel: TVMKernel | None = None
        if preset is not None and _skip_kernel(preset, machine):
            # An earlier run chose PyTorch here: neither load nor build the kernel.
            part.status, part.decision = "torch", preset
            part.reason = f"cached decision from an earlier run ({preset.choice}): {preset.reason}"
        elif mismatch := _device_mismatch(calls[name], target):
            part.status, part.reason = "torch", mismatch
            part.decision = Decision("torch", "fixed", mismatch)
        else:
            blob = (prebuilt or {}).get(name)
            if blob is not None:
                kernel = _load_kernel(blob, calls[name], part, target)
            if kernel is None:
                kernel = _build_kernel(
                    sub,
                    calls[name],
                    target,
                    options,
                    part,
                    database,
                    None if nodes else lowered.get(name),  # re-lowered with its library calls
                    weights[name],
                    (nodes, tuple(c.product.describe() for c in choices if c.library)),
                )
        if kernel is not None and kernels is not None:
            kernels[name] = kernel
        selector = SelectingPartition(
            sub, kernel, part, options, machine, preset, weights=weights[name]
        )
        setattr(parent, name, selector)
        selector.bind(parent, name)
        if partitions is not None:
            partitions[name] = selector
    parent.recompile()
    if database is not None:
        report.tuned_kernels = len(database.served)
    report.compile_s += time.perf_counter() - start
    logger.info(
        "torch_rc graph %d: %d/%d ops in %d TVM partitions, %d fallbacks, built in %.2fs",
        report.index,
        report.lowered_ops,
        report.total_ops,
        len(report.partitions),
        len(result.fallbacks),
        report.compile_s,
    )
    return parent


def _library_choices(
    sub: torch.fx.GraphModule, target: TargetInfo, options: Options, database: Any
) -> tuple[set[str], list[Any]]:
    """Which products of a partition run as PyTorch's kernels (timed on real tensors, outside
    Dynamo's fake-tensor mode)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return choose_library_nodes(sub, target, options, database)


def _weight_positions(call: torch.fx.Node, static_names: Collection[str]) -> tuple[int, ...]:
    """Positions of a partition's inputs that are weights of the model (graph inputs named in
    ``static_names``)."""
    return tuple(
        i
        for i, arg in enumerate(call.args)
        if isinstance(arg, torch.fx.Node) and arg.op == "placeholder" and arg.name in static_names
    )


def _build_kernel(
    sub: torch.fx.GraphModule,
    call: torch.fx.Node,
    target: TargetInfo,
    options: Options,
    part: PartitionReport,
    database: Any = None,
    lowered: Any = None,
    weights: tuple[int, ...] = (),
    library: tuple[Collection[str], tuple[str, ...]] = ((), ()),
) -> TVMKernel | None:
    nodes, products = library
    try:
        lowered = lowered or lower_partition(sub, _input_values(call), weights, nodes)
        try:
            executable = build_executable(lowered.mod, target, options, database)
        except BuildError as exc:
            if database is None:
                raise
            # A stored record (an imported one, say) that does not build must not keep this
            # partition in PyTorch for good: build with default schedules instead.
            logger.warning(
                "torch_rc: %s did not build with its stored schedules (%s); default schedules",
                part.name,
                str(exc).splitlines()[0][:200],
            )
            executable = build_executable(lowered.mod, target, options, None)
        signature = KernelSignature(
            tuple(lowered.inputs),
            tuple(lowered.outputs),
            lowered.single_output,
            lowered.weights,
            products,
            lowered.index_bounds,
        )
        return TVMKernel.from_executable(executable, signature, part.name, target)
    except (LoweringError, BuildError) as exc:
        if options.strict:
            raise
        part.status = "failed"
        part.reason = str(exc)
        part.decision = Decision("failed", "fixed", str(exc))
        logger.warning("torch_rc: %s runs in PyTorch: %s", part.name, exc)
        return None


def tuning_database(options: Options, target: TargetInfo) -> Any:
    """The store as a MetaSchedule database for ``target``, when the cache holds tuned records
    (or this compile tunes); None otherwise, so untuned compiles never import MetaSchedule."""
    if not options.cache:
        return None

    store = open_store(options.store_location())
    if store is None:
        return None
    if not options.tuning and not store.stats().get("records", 0):
        return None

    prepare_meta_schedule("cuda" if target.kind == "cuda" else "llvm")
    return make_database(store, target.key)


def _device_mismatch(call: torch.fx.Node, target: TargetInfo) -> str:
    """Why a partition cannot run on ``target``'s device (inputs elsewhere), or ``""``."""
    want = target.torch_device
    others = sorted(
        {
            str(value.device)
            for value in _input_values(call)
            if isinstance(value, torch.Tensor)
            and (value.device.type != want.type or (value.device.index or 0) != (want.index or 0))
        }
    )
    if not others:
        return ""
    return f"inputs on {', '.join(others)}: a {target.kind} kernel needs them all on {want}"


def _input_values(call: torch.fx.Node) -> list[object]:
    return [arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg for arg in call.args]


def _load_kernel(
    blob: Any, call: torch.fx.Node, part: PartitionReport, target: TargetInfo
) -> TVMKernel | None:
    """A kernel from a stored library, or None when the blob does not fit this partition."""
    try:
        specs = tuple(tensor_spec(value) for value in _input_values(call))
    except LoweringError:
        return None
    if specs != tuple(blob.signature.inputs):
        logger.warning(
            "torch_rc: stored kernel for %s has other input specs; rebuilding", part.name
        )
        return None
    return TVMKernel.from_library(blob.library, blob.signature, part.name, target)


def _has_side_effects(node: torch.fx.Node) -> bool:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    return target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags


def _op_counts(sub: torch.fx.GraphModule) -> dict[str, int]:
    counts = collections.Counter(
        qualified_name(node.target) for node in sub.graph.nodes if is_compute_node(node)
    )
    return dict(counts.most_common())
