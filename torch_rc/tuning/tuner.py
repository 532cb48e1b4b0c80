"""Tune one TIR workload: MCTS with a proposer, or MetaSchedule's evolutionary search (baseline).

Both methods use the same design space, the same :class:`~torch_rc.tuning.measure.Measurer` (build
in-process, verify against the untuned function, time) and the same XGBoost cost model
configuration, so their sample counts and latencies compare. The sample count is the number of
real measurements. Every run returns a :class:`TuneResult` with the best-latency-vs-samples
curve, the best state's transformation path (with each step's source and rationale) and the
proposer's accounting; Ctrl-C or the wall-clock limit end a run early and keep what it found.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch_rc.tuning.cost_model import XGBCostModel, make_xgb_model
from torch_rc.tuning.hardware import AnyHardware
from torch_rc.tuning.mcts import search
from torch_rc.tuning.measure import Measurement, Measurer
from torch_rc.tuning.space import DesignSpace, ScheduleState
from torch_rc.tvm_shim import tvm_api

__all__ = ["Step", "TuneResult", "tune_workload", "METHODS"]

METHODS = ("mcts", "evolutionary")


@dataclass(frozen=True)
class Step:
    """One transformation on the path from the root to the best state."""

    action: str
    source: str
    rationale: str
    latency_s: float | None


@dataclass
class TuneResult:
    """The outcome of tuning one workload.

    Attributes:
        method: ``mcts`` or ``evolutionary``.
        proposer: Who proposed (``builtin``, ``llm:<model>``, ``metaschedule``).
        samples: Real measurements made.
        best_latency_s: Best verified latency (None if nothing passed).
        best_trace: The best schedule's trace (a MetaSchedule ``Trace``), or None.
        best_measurement: Its measurement (with the correctness check).
        untuned_latency_s: Latency of the unscheduled function (the paper's baseline), if measured.
        curve: (samples, best latency so far) after each measurement that had a best.
        steps: The best state's path (MCTS only).
        stats: Proposer accounting (calls, fallbacks, tokens, ...).
        interrupted: Ctrl-C or the time limit ended the run early.
        seconds: Wall time of the run.
    """

    method: str
    proposer: str
    samples: int = 0
    best_latency_s: float | None = None
    best_trace: Any = None
    best_measurement: Measurement | None = None
    untuned_latency_s: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0

    def best_after(self, samples: int) -> float | None:
        """Best latency within the first ``samples`` measurements."""
        best = None
        for n, latency in self.curve:
            if n <= samples:
                best = latency
        return best

    def samples_to_reach(self, latency: float) -> int | None:
        for n, best in self.curve:
            if best <= latency:
                return n
        return None


Progress = Callable[[int, float | None], None]


class _Tracker:
    """Counts samples, keeps the best verified measurement and the curve, reports progress."""

    def __init__(
        self, result: TuneResult, progress: Progress | None, deadline: float | None
    ) -> None:
        self.result = result
        self.progress = progress
        self.deadline = deadline

    def add(self, measurement: Measurement, trace: Any) -> None:
        result = self.result
        result.samples += 1
        if measurement.ok and measurement.latency_s is not None:
            if result.best_latency_s is None or measurement.latency_s < result.best_latency_s:
                result.best_latency_s = measurement.latency_s
                result.best_trace = trace
                result.best_measurement = measurement
        if result.best_latency_s is not None:
            result.curve.append((result.samples, result.best_latency_s))
        if self.progress is not None:
            self.progress(result.samples, result.best_latency_s)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def measure_untuned(space: DesignSpace, measurer: Measurer) -> float | None:
    """Latency of the workload without any schedule (the paper's 'untuned' baseline)."""
    result = measurer.measure(space.mod, space.mod, count=False)
    return result.latency_s


def tune_workload(
    space: DesignSpace,
    measurer: Measurer,
    *,
    method: str = "mcts",
    proposer: Any = None,
    hardware: AnyHardware | None = None,
    trials: int = 64,
    seed: int = 0,
    time_limit_s: float | None = None,
    progress: Progress | None = None,
    branching: int = 2,
    exploration: float = math.sqrt(2.0),
    context_depth: int = 2,
    warmup: int = 8,
) -> TuneResult:
    """Tune ``space``'s workload with ``trials`` real measurements.

    Raises:
        ValueError: Unknown ``method``, or ``mcts`` without a proposer.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    label = getattr(proposer, "label", "metaschedule") if method == "mcts" else "metaschedule"
    result = TuneResult(method, label)
    deadline = time.monotonic() + time_limit_s if time_limit_s else None
    tracker = _Tracker(result, progress, deadline)
    start = time.monotonic()
    try:
        if method == "mcts":
            if proposer is None or hardware is None:
                raise ValueError("method 'mcts' needs a proposer and the hardware description")
            _run_mcts(
                space,
                measurer,
                proposer,
                hardware,
                trials,
                seed,
                tracker,
                branching,
                exploration,
                context_depth,
                warmup,
            )
        else:
            _run_evolutionary(space, measurer, trials, seed, tracker, warmup)
    except KeyboardInterrupt:
        result.interrupted = True
    if tracker.out_of_time():
        result.interrupted = True
    result.seconds = time.monotonic() - start
    if proposer is not None and hasattr(proposer, "stats"):
        result.stats = {**dict(proposer.stats()), **result.stats}
    return result


def _run_mcts(
    space: DesignSpace,
    measurer: Measurer,
    proposer: Any,
    hardware: AnyHardware,
    trials: int,
    seed: int,
    tracker: _Tracker,
    branching: int,
    exploration: float,
    context_depth: int,
    warmup: int,
) -> None:
    cost_model = XGBCostModel(space, hardware, warmup=warmup, seed=43 + seed)
    for candidate in (proposer, getattr(proposer, "fallback", None)):
        if candidate is not None and hasattr(candidate, "model"):
            candidate.model = cost_model  # the rules rank their moves with it once it is trained

    def measure(state: ScheduleState) -> float | None:
        sch = space.schedule(state)
        if sch is None:
            measurer.count += 1
            tracker.add(Measurement(None, error="illegal schedule"), None)
            return None
        measurement = measurer.measure(space.mod, sch.mod)
        tracker.add(measurement, sch.trace)
        return measurement.latency_s if measurement.ok else None

    rng = random.Random(seed)
    root = _pick_root(space, hardware, rng)
    outcome = search(
        root,
        proposer=proposer,
        cost_model=cost_model,
        measure=measure,
        budget=trials,
        rng=rng,
        exploration=exploration,
        branching=branching,
        context_depth=context_depth,
        actions=space.actions,
        should_stop=tracker.out_of_time,
        select=getattr(proposer, "select", None),
    )
    tracker.result.stats["improvements_by_source"] = _count_sources(outcome.improvements)
    if outcome.best is not None:
        path = outcome.best.path()
        tracker.result.steps = [
            Step(node.action, node.source, node.rationale, node.latency) for node in path[1:]
        ]


def _count_sources(improvements: list[tuple[int, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, source in improvements:
        counts[source] = counts.get(source, 0) + 1
    return counts


def _pick_root(
    space: DesignSpace, hardware: AnyHardware, rng: random.Random, samples: int = 64
) -> ScheduleState:
    """The start of the search: the best of ``samples`` random states under the hardware rules
    (random walks of TVM's own mutators from each sketch; no measurement is spent on them)."""
    from torch_rc.tuning.rules import rule_score

    states = space.initial_states()
    actions = list(space.mutator_probs)
    weights = list(space.mutator_probs.values())
    candidates = list(states)
    for _ in range(samples):
        state = states[rng.randrange(len(states))]
        for _ in range(rng.randint(1, 4)):
            if not actions:
                break
            action = rng.choices(actions, weights=weights)[0]
            state = space.mutate(state, action, rng.randrange(1, 2**31 - 1)) or state
        candidates.append(state)
    ranked = sorted(set(candidates), key=lambda s: rule_score(space, s, hardware)[0], reverse=True)
    return next((s for s in ranked if space.legal(s)), states[0])


def _run_evolutionary(
    space: DesignSpace, measurer: Measurer, trials: int, seed: int, tracker: _Tracker, warmup: int
) -> None:
    api = tvm_api()
    ms = api.s_tir.meta_schedule
    context = ms.TuneContext(
        mod=space.mod,
        target=space.target,
        space_generator="post-order-apply",
        search_strategy=ms.search_strategy.EvolutionarySearch(population_size=256),
        task_name="baseline",
        rand_state=1 + seed,
        num_threads=1,
    )
    for postproc in context.space_generator.postprocs:
        postproc._initialize_with_tune_context(context)
    database = ms.database.MemoryDatabase()
    workload = database.commit_workload(space.mod)
    cost_model = make_xgb_model(warmup=warmup, seed=43 + seed)
    strategy = context.search_strategy
    batch = 8
    strategy.pre_tuning(
        max_trials=trials,
        num_trials_per_iter=batch,
        design_spaces=context.space_generator.generate_design_space(space.mod),
        database=database,
        cost_model=cost_model,
    )
    args_info = ms.arg_info.ArgInfo.from_prim_func(space.mod["main"])
    try:
        while tracker.result.samples < trials and not tracker.out_of_time():
            candidates = strategy.generate_measure_candidates()
            if not candidates:
                break
            candidates = list(candidates)[: trials - tracker.result.samples]
            results = []
            for candidate in candidates:
                measurement = measurer.measure(space.mod, candidate.sch.mod)
                tracker.add(measurement, candidate.sch.trace)
                ok = measurement.ok and measurement.latency_s is not None
                run_secs = [measurement.latency_s] if ok else None
                results.append(
                    ms.runner.RunnerResult(
                        run_secs, None if ok else (measurement.error or "failed")
                    )
                )
                if ok:
                    database.commit_tuning_record(
                        ms.database.TuningRecord(
                            candidate.sch.trace, workload, run_secs, space.target, args_info
                        )
                    )
            cost_model.update(context, candidates, results)
            strategy.notify_runner_results(candidates, results)
    finally:
        strategy.post_tuning()
