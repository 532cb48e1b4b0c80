"""``torch_rc.explain``: what runs on TVM, what falls back to PyTorch, why, and with what numbers.

Two modes:

* ``explain(compiled_model)`` — the model ``torch.compile(..., backend="reasoning")`` returned —
  reads the decisions actually in force in that model (loaded from the cache or made on its
  first call), with their measured numbers, noise, state and age, and how often each side has run
  since (its call counters). Nothing is compiled, timed or tuned. Given example inputs, the model
  is called once first (a model that was never called has nothing to report yet).
* ``explain(model, *inputs)`` on a plain model or function is a **fresh analysis**: it compiles
  the model without the artifact cache (tuned records in the cache are still used), runs it once
  under ``torch.no_grad()`` and reports what that compile decided. It never tunes unless asked
  with ``tune=True``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_rc.backends.artifact import CompiledGraph
from torch_rc.backends.compiler import GraphReport
from torch_rc.backends.decisions import Decision
from torch_rc.backends.dynamo import reporting_backend
from torch_rc.errors import TorchRCError
from torch_rc.options import TUNING_OPTIONS, Options

__all__ = ["CoverageReport", "FallbackSummary", "compiled_graphs", "explain"]


@dataclass(frozen=True)
class FallbackSummary:
    """One ATen op that (also) runs in PyTorch: how often and why."""

    op: str
    count: int
    reasons: tuple[str, ...]


@dataclass
class CoverageReport:
    """Coverage and decisions of one model's compiled graphs.

    ``lowered`` counts ops that TVM compiled; ``executed`` counts ops that actually run on TVM
    after each partition's first-call choice and the whole-graph choice.

    Attributes:
        graphs: One report per compiled graph.
        mode: ``"compiled model"`` (decisions in force) or ``"fresh analysis"``.
        compiled: The live compiled graphs (for call counters), parallel to ``graphs``; empty in a
            fresh analysis.
    """

    graphs: list[GraphReport] = field(default_factory=list)
    mode: str = "fresh analysis"
    compiled: list[Any] = field(default_factory=list)

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    @property
    def num_partitions(self) -> int:
        return sum(len(g.partitions) for g in self.graphs)

    @property
    def total_ops(self) -> int:
        return sum(g.total_ops for g in self.graphs)

    @property
    def lowered_ops(self) -> int:
        return sum(g.lowered_ops for g in self.graphs)

    @property
    def executed_ops(self) -> int:
        return sum(g.executed_ops for g in self.graphs)

    @property
    def lowered_fraction(self) -> float:
        return self.lowered_ops / self.total_ops if self.total_ops else 0.0

    @property
    def executed_fraction(self) -> float:
        return self.executed_ops / self.total_ops if self.total_ops else 0.0

    def calls(self) -> list[dict[str, Any]]:
        """Per compiled graph: how often each side ran since its first call, and per partition
        how often TVM and PyTorch ran (empty in a fresh analysis)."""
        out = []
        for compiled in self.compiled:
            out.append(
                {
                    "graph": compiled.calls(),
                    "partitions": {name: p.calls() for name, p in compiled.partitions.items()},
                }
            )
        return out

    def fallbacks(self) -> list[FallbackSummary]:
        """Ops that run in PyTorch, most frequent first, each with its distinct reasons."""
        counts: collections.Counter[str] = collections.Counter()
        reasons: dict[str, dict[str, None]] = collections.defaultdict(dict)
        for graph in self.graphs:
            for node in graph.fallbacks:
                counts[node.op] += 1
                reasons[node.op][node.reason] = None
            for part in graph.partitions:
                if part.status in ("tvm", "pending"):
                    continue
                why = f"in {part.name}, which runs in PyTorch: {part.reason}"
                for op, count in part.ops.items():
                    counts[op] += count
                    reasons[op][why] = None
        return [FallbackSummary(op, n, tuple(reasons[op])) for op, n in counts.most_common()]

    def summary(self) -> str:
        """One line: mode, graphs, partitions and coverage fractions."""
        return (
            f"{self.mode}: {self.num_graphs} graph(s), {self.num_partitions} TVM partition(s); "
            f"ATen ops lowered to TVM: {self.lowered_ops}/{self.total_ops} "
            f"({self.lowered_fraction:.0%}), executed on TVM: {self.executed_ops}/{self.total_ops} "
            f"({self.executed_fraction:.0%})"
        )

    def _lines(self) -> Iterator[str]:
        calls = self.calls() if self.compiled else [{} for _ in self.graphs]
        for graph, counters in zip(self.graphs, calls, strict=True):
            yield (
                f"graph {graph.index} [{graph.target}] built in {graph.compile_s:.2f}s, cache "
                f"{graph.cache}; runs {graph.choice} ({_state(graph.decision)}): "
                f"{graph.choice_reason}{_counts(counters.get('graph'))}"
            )
            parts = counters.get("partitions", {})
            for part in graph.partitions:
                yield (
                    f"  {part.name}: {part.num_ops} ops -> {part.status} ({_state(part.decision)}): "
                    f"{part.reason}{_counts(parts.get(part.name))}"
                )
                for line in part.library:
                    yield f"    matrix product {line}"
            if graph.tuned_kernels:
                yield f"  kernels built from tuned records: {graph.tuned_kernels}"

    def __str__(self) -> str:
        lines = [self.summary(), *self._lines()]
        fallbacks = self.fallbacks()
        if fallbacks:
            lines.append("ops running in PyTorch:")
            for item in fallbacks:
                lines.append(f"  {item.op} x{item.count}: {' | '.join(item.reasons)}")
        return "\n".join(lines)

    def print(self) -> None:
        """Pretty-print with rich (plain text when rich's console is not a terminal)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        console.print(f"[bold]torch_rc[/bold] {escape(self.summary())}")
        calls = self.calls() if self.compiled else [{} for _ in self.graphs]
        for graph, counters in zip(self.graphs, calls, strict=True):
            console.print(
                escape(
                    f"graph {graph.index} [{graph.target}]: runs {graph.choice} "
                    f"({_state(graph.decision)}) {graph.choice_reason}"
                    f"{_counts(counters.get('graph'))}"
                )
            )
        parts = Table(
            "graph",
            "partition",
            "ops",
            "runs on",
            "state",
            "tvm ms",
            "torch ms",
            "calls",
            "why",
            title="TVM partitions",
        )
        for graph, counters in zip(self.graphs, calls, strict=True):
            for part in graph.partitions:
                ran = counters.get("partitions", {}).get(part.name)
                parts.add_row(
                    str(graph.index),
                    part.name,
                    str(part.num_ops),
                    part.status,
                    _state(part.decision),
                    _ms(part.tvm_ms),
                    _ms(part.torch_ms),
                    ", ".join(f"{k} {v}" for k, v in ran.items()) if ran else "-",
                    escape(part.reason),
                )
        console.print(parts)
        products = [
            (graph.index, part.name, line)
            for graph in self.graphs
            for part in graph.partitions
            for line in part.library
        ]
        if products:
            # Each large matrix product inside a TVM partition: PyTorch's library kernel or the
            # TVM kernel (tuned where the cache has a record), as timed when it was built.
            table = Table(
                "graph", "partition", "product: runs as (timing)", title="Matrix products"
            )
            for index, name, line in products:
                table.add_row(str(index), name, escape(line))
            console.print(table)
        tuned = sum(graph.tuned_kernels for graph in self.graphs)
        if tuned:
            console.print(f"kernels built from tuned records: {tuned}")
        fallbacks = self.fallbacks()
        if fallbacks:
            table = Table("ATen op", "count", "reason", title="Ops running in PyTorch")
            for item in fallbacks:
                table.add_row(item.op, str(item.count), escape("\n".join(item.reasons)))
            console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _state(decision: Decision | None) -> str:
    if decision is None:
        return "pending"
    if decision.state == "fixed":
        return "fixed"
    age = _age(time.time() - decision.at)
    return f"{decision.state}, {decision.threads} threads, decided {age} ago"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _counts(counters: Mapping[str, int] | None) -> str:
    if not counters:
        return ""
    return "; calls since: " + ", ".join(f"{side} {n}" for side, n in counters.items())


def _is_compiled(model: Any) -> bool:
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(model, OptimizedModule) or hasattr(model, "_torchdynamo_orig_callable")


def compiled_graphs(compiled_model: Any) -> list[Any]:
    """The torch_rc :class:`~torch_rc.backends.artifact.CompiledGraph` objects a ``torch.compile``
    result runs now, in the order Dynamo compiled them (graph breaks' resume functions and
    per-shape specialisations included), read from Dynamo's cache entries.

    Raises:
        TorchRCError: ``compiled_model`` is not the result of ``torch.compile``.
    """
    if not _is_compiled(compiled_model):
        raise TorchRCError(
            f"{type(compiled_model).__name__} is not a torch.compile result; call explain(model, "
            "*example_inputs) for a fresh analysis of an uncompiled model"
        )
    module = getattr(compiled_model, "_orig_mod", None)
    function = _traced_function(compiled_model)
    found: dict[int, CompiledGraph] = {}
    seen: set[int] = set()
    todo = [(function.__code__, function.__globals__)] if hasattr(function, "__code__") else []
    while todo:
        code, scope = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        for entry in torch._C._dynamo.eval_frame._debug_get_cache_entry_list(code):
            for name in entry.code.co_names:
                value = scope.get(name)
                if name.startswith("__compiled_fn"):
                    graph = _unwrap(value, CompiledGraph)
                    # Code objects are shared (by every instance of a class, and by the frame
                    # Dynamo wraps built-in modules in): keep this model's graphs only.
                    if graph is not None and _same_origin(graph, module):
                        found.setdefault(id(graph), graph)
                elif name.startswith("__resume_at") and hasattr(value, "__code__"):
                    todo.append((value.__code__, value.__globals__))
    graphs = []
    for graph in found.values():
        specialised = getattr(graph.fn, "compiled", None)  # a SpecializingGraph: its builds
        if isinstance(specialised, dict):
            graphs += [g for g in specialised.values() if isinstance(g, CompiledGraph)]
        else:
            graphs.append(graph)
    unique = {id(g): g for g in graphs}
    return sorted(unique.values(), key=lambda g: g.report.index if g.report else 0)


def _traced_function(compiled_model: Any) -> Any:
    """The function whose frame Dynamo compiles for a ``torch.compile`` result: a module's
    ``forward``, the wrapper Dynamo puts around built-in modules, or the compiled function."""
    wrapper = compiled_model
    if hasattr(compiled_model, "_orig_mod"):
        wrapper = getattr(compiled_model, "_forward", None) or compiled_model.forward
    original = getattr(wrapper, "_torchdynamo_orig_callable", wrapper)
    owner = getattr(original, "__self__", None)
    if isinstance(owner, torch.nn.Module):  # module.__call__: Dynamo starts in its forward
        original = type(owner).forward
    return getattr(original, "__func__", original)


def _same_origin(graph: Any, module: Any) -> bool:
    traced = graph.origin() if graph.origin is not None else None
    return traced is None or traced is module


def _unwrap(value: Any, cls: type) -> Any:
    for _ in range(8):
        if isinstance(value, cls) or value is None:
            return value
        value = getattr(value, "__wrapped__", None)
    return None


def explain(
    model: Callable[..., Any],
    *example_inputs: Any,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
    print_report: bool = True,
    tune: bool = False,
) -> CoverageReport:
    """Report what runs where and why (see the module docstring for the two modes).

    Args:
        model: A ``torch.compile(..., backend="reasoning")`` result (decisions in force), or a
            module or function (a fresh analysis).
        *example_inputs: Inputs to call it with (needed for a fresh analysis; for a compiled
            model, it is called once with them first).
        options: Backend options for a fresh analysis, as for ``torch.compile(..., options=...)``.
        mode: As ``torch.compile``'s ``mode=`` (fresh analysis).
        print_report: Pretty-print the report as well as returning it.
        tune: Let a fresh analysis tune (with the options' ``trials``); off by default, so that
            explaining a model never spends a tuning budget by surprise.

    Raises:
        TorchRCError: A compiled model that has compiled nothing yet and no inputs to call it
            with, or one compiled by another backend.
    """
    if _is_compiled(model):
        if options or mode or tune:
            raise TorchRCError(
                "explain(compiled_model) reports the decisions in force; options, mode and tune "
                "apply to a fresh analysis of the uncompiled model"
            )
        report = _explain_compiled(model, example_inputs)
    else:
        report = _fresh_analysis(model, example_inputs, options, mode, tune)
    if print_report:
        report.print()
    return report


def _explain_compiled(model: Any, example_inputs: tuple[Any, ...]) -> CoverageReport:
    if example_inputs:
        with torch.no_grad():
            model(*example_inputs)
    graphs = compiled_graphs(model)
    if not graphs:
        raise TorchRCError(
            "this compiled model holds no torch_rc graph yet: call it once (or pass example "
            "inputs to explain), and check it was compiled with backend='reasoning'"
        )
    return CoverageReport([g.report for g in graphs], "compiled model", graphs)


def _fresh_analysis(
    model: Callable[..., Any],
    example_inputs: tuple[Any, ...],
    options: Mapping[str, Any] | None,
    mode: str | None,
    tune: bool,
) -> CoverageReport:

    given = dict(options or {})
    if not tune:
        given = {k: v for k, v in given.items() if k not in TUNING_OPTIONS or k == "progress"}
    resolved = Options.resolve(given, mode)
    if not tune:
        resolved = resolved.replace(trials=0)
    sink: list[GraphReport] = []
    compiled = torch.compile(model, backend=reporting_backend(resolved, sink, use_artifacts=False))
    with torch.no_grad():
        compiled(*example_inputs)
    return CoverageReport(graphs=sink, mode="fresh analysis")
