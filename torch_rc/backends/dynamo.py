"""The ``reasoning`` Dynamo backend, loaded by torch through the ``torch_dynamo_backends`` entry point.

This module must not call ``torch._dynamo.register_backend``: torch registers the entry point under
its own name, and a second registration raises "duplicate name".
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx

from torch_rc.backends.artifact import (
    CompiledGraph,
    KernelBlob,
    options_dict,
    ring_of,
    stored_kernels,
)
from torch_rc.backends.compiler import GraphReport, compile_aten_graph, static_input_positions
from torch_rc.backends.decisions import Decision, Machine, decisions_from_json
from torch_rc.backends.decompositions import decomposition_table
from torch_rc.backends.gate import GraphGate
from torch_rc.backends.select import Counted
from torch_rc.backends.specialize import SpecializingGraph, has_symbolic_shapes
from torch_rc.cache.interface import TuningStore
from torch_rc.cache.keys import artifact_key
from torch_rc.cache.location import open_store
from torch_rc.errors import TVMVersionError
from torch_rc.options import TUNING_OPTIONS, Options
from torch_rc.platform.target import detect_target, graph_device, target_key
from torch_rc.platform.threads import set_thread_cap
from torch_rc.platform.tvm_shim import prepare_cuda_compiler

__all__ = ["reasoning", "compile_graph"]

logger = logging.getLogger(__name__)
_graph_counter = itertools.count()
# Options that change neither the code built nor the meaning of a decision: where the cache is,
# and how long first-call timings may take. (The thread count is recorded in each decision.)
_NOT_IN_KEY = frozenset(
    {
        "cache",
        "cache_dir",
        "num_threads",
        "measure_repeats",
        "measure_budget_s",
        "lock_timeout_s",
        "key_dir",
        "trusted_keys",
        "trust_unsigned",
    }
)


def reasoning(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[object],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> CompiledGraph:
    """Compile a Dynamo graph with TVM, falling back to PyTorch for what TVM cannot take.

    Args:
        gm: The graph Dynamo captured.
        example_inputs: Its (fake) example inputs.
        mode: ``torch.compile``'s ``mode=`` (mapped to presets in :mod:`torch_rc.options`).
        options: ``torch.compile``'s ``options=`` dict (see :class:`torch_rc.Options`).
    """
    resolved = Options.resolve(options, mode)
    compiled, _report = compile_graph(gm, example_inputs, resolved)
    return compiled


def reporting_backend(
    options: Options, sink: list[GraphReport], *, use_artifacts: bool = True
) -> Callable[..., Any]:
    """A Dynamo backend compiling with ``options`` that appends every GraphReport to ``sink``
    (what ``explain``, ``tune`` and serving use to see what each compile did).

    Args:
        use_artifacts: Load and store compiled graphs and their decisions in the cache. Off for
            a fresh analysis (tuned records in the cache are still used).
    """

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        return compile_graph(gm, example_inputs, options, sink, use_cache=use_artifacts)[0]

    return backend


def compile_graph(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[object],
    options: Options,
    report_sink: list[GraphReport] | None = None,
    prebuilt: Mapping[str, KernelBlob] | None = None,
    decisions: Mapping[str, Any] | None = None,
    use_cache: bool = True,
) -> tuple[CompiledGraph, GraphReport]:
    """Compile one Dynamo graph; return the (serializable) callable and its live report.

    The graph goes through AOTAutograd, which functionalizes it, lowers it to ATen and keeps
    input-mutation and autograd semantics; the forward (or inference) ATen graph is partitioned
    and built by :func:`compile_aten_graph`, and a backward, if one is needed, runs in PyTorch.
    With ``options.cache`` a static CPU graph compiled before loads its kernels and first-call
    decisions from the persistent store instead.

    Args:
        report_sink: Every GraphReport made (including per-signature ones) is appended here.
        prebuilt: Kernel blobs from a serialized artifact, loaded instead of built.
        decisions: First-call decisions of an earlier run (their JSON form), by name.
        use_cache: Consult the persistent store (when ``options.cache`` is on).
    """
    example = list(example_inputs)
    cacheable = not has_symbolic_shapes(example) and graph_device(example).type in ("cpu", "cuda")
    if use_cache and options.cache and cacheable:
        store = open_store(options.store_location())
        if store is not None:
            return _compile_cached(gm, example, options, report_sink, store)
    compiled = CompiledGraph(None, gm, example, options_dict(options), {}, None)  # type: ignore[arg-type]
    fn, report = _compile(
        gm, example, options, report_sink, compiled, prebuilt, decisions_from_json(decisions)
    )
    compiled.fn, compiled.report = fn, report
    compiled.set_origin(*traced_origin())
    return compiled, report


def _compile_cached(
    gm: torch.fx.GraphModule,
    example: list[object],
    options: Options,
    report_sink: list[GraphReport] | None,
    store: TuningStore,
) -> tuple[CompiledGraph, GraphReport]:
    """Load the graph's kernels and decisions from the store, or build and store them.

    A per-key lock makes concurrent processes build a given graph once: the second waits (at
    most ``lock_timeout_s``, then compiles without the cache), then hits. The lock covers a
    build, never a tuning run: a compile that tunes takes no lock (its records are written one
    by one) and stores its artifact at the end. The artifact is stored right after the build and
    its decisions once the first call has made them.
    """
    details = artifact_key(
        gm, example, key_options(options), target_key(options, graph_device(example))
    )
    if options.tuning:
        # Kernels tuned before are found in the store and not tuned again; the build then uses
        # the new records and replaces the artifact.
        return _build_and_store(gm, example, options, report_sink, store, details)
    with store.lock(details.key, timeout_s=options.lock_timeout_s) as held:
        if not held:
            logger.warning(
                "torch_rc: another process has been building this graph for over %.0f s "
                "(lock_timeout_s); compiling it here without the cache",
                options.lock_timeout_s,
            )
            return compile_graph(gm, example, options, report_sink, use_cache=False)
        hit = store.get_artifact(details)
        blobs: Mapping[str, KernelBlob] | None = None
        if hit is not None:
            # A graph that runs as the original needs no kernels: do not even read them.
            blobs = {} if _runs_eager(hit[1], options, example) else stored_kernels(hit[0], options)
        if hit is not None and blobs is not None:
            cached = hit[1]
            compiled, report = compile_graph(
                gm, example, options, report_sink, prebuilt=blobs, decisions=cached, use_cache=False
            )
            report.cache = "hit"
            compiled.after_first_call = lambda c: _save_decisions(store, details, cached, c)
            return compiled, report
        return _build_and_store(gm, example, options, report_sink, store, details)


def _build_and_store(
    gm: torch.fx.GraphModule,
    example: list[object],
    options: Options,
    report_sink: list[GraphReport] | None,
    store: TuningStore,
    details: Any,
) -> tuple[CompiledGraph, GraphReport]:
    compiled, report = compile_graph(gm, example, options, report_sink, use_cache=False)
    if report.target.startswith("none"):
        return compiled, report  # nothing was built; the graph runs in PyTorch
    about = {ABOUT: describe_graph(gm, example, report)}
    store.put_artifact(
        details, compiled.to_bytes(ring_of(options)), {**compiled.decisions(), **about}
    )
    report.cache = "miss"
    compiled.after_first_call = lambda c: _save_decisions(store, details, about, c)
    return compiled, report


# The entry of an artifact's decision record that describes the graph (for ``cache ls``).
ABOUT = "@about"


def key_options(options: Options) -> dict[str, Any]:
    """The options that are part of an artifact's key: those that change what is built (not
    where the cache is, how long to wait, or how to tune: tuned records are found by workload)."""
    return {
        k: v
        for k, v in options_dict(options).items()
        if k not in _NOT_IN_KEY and k not in TUNING_OPTIONS
    }


def describe_graph(
    gm: torch.fx.GraphModule, example: Sequence[object], report: GraphReport
) -> dict[str, Any]:
    """What a person needs to recognise a cached graph: the model (the module or function Dynamo
    was tracing), the shapes of its activations, how many weights, the most frequent ATen ops."""
    ops: dict[str, int] = {}
    for part in report.partitions:
        for op, count in part.ops.items():
            ops[op] = ops.get(op, 0) + count
    for fallback in report.fallbacks:
        ops[fallback.op] = ops.get(fallback.op, 0) + 1
    top = dict(sorted(ops.items(), key=lambda item: -item[1])[:6])
    tensors = [v for v in example if isinstance(v, torch.Tensor)]
    weights = [v for v in tensors if getattr(v, "_dynamo_static_input_type", None)]
    inputs = [
        f"{tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
        for v in tensors
        if not getattr(v, "_dynamo_static_input_type", None)
    ]
    return {
        "model": _traced_name(),
        "inputs": inputs,
        "weights": len(weights),
        "ops": top,
        "total_ops": report.total_ops,
        "partitions": len(report.partitions),
    }


def traced_origin() -> tuple[torch.nn.Module | None, Any]:
    """The module Dynamo is tracing (its ``self`` or, for built-in modules, the ``fn`` it wraps)
    and the code object of the traced frame; (None, None) outside a trace."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        while tx is not None and getattr(tx, "parent", None) is not None:
            tx = tx.parent
        if tx is None:
            return None, None
        for name in ("self", "fn"):
            value = tx.f_locals.get(name)
            if isinstance(value, torch.nn.Module):
                return value, tx.f_code
        return None, tx.f_code
    except Exception:  # Dynamo's tracer is private API: the origin helps reports, never results
        return None, None


def _traced_name() -> str:
    """The class of the module Dynamo is tracing, or the traced function's name."""
    module, code = traced_origin()
    if module is not None:
        return type(module).__name__
    return str(getattr(code, "co_name", "?"))


def machine_of(options: Options, example: Sequence[object]) -> Machine:
    """What a first-call timing here is valid for: this CPU or GPU, and the thread count."""
    threads = options.num_threads or torch.get_num_threads()
    return Machine(target_key(options, graph_device(example)), threads)


def _runs_eager(cached: Mapping[str, Any], options: Options, example: Sequence[object]) -> bool:
    """An earlier run decided, validly here, that this graph runs as the original."""
    decision = decisions_from_json(cached).get("graph")
    return (
        decision is not None
        and decision.choice == "eager"
        and decision.valid_on(machine_of(options, example))
    )


def _save_decisions(
    store: TuningStore, details: Any, before: Mapping[str, Any], compiled: CompiledGraph
) -> None:
    """Store the decisions the first call made (keeping the graph's description), when they
    differ from what was stored."""
    now = compiled.decisions()
    stored = {k: v for k, v in before.items() if k != ABOUT}
    if now and now != stored:
        about = {ABOUT: before[ABOUT]} if ABOUT in before else {}
        store.update_decisions(details, {**now, **about})


def _compile(
    gm: torch.fx.GraphModule,
    example_inputs: list[object],
    options: Options,
    report_sink: list[GraphReport] | None,
    compiled_graph: CompiledGraph,
    prebuilt: Mapping[str, KernelBlob] | None,
    decisions: Mapping[str, Decision],
) -> tuple[Callable[..., Any], GraphReport]:
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    index = next(_graph_counter)
    if has_symbolic_shapes(example_inputs):
        origin = traced_origin()

        def compile_static(graph: torch.fx.GraphModule, args: list[object]) -> Callable[..., Any]:
            specialised = compile_graph(graph, args, options, report_sink)[0]
            specialised.set_origin(*origin)  # compiled at call time, outside Dynamo's trace
            return specialised

        report = GraphReport(
            index=index, target="symbolic shapes: specialised per input signature at call time"
        )
        return SpecializingGraph(gm, compile_static), report

    device = graph_device(example_inputs)
    unsupported = _unsupported_device(device)
    if unsupported:
        report = GraphReport(index=index, target=f"none: {unsupported}")
        _sink(report_sink, report)
        logger.warning("torch_rc: %s", report.target)
        return gm.forward, report

    machine = machine_of(options, example_inputs)
    graph_decision = decisions.get("graph")
    if (
        graph_decision is not None
        and graph_decision.choice == "eager"
        and graph_decision.valid_on(machine)
    ):
        # An earlier run measured the original graph as faster: no tracing, no kernels, no TVM.
        report = GraphReport(index=index, target="cached decision: original graph", cache="hit")
        report.choice, report.decision = "eager", graph_decision
        report.choice_reason = f"cached decision from an earlier run: {graph_decision.reason}"
        _sink(report_sink, report)
        return Counted(gm.forward, "eager"), report
    target = detect_target(options, device)
    set_thread_cap(options.num_threads)
    report = GraphReport(index=index, target=target.description)
    _sink(report_sink, report)

    def forward_compiler(
        aten_gm: torch.fx.GraphModule, aten_inputs: Sequence[object]
    ) -> Callable[..., Any]:
        return compile_aten_graph(
            aten_gm,
            aten_inputs,
            options,
            target,
            report,
            compiled_graph.kernels,
            prebuilt,
            decisions,
            machine,
            compiled_graph.partitions,
            static_input_positions(aten_gm),
        )

    def backward_compiler(
        aten_gm: torch.fx.GraphModule, _inputs: Sequence[object]
    ) -> Callable[..., Any]:
        return make_boxed_func(aten_gm.forward)

    backend = aot_autograd(
        fw_compiler=forward_compiler,
        inference_compiler=forward_compiler,
        bw_compiler=backward_compiler,
        decompositions=decomposition_table(),
        keep_inference_input_mutations=True,
    )
    # aot_compile forces AOTAutograd's own (Inductor-only) artifact cache on; torch_rc's artifact
    # serializes itself (torch_rc.cache.artifacts), so that cache stays off for this inner call.
    no_autograd_cache = torch._functorch.config.patch(
        enable_autograd_cache=False,
        force_autograd_cache=False,
        bundled_autograd_cache=False,
        strict_autograd_cache=False,
    )
    try:
        with no_autograd_cache:
            compiled = backend(gm, example_inputs)
    except Exception as exc:  # tracing to ATen failed: the whole graph runs in PyTorch
        if options.strict:
            raise
        reason = f"tracing to ATen failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        report.target = f"none: {reason}; the whole graph runs in PyTorch"
        logger.warning("torch_rc: graph %d %s", index, report.target)
        return gm.forward, report
    if options.select != "measure":
        reason = f"option select={options.select!r}"
        report.choice, report.choice_reason = "compiled", reason
        report.decision = Decision("compiled", "fixed", reason)
        return Counted(compiled, "compiled"), report
    # A graph that needs autograd applies input mutations outside the ATen graph (in AOTAutograd's
    # epilogue), where the side-effect check cannot see them: never re-run it for timing.
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(value, torch.Tensor) and value.requires_grad for value in example_inputs
    )
    report.rerun_safe = report.rerun_safe and not needs_grad
    gate = GraphGate(
        compiled,
        gm.forward,
        report,
        options,
        machine,
        graph_decision,
        partitions=list(compiled_graph.partitions.values()),
    )
    compiled_graph.gate = gate
    return gate, report


def _unsupported_device(device: torch.device) -> str:
    """Why graphs on ``device`` run in PyTorch, or ``""`` when torch_rc compiles for it."""
    if device.type == "cpu":
        return ""
    if device.type != "cuda":
        return f"{device.type} graphs run in PyTorch (torch_rc compiles for CPUs and CUDA GPUs)"

    try:
        prepare_cuda_compiler()
    except TVMVersionError as exc:
        return f"cuda graphs run in PyTorch: {exc}"
    return ""


def _sink(report_sink: list[GraphReport] | None, report: GraphReport) -> None:
    if report_sink is not None:
        report_sink.append(report)
