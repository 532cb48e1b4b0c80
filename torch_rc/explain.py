"""``torch_rc.explain``: what runs on TVM, what falls back to PyTorch, and why."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_rc.backends.compiler import GraphReport
from torch_rc.options import Options

__all__ = ["CoverageReport", "FallbackSummary", "explain"]


@dataclass(frozen=True)
class FallbackSummary:
    """One ATen op that (also) runs in PyTorch: how often and why."""

    op: str
    count: int
    reasons: tuple[str, ...]


@dataclass
class CoverageReport:
    """Coverage of one model's compiled graphs.

    ``lowered`` counts ops that TVM compiled; ``executed`` counts ops that actually run on TVM after
    each partition's first-call choice (a partition that is slower on TVM runs in PyTorch).
    """

    graphs: list[GraphReport] = field(default_factory=list)

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
        """One line: graphs, partitions and coverage fractions."""
        return (
            f"{self.num_graphs} graph(s), {self.num_partitions} TVM partition(s); "
            f"ATen ops lowered to TVM: {self.lowered_ops}/{self.total_ops} ({self.lowered_fraction:.0%}), "
            f"executed on TVM: {self.executed_ops}/{self.total_ops} ({self.executed_fraction:.0%})"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        for graph in self.graphs:
            lines.append(
                f"graph {graph.index} [{graph.target}] built in {graph.compile_s:.2f}s; runs {graph.choice}: {graph.choice_reason}"
            )
            for part in graph.partitions:
                timing = ""
                if part.tvm_ms is not None and part.torch_ms is not None:
                    timing = f" tvm {part.tvm_ms:.3f} ms vs torch {part.torch_ms:.3f} ms;"
                lines.append(
                    f"  {part.name}: {part.num_ops} ops -> {part.status};{timing} {part.reason}".rstrip()
                )
        fallbacks = self.fallbacks()
        if fallbacks:
            lines.append("ops running in PyTorch:")
            for item in fallbacks:
                lines.append(f"  {item.op} x{item.count}: {' | '.join(item.reasons)}")
        return "\n".join(lines)

    def print(self) -> None:
        """Pretty-print with rich (plain text when rich's console is not a terminal)."""
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(f"[bold]torch_rc coverage[/bold]: {self.summary()}")
        for graph in self.graphs:
            console.print(
                f"graph {graph.index} [{graph.target}]: runs {graph.choice} ({graph.choice_reason})"
            )
        parts = Table(
            "graph",
            "partition",
            "ops",
            "runs on",
            "tvm ms",
            "torch ms",
            "why",
            title="TVM partitions",
        )
        for graph in self.graphs:
            for part in graph.partitions:
                parts.add_row(
                    str(graph.index),
                    part.name,
                    str(part.num_ops),
                    part.status,
                    _ms(part.tvm_ms),
                    _ms(part.torch_ms),
                    part.reason,
                )
        console.print(parts)
        fallbacks = self.fallbacks()
        if fallbacks:
            table = Table("ATen op", "count", "reason", title="Ops running in PyTorch")
            for item in fallbacks:
                table.add_row(item.op, str(item.count), "\n".join(item.reasons))
            console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def explain(
    model: Callable[..., Any],
    *example_inputs: Any,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
    print_report: bool = True,
) -> CoverageReport:
    """Compile ``model`` with the reasoning backend, run it once, and report coverage.

    The model runs under ``torch.no_grad()`` (the serving setting) so each partition makes its
    TVM-or-PyTorch choice on real data. The report lists graphs, partitions, the fraction of ATen
    ops lowered to and executed on TVM, and every fallback op with its count and reason.

    Args:
        model: A module or function.
        *example_inputs: Inputs to call it with.
        options: Backend options, as for ``torch.compile(..., options=...)``.
        mode: As ``torch.compile``'s ``mode=``.
        print_report: Pretty-print the report as well as returning it.
    """
    from torch_rc.backends.dynamo import reporting_backend

    # explain() analyses afresh: cached decisions would hide what lowers and what is faster.
    resolved = Options.resolve(options, mode).replace(cache=False)
    sink: list[GraphReport] = []

    compiled = torch.compile(model, backend=reporting_backend(resolved, sink))
    with torch.no_grad():
        compiled(*example_inputs)
    report = CoverageReport(graphs=sink)
    if print_report:
        report.print()
    return report
