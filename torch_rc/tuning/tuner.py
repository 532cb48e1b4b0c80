"""Tune one TIR workload: MCTS with a proposer, or MetaSchedule's evolutionary search (baseline).

Both methods use the same design space, the same :class:`~torch_rc.tuning.measure.Measurer` (build
in-process, verify against the untuned function, time) and the same XGBoost cost model
configuration, so their sample counts and latencies compare. The sample count is the number of
real measurements. Every run returns a :class:`TuneResult` with the best-latency-vs-samples
curve, the best state's transformation path (with each step's source and rationale) and the
proposer's accounting; Ctrl-C or the wall-clock limit end a run early and keep what it found.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch_rc.platform.hardware import AnyHardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.blocking import blocked_states, reduction_states
from torch_rc.tuning.cost_model import XGBCostModel, make_xgb_model
from torch_rc.tuning.mcts import Proposal, search
from torch_rc.tuning.measure import Measurement, Measurer
from torch_rc.tuning.remote import TrackerGone
from torch_rc.tuning.rules import RuleProposer, output_bits, rule_score
from torch_rc.tuning.space import DesignSpace, ScheduleState

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "Step", "TaskSearch", "TuneResult", "tune_workload"]

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
    rollout_depth: int = 0,
    transfer: Any = (),
    blocking: bool = False,
    handoff: int = 0,
    screen: int = 0,
    dedupe: bool = True,
) -> TuneResult:
    """Tune ``space``'s workload with ``trials`` real measurements (one :class:`TaskSearch`
    run to the end).

    Raises:
        ValueError: Unknown ``method``, or ``mcts`` without a proposer.
    """
    task = TaskSearch(
        space,
        measurer,
        method=method,
        proposer=proposer,
        hardware=hardware,
        seed=seed,
        progress=progress,
        branching=branching,
        exploration=exploration,
        context_depth=context_depth,
        warmup=warmup,
        rollout_depth=rollout_depth,
        transfer=transfer,
        blocking=blocking,
        handoff=handoff,
        screen=screen,
        dedupe=dedupe,
    )
    deadline = time.monotonic() + time_limit_s if time_limit_s else None
    task.step(trials, deadline)
    return task.finish()


class TaskSearch:
    """A search over one workload that can be resumed: the task scheduler of a tuning session
    gives it rounds of samples (:meth:`step`) and reads its best so far in between.

    MCTS rounds restart the tree from the best state found so far, keeping the cost model, the
    measured states (never measured twice) and the random generator: an iterated search whose
    statistics stay grounded in real measurements. The evolutionary baseline keeps
    MetaSchedule's search strategy and continues it.

    With ``handoff`` > 0, an MCTS search that has gone ``handoff`` samples without a new best
    hands the rest of its samples to MetaSchedule's evolutionary search, seeded with everything
    the tree measured: the records fill its database (its initial population draws the best of
    them), they train its cost model, and states the tree measured are never measured again. The
    tree finds good schedules in few samples; the evolution's population screens thousands of
    mutations of them per measured batch, which is what keeps improving at larger budgets.

    With ``screen`` > 0, each MCTS measurement batch is preceded by population screening
    (:func:`torch_rc.tuning.mcts.search`): ``screen`` random walks of the built-in moves from the
    fastest measured states, scored by the cost model; the best-predicted ones that are legal and
    redo no reduction join the tree.

    MCTS spends one sample per program, not per state: a state whose scheduled module is
    structurally identical to one measured before (different decisions can make one program)
    takes that latency without a sample (``stats["reused"]`` counts them). ``dedupe=False``
    measures every state (the benchmark's ablation).

    Raises:
        ValueError: Unknown ``method``, ``mcts`` without a proposer and hardware, or a negative
            ``handoff`` or ``screen``.
    """

    def __init__(
        self,
        space: DesignSpace,
        measurer: Measurer,
        *,
        method: str = "mcts",
        proposer: Any = None,
        hardware: AnyHardware | None = None,
        seed: int = 0,
        progress: Progress | None = None,
        branching: int = 2,
        exploration: float = math.sqrt(2.0),
        context_depth: int = 2,
        warmup: int = 8,
        rollout_depth: int = 0,
        transfer: Any = (),
        blocking: bool = False,
        handoff: int = 0,
        screen: int = 0,
        dedupe: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if method == "mcts" and (proposer is None or hardware is None):
            raise ValueError("method 'mcts' needs a proposer and the hardware description")
        label = getattr(proposer, "label", "metaschedule") if method == "mcts" else "metaschedule"
        self.result = TuneResult(method, label)
        self.space, self.measurer, self.method = space, measurer, method
        self.proposer, self.hardware, self.seed = proposer, hardware, seed
        self.branching, self.exploration = branching, exploration
        self.context_depth, self.warmup = context_depth, warmup
        self.rollout_depth = rollout_depth
        if screen < 0:
            raise ValueError(f"screen must be >= 0 (0: none), got {screen}")
        self.screen = screen if method == "mcts" else 0
        self.dedupe = dedupe
        if handoff < 0:
            raise ValueError(f"handoff must be >= 0 (0: never), got {handoff}")
        self.handoff = handoff if method == "mcts" else 0
        self._handed_off = False
        # Starting points adapted from tuned workloads (torch_rc.tuning.transfer), measured first.
        self._transfer = [s for s in transfer if space.legal(s)]
        if self._transfer:
            self.result.stats["transferred"] = len(self._transfer)
        # Tiles derived from the machine (torch_rc.tuning.blocking), also measured first:
        # register/cache blocking for tiled kernels, vector row reductions for the others.
        self._blocked = (
            blocked_states(space, hardware, output_bits(space))
            + reduction_states(space, hardware, output_bits(space))
            if blocking and method == "mcts" and hardware is not None
            else []
        )
        if self._blocked:
            self.result.stats["blocked"] = len(self._blocked)
        self._rollouts = (
            RuleProposer(space, hardware)
            if method == "mcts" and hardware is not None and (rollout_depth > 0 or self.screen > 0)
            else None
        )
        self.tracker = _Tracker(self.result, progress, None)
        self.rng = random.Random(seed)
        self._known: dict[ScheduleState, float | None] = {}
        # Latencies by program (structural hash of the scheduled module) the tree measured: states
        # that make one of them (in the tree, or the evolution after a hand-off) spend no sample.
        self._programs: dict[Any, float | None] = {}
        self._best_state: ScheduleState | None = None
        self._cost_model: Any = None
        self._evolution: Any = None
        self._seconds = 0.0

    @property
    def samples(self) -> int:
        return self.result.samples

    @property
    def best_latency_s(self) -> float | None:
        return self.result.best_latency_s

    def step(self, trials: int, deadline: float | None = None) -> int:
        """Spend up to ``trials`` more samples (fewer if the space is used up, the deadline
        passes or Ctrl-C); return how many were spent."""
        before = self.result.samples
        self.tracker.deadline = deadline
        if hasattr(self.proposer, "set_deadline"):
            self.proposer.set_deadline(deadline)  # the time limit holds inside LLM calls too
        start = time.monotonic()
        try:
            if self.method == "mcts" and not self._handed_off:
                self._mcts_round(trials)
            left = before + trials - self.result.samples
            if self.method == "evolutionary" and left > 0:
                self._evolutionary_round(left)
            elif self._handed_off and left > 0:
                self._evolve_after_handoff(before + trials)
        except KeyboardInterrupt:
            self.result.interrupted = True
        except TrackerGone:  # the fleet is gone: keep what was measured, let the run end
            self.result.interrupted = True
            self._seconds += time.monotonic() - start
            raise
        if self.tracker.out_of_time():
            self.result.interrupted = True
        self._seconds += time.monotonic() - start
        return self.result.samples - before

    def finish(self) -> TuneResult:
        """The result so far, with the proposer's accounting (ends the evolutionary strategy)."""
        if self._evolution is not None:
            self._evolution[0].post_tuning()
            self._evolution = None
        self.result.seconds = self._seconds
        if self.proposer is not None and hasattr(self.proposer, "stats"):
            self.result.stats = {**dict(self.proposer.stats()), **self.result.stats}
        return self.result

    def _evolve_after_handoff(self, goal: int) -> None:
        """The evolution's share of a handed-off search; should TVM fail in it, the tree goes on
        (the failure is logged and kept in ``stats["handoff_failed"]``)."""
        try:
            self._evolutionary_round(goal - self.result.samples)
        except (KeyboardInterrupt, TrackerGone):
            raise
        except Exception as exc:  # a TVM error inside MetaSchedule: keep tuning with the tree
            message = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1][:300]}"
            logger.warning(
                "torch_rc: evolution after the hand-off failed (%s); MCTS goes on", message
            )
            self.result.stats["handoff_failed"] = message
            self._handed_off, self.handoff, self._evolution = False, 0, None
            if goal > self.result.samples:
                self._mcts_round(goal - self.result.samples)

    def _stalled(self) -> bool:
        """True (and the search hands off) once ``handoff`` samples brought no new best."""
        if self.handoff <= 0 or self._handed_off:
            return self._handed_off
        best = self.result.best_latency_s
        if best is None:
            since = self.result.samples
        else:
            since = self.result.samples - next(n for n, lat in self.result.curve if lat <= best)
        if since >= self.handoff:
            self._handed_off = True
            self.result.stats["handoff_at"] = self.result.samples
        return self._handed_off

    # -------------------------------------------------------------------------------- MCTS
    def _mcts_round(self, trials: int) -> None:
        space, measurer, tracker = self.space, self.measurer, self.tracker
        if self._cost_model is None:
            self._cost_model = XGBCostModel(
                space, self.hardware, warmup=self.warmup, seed=43 + self.seed
            )
            for candidate in (self.proposer, getattr(self.proposer, "fallback", None)):
                if candidate is not None and hasattr(candidate, "model"):
                    candidate.model = self._cost_model  # ranks moves once trained

        def measure(state: ScheduleState) -> float | None:
            sch = space.schedule(state)
            if sch is None:
                measurer.count += 1
                tracker.add(Measurement(None, error="illegal schedule"), None)
                return None
            measurement = measurer.measure(space.mod, sch.mod)
            tracker.add(measurement, sch.trace)
            return measurement.latency_s if measurement.ok else None

        def measure_many(states: Sequence[ScheduleState]) -> list[float | None]:
            """A batch at once, over a fleet's servers (same accounting as ``measure``)."""
            schedules = [space.schedule(state) for state in states]
            built = [sch for sch in schedules if sch is not None]
            measured = iter(measurer.measure_many(space.mod, [sch.mod for sch in built]))
            latencies: list[float | None] = []
            for sch in schedules:
                if sch is None:
                    measurer.count += 1
                    tracker.add(Measurement(None, error="illegal schedule"), None)
                    latencies.append(None)
                    continue
                measurement = next(measured)
                tracker.add(measurement, sch.trace)
                latencies.append(measurement.latency_s if measurement.ok else None)
            return latencies

        parallel = getattr(measurer, "parallelism", 1) > 1
        root = self._best_state or _pick_root(space, self.hardware, self.rng)
        # Plain states are labelled as transferred by the search; blocked ones name themselves.
        extra: list[Any] = list(self._transfer) + [
            Proposal("blocking", state, "tiles derived from the machine", "blocking")
            for state in self._blocked
        ]
        self._transfer, self._blocked = [], []
        prefix = list(self.result.steps)
        outcome = search(
            root,
            proposer=self.proposer,
            cost_model=self._cost_model,
            measure=measure,
            budget=trials,
            rng=self.rng,
            exploration=self.exploration,
            branching=self.branching,
            context_depth=self.context_depth,
            actions=space.actions,
            should_stop=lambda: tracker.out_of_time() or self._stalled(),
            select=getattr(self.proposer, "select", None),
            known=self._known,
            rollout=self._rollouts.neighbours if self._rollouts is not None else None,
            rollout_depth=self.rollout_depth,
            screen=self.screen if self._rollouts is not None else 0,
            offerable=self._rollouts.offerable if self._rollouts is not None else None,
            extra_roots=extra,
            measure_many=measure_many if parallel else None,
            measure_batch=max(2, getattr(measurer, "parallelism", 1)),
            program=self._program if self.dedupe else None,
            programs=self._programs,
        )
        self.result.stats["screened"] = self.result.stats.get("screened", 0) + outcome.screened
        if outcome.reused:
            self.result.stats["reused"] = self.result.stats.get("reused", 0) + outcome.reused
        counts = _count_sources(outcome.improvements)
        previous = self.result.stats.get("improvements_by_source", {})
        self.result.stats["improvements_by_source"] = {
            k: previous.get(k, 0) + counts.get(k, 0) for k in {*previous, *counts}
        }
        best = outcome.best
        if best is not None and best.latency is not None and best.state != self._best_state:
            latest = self.result.best_latency_s
            if latest is None or best.latency <= latest:
                path = best.path()
                self.result.steps = prefix + [
                    Step(node.action, node.source, node.rationale, node.latency)
                    for node in path[1:]
                ]
                self._best_state = best.state

    def _program(self, state: ScheduleState) -> int | None:
        """The program ``state`` makes (structural hash of its scheduled module; None: illegal)."""
        sch = self.space.schedule(state)
        return None if sch is None else _structural_hash(sch.mod)

    # ------------------------------------------------------------------------ evolutionary
    def _evolutionary_round(self, trials: int) -> None:
        api = tvm_api()
        ms = api.s_tir.meta_schedule
        space, measurer, tracker = self.space, self.measurer, self.tracker
        if self._evolution is None:
            context = ms.TuneContext(
                mod=space.mod,
                target=space.target,
                space_generator="post-order-apply",
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=256),
                task_name="baseline",
                rand_state=1 + self.seed,
                num_threads=1,
            )
            for postproc in context.space_generator.postprocs:
                postproc._initialize_with_tune_context(context)
            database = ms.database.MemoryDatabase()
            workload = database.commit_workload(space.mod)
            cost_model = make_xgb_model(warmup=self.warmup, seed=43 + self.seed)
            args_info = ms.arg_info.ArgInfo.from_prim_func(space.mod["main"])
            if self._handed_off:
                self._seed_evolution(context, database, workload, cost_model, args_info)
            strategy = context.search_strategy
            strategy.pre_tuning(
                max_trials=1 << 30,  # rounds are bounded by step(); the strategy never stops us
                num_trials_per_iter=8,
                design_spaces=context.space_generator.generate_design_space(space.mod),
                database=database,
                cost_model=cost_model,
            )
            self._evolution = (strategy, context, database, workload, cost_model, args_info)
        strategy, context, database, workload, cost_model, args_info = self._evolution
        goal = self.result.samples + trials
        while self.result.samples < goal and not tracker.out_of_time():
            candidates = strategy.generate_measure_candidates()
            if not candidates:
                break
            fresh: list[Any] = []
            reused: dict[int, float | None] = {}
            for index, candidate in enumerate(candidates):
                key = _structural_hash(candidate.sch.mod) if self._programs else None
                if key is not None and key in self._programs:
                    reused[index] = self._programs[key]  # measured by the tree: no sample
                elif len(fresh) < goal - self.result.samples:
                    fresh.append(candidate)
            # The tree's measurements (already records since the hand-off) go to the strategy
            # and the cost model again, as results of its own candidates.
            candidates = [c for i, c in enumerate(candidates) if i in reused] + fresh
            results = [
                ms.runner.RunnerResult(
                    None if lat is None else [lat], "failed" if lat is None else None
                )
                for lat in (reused[i] for i in sorted(reused))
            ]
            before = self.result.best_latency_s
            measurements = measurer.measure_many(space.mod, [c.sch.mod for c in fresh])
            for candidate, measurement in zip(fresh, measurements, strict=True):
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
            best = self.result.best_latency_s
            if self._handed_off and best is not None and (before is None or best < before):
                self._note_evolved(best)

    def _seed_evolution(
        self, context: Any, database: Any, workload: Any, cost_model: Any, args_info: Any
    ) -> None:
        """Give the evolution what the tree measured: database records and cost-model data."""
        ms = tvm_api().s_tir.meta_schedule
        candidates, results = [], []
        for state, latency in self._known.items():
            sch = self.space.schedule(state)
            if sch is None:
                continue
            # Filled by the tree already, unless it ran with ``dedupe=False``.
            self._programs.setdefault(_structural_hash(sch.mod), latency)
            candidates.append(ms.MeasureCandidate(sch, args_info))
            ok = latency is not None and math.isfinite(latency) and latency > 0
            results.append(
                ms.runner.RunnerResult([latency] if ok else None, None if ok else "failed")
            )
            if ok:
                # The state's trace before postprocessing: the evolution replays records on the
                # bare workload and postprocesses them itself (``sch.trace`` holds the
                # postprocessors' instructions without the marker that strips them, and fails to
                # replay on row reductions).
                database.commit_tuning_record(
                    ms.database.TuningRecord(
                        self.space.trace(state), workload, [latency], self.space.target, args_info
                    )
                )
        if candidates:
            cost_model.update(context, candidates, results)
        self.result.stats["handoff_seeded"] = len(candidates)

    def _note_evolved(self, latency: float) -> None:
        """The best now comes from the evolution: its path is the tree's best, then evolution."""
        steps = [s for s in self.result.steps if s.source != "evolutionary"]
        rationale = "MetaSchedule evolution seeded with the tree's measured schedules"
        self.result.steps = steps + [Step("evolve", "evolutionary", rationale, latency)]
        counts = self.result.stats.setdefault("improvements_by_source", {})
        counts["evolutionary"] = counts.get("evolutionary", 0) + 1


def _structural_hash(mod: Any) -> int:
    import tvm_ffi  # loaded with TVM by then (tvm_api() imported it)

    return int(tvm_ffi.structural_hash(mod))


def _count_sources(improvements: list[tuple[int, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, source in improvements:
        counts[source] = counts.get(source, 0) + 1
    return counts


def _pick_root(
    space: DesignSpace, hardware: AnyHardware, rng: random.Random, samples: int = 64
) -> ScheduleState:
    """The start of the search: the best of ``samples`` random states under the hardware rules
    (random walks of TVM's own mutators from each sketch; no measurement is spent on them),
    skipping states that redo a reduction (``DesignSpace.recomputes``) while there are others."""
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
    sound = (s for s in ranked if space.legal(s) and not space.recomputes(s))
    return next(sound, next((s for s in ranked if space.legal(s)), states[0]))
