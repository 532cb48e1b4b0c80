"""``torch_rc.tune``: tune a model (or one TIR workload) ahead of serving, filling the cache.

``torch.compile(model, backend="reasoning", options={"trials": N})`` tunes as part of compiling;
this function does the same for a model and example inputs and returns what happened (tasks,
samples, best latencies, the run log) so scripts and the CLI can report it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_rc.backends.compiler import GraphReport, tuning_database
from torch_rc.backends.dynamo import reporting_backend
from torch_rc.cache.location import persistent_store
from torch_rc.numerics import max_abs_error
from torch_rc.options import Options, with_budget
from torch_rc.platform.hardware import gpu_hardware
from torch_rc.platform.target import detect_target
from torch_rc.tuning.remote import check_fleet
from torch_rc.tuning.report import add_graph_timings
from torch_rc.tuning.session import Task, TuningRun, tune_modules

__all__ = ["TuneReport", "tune", "tune_tir"]


DEFAULT_TRIALS = 64  # a tune() call that names no budget (trials is the model's total)


@dataclass
class TuneReport:
    """The tuning runs of one ``tune`` call and the compiled model they produced."""

    runs: list[TuningRun] = field(default_factory=list)
    compiled: Any = None
    max_abs_error: float | None = None  # compiled vs eager on the example inputs
    graphs: list[GraphReport] = field(default_factory=list)  # what each graph runs, and why

    def what_runs(self) -> list[str]:
        """One line per Dynamo graph: what the compiled model runs for it after tuning (the
        compiled graph or the original, eagerly), with both timings and the reason."""
        lines = []
        for graph in self.graphs:
            timing = ""
            if graph.compiled_ms is not None and graph.eager_ms is not None:
                timing = (
                    f" (compiled {graph.compiled_ms:.3f} ms, eager {graph.eager_ms:.3f} ms, "
                    f"{graph.eager_ms / graph.compiled_ms:.2f}x)"
                )
            state = f", {graph.decision.state}" if graph.decision is not None else ""
            runs = "the compiled graph" if graph.choice == "compiled" else f"{graph.choice}"
            lines.append(
                f"graph {graph.index}: runs {runs}{state}{timing}: {graph.choice_reason}".rstrip(
                    ": "
                )
            )
        return lines

    @property
    def tasks(self) -> list[Any]:
        return [task for run in self.runs for task in run.tasks]

    @property
    def samples(self) -> int:
        return sum(task.result.samples for task in self.tasks if task.result is not None)

    @property
    def interrupted(self) -> bool:
        return any(run.interrupted for run in self.runs)


def tune(
    model: Callable[..., Any],
    example_inputs: Sequence[Any],
    *,
    trials: int | None = None,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> TuneReport:
    """Compile ``model`` for ``example_inputs`` with tuning on, run it once, compare with eager.

    Tuned, verified schedules land in the cache (``options["cache_dir"]`` / ``cache_url``), so
    later ``torch.compile(model, backend="reasoning")`` calls, in any process, use them.

    Raises:
        OptionsError: A bad option (named).
        CacheError: The cache cannot keep what tuning finds (a read-only location).
    """
    resolved = Options.resolve(
        with_budget(options, trials=trials, default_trials=DEFAULT_TRIALS), mode
    )
    if resolved.tune == "never":
        resolved = resolved.replace(tune="auto")  # an explicit tune() call means tune
    if resolved.cache:
        persistent_store(resolved.store_location(), "the tuning results")
    if resolved.rpc_tracker and resolved.tuning:
        check_fleet(resolved.rpc_tracker, resolved.rpc_key)  # a clear error before compiling
    sink: list[GraphReport] = []

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=reporting_backend(resolved, sink))
    with torch.no_grad():
        got = compiled(*example_inputs)
        want = model(*example_inputs)
    report = TuneReport([g.tuning for g in sink if g.tuning is not None], compiled, graphs=sink)
    report.max_abs_error = max_abs_error(want, got)
    for graph in sink:
        if graph.tuning is not None and graph.tuning.log_path:
            add_graph_timings(
                graph.tuning.log_path,
                eager_ms=graph.eager_ms,
                compiled_ms=graph.compiled_ms,
                choice=graph.choice,
            )
    return report


def tune_tir(
    mod: Any,
    *,
    trials: int | None = None,
    options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> TuningRun:
    """Tune one TIR workload (an IRModule with a ``main`` PrimFunc) for ``device`` (the CPU or a
    CUDA GPU) and store the result."""
    resolved = Options.resolve(with_budget(options, trials=trials, default_trials=DEFAULT_TRIALS))
    target = detect_target(resolved, torch.device(device))
    database = tuning_database(resolved, target)
    return tune_modules(
        [],
        target.target,
        target.key,
        resolved,
        database,
        tasks=[Task("main", "", mod, 1, 1.0)],
        hardware=gpu_hardware(target.gpu) if target.gpu is not None else None,
    )
