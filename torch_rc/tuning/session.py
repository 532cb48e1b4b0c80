"""Tune the kernels of Relax modules within a budget, store verified winners, log the run.

This is what ``torch.compile(..., options={"trials": N})`` and ``torch_rc.tune`` call. The
modules are legalized and fused as the build will do it; MetaSchedule's task extraction gives the
fused TIR kernels and how often each runs. Kernels that already have a verified record in the
cache are skipped (tuning is a one-time cost). The ``trials`` budget is split across the rest by
estimated FLOPs x weight (kernels under 2% of the work keep default schedules), each is tuned
(MCTS with the LLM or built-in proposer, or the evolutionary baseline), and its best schedule —
verified against the untuned kernel — is written to the store, where the build picks it up.
Every run is logged as JSON under ``<cache_dir>/runs/`` for ``torch-rc report``. Ctrl-C or the
time limits stop tuning and keep everything tuned so far.

On a fleet (README "Tuning on a fleet"): with ``rpc_tracker`` the candidates are checked and timed
on an RPC tracker's servers (:mod:`torch_rc.tuning.remote`), and a tracker that goes away ends the
run like Ctrl-C; with ``tune_drivers`` > 1 this process tunes only the kernels whose workload key
hashes to ``tune_driver_index`` (:func:`shard_of`), and skips any another process stored meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch_rc.cache.keys import workload_key
from torch_rc.options import Options
from torch_rc.passes.build import legalize_and_fuse_passes, per_call_module
from torch_rc.passes.schedule import default_schedule
from torch_rc.platform.hardware import AnyHardware, host_hardware
from torch_rc.platform.tvm_shim import prepare_meta_schedule, tvm_api, tvm_warnings_once
from torch_rc.tuning.llm_client import LLMClient, LLMConfig
from torch_rc.tuning.llm_proposer import LLMProposer
from torch_rc.tuning.measure import Measurement, Measurer
from torch_rc.tuning.pool import PoolProposer, parse_pool
from torch_rc.tuning.progress import TuningDisplay
from torch_rc.tuning.remote import RemoteMeasurer, TrackerGone
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.scheduler import Slot, TaskScheduler
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.transfer import transferred_states
from torch_rc.tuning.tuner import TaskSearch, TuneResult

__all__ = ["Task", "TuningRun", "extract_tasks", "tune_modules", "runs_dir"]

logger = logging.getLogger(__name__)


class ProcessClock:
    """Tuning seconds spent in this process. ``tune_total_s`` caps all tuning a process does
    (every graph Dynamo hands the backend, every warm-up bucket), so this one count is per process
    on purpose; it is the module's only mutable state, and thread-safe."""

    def __init__(self) -> None:
        self._spent_s = 0.0
        self._lock = threading.Lock()

    def left_s(self, total_s: float) -> float:
        """Seconds left of a ``total_s`` cap (inf without one)."""
        if not total_s:
            return math.inf
        with self._lock:
            return max(total_s - self._spent_s, 0.0)

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._spent_s += seconds


PROCESS_CLOCK = ProcessClock()


@dataclass
class Task:
    """One distinct kernel to tune."""

    name: str
    key: str
    mod: Any
    weight: int
    flops: float
    trials: int = 0
    status: str = (
        "pending"  # pending | cached | other-driver | skipped | tuned | kept-default
        # | kept-unscheduled | failed | interrupted
    )
    default_s: float | None = None  # latency with torch_rc's default schedule (the bar to beat)
    # That measurement (with its correctness check) and the default schedule's trace, checked to
    # replay: stored as the kernel's record when tuning cannot beat it (status kept-default).
    default: Measurement | None = None
    default_trace: Any = None
    # The unscheduled kernel, measured when one cold run of it showed it could beat the default
    # schedule, and kept only if it did (a bar to beat too; kept if tuning cannot beat it).
    unscheduled: Measurement | None = None
    result: TuneResult | None = None
    error: str = ""


@dataclass
class TuningRun:
    """A tuning run over one or more modules (logged to JSON)."""

    method: str
    proposer: str
    trials: int
    tasks: list[Task] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    log_path: str = ""
    hardware: str = ""
    projected: dict[str, float] = field(default_factory=dict)  # kernel time per inference
    measuring: dict[str, Any] = field(default_factory=dict)  # where and how long (RPC stats)
    stopped: str = ""  # why the run ended early, when not Ctrl-C or a limit (tracker gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "created": time.time(),
            "method": self.method,
            "proposer": self.proposer,
            "trials": self.trials,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 2),
            "hardware": self.hardware or host_hardware().describe(),
            "projected": self.projected,
            "measuring": self.measuring,
            "stopped": self.stopped,
            "tasks": [
                {
                    "name": t.name,
                    "key": t.key,
                    "weight": t.weight,
                    "flops": t.flops,
                    "trials": t.trials,
                    "status": t.status,
                    "default_s": t.default_s,
                    "error": t.error,
                    **(
                        {
                            "samples": t.result.samples,
                            "best_s": t.result.best_latency_s,
                            "untuned_s": t.result.untuned_latency_s,
                            "curve": t.result.curve,
                            "steps": [vars(step) for step in t.result.steps],
                            "stats": t.result.stats,
                            "proposer": t.result.proposer,
                        }
                        if t.result is not None
                        else {}
                    ),
                }
                for t in self.tasks
            ],
        }


def runs_dir(options: Options) -> Path:
    return Path(options.store_path()).parent / "runs"


def _legalized(mod: Any, target: Any) -> Any:
    """The fused kernels the build runs on every call (weight transforms, which run once per
    weights, are lifted out and not tuned)."""
    with target:
        return tvm_api().tvm.transform.Sequential(legalize_and_fuse_passes(target))(
            per_call_module(mod)
        )


def extract_tasks(mods: list[Any], target: Any) -> list[Task]:
    """The distinct fused TIR kernels of Relax modules, with weights and FLOP estimates."""
    from tvm.s_tir.analysis import estimate_tir_flops

    prepare_meta_schedule(str(target.kind.name))
    ms = tvm_api().s_tir.meta_schedule
    tasks: dict[str, Task] = {}
    for mod in mods:
        with tvm_warnings_once():
            extracted_tasks = ms.relax_integration.extract_tasks(_legalized(mod, target), target)
        for extracted in extracted_tasks:
            tir = extracted.dispatched[0]
            key = workload_key(tir["main"])
            if key in tasks:
                tasks[key].weight += int(extracted.weight)
                continue
            try:
                flops = float(estimate_tir_flops(tir))
            except Exception:  # estimation fails on some data-dependent kernels: treat as small
                flops = 0.0
            tasks[key] = Task(str(extracted.task_name), key, tir, int(extracted.weight), flops)
    return list(tasks.values())


def _proposer(space: DesignSpace, options: Options, hardware: Any) -> Any:
    rules = RuleProposer(space, hardware)
    if not options.llm_enabled:
        return rules
    if options.llm_models:
        models = parse_pool(
            options.llm_models, timeout_s=options.llm_timeout_s, mode=options.llm_mode
        )
        return PoolProposer(
            space,
            hardware,
            models,
            escalate_every=options.llm_escalate_every,
            lam=options.llm_pool_lambda,
        )
    config = LLMConfig(
        base_url=options.llm_base_url,
        model=options.llm_model or "gpt-4o-mini",
        api_key=options.llm_api_key,
        timeout_s=options.llm_timeout_s,
        mode=options.llm_mode,
    )
    return LLMProposer(space, hardware, LLMClient(config), fallback=rules)


def tune_modules(
    mods: list[Any],
    target: Any,
    target_key: str,
    options: Options,
    database: Any,
    *,
    tasks: list[Task] | None = None,
    hardware: AnyHardware | None = None,
) -> TuningRun:
    """Tune the kernels of ``mods`` (Relax) for ``target``; see the module docstring.

    Args:
        database: The store-backed MetaSchedule database (``torch_rc.cache.ms_database``);
            verified winners are promoted into it. None tunes without storing.
        tasks: TIR workloads to tune instead of (or as well as) the kernels of ``mods``.
        hardware: What the proposers are told about the machine (default: this host's CPU;
            CUDA targets pass their GPU's).
    """
    # The backend runs inside Dynamo's fake-tensor mode; measuring needs real tensors.
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        hardware = hardware or host_hardware(options.num_threads or None)
        return _tune_modules(mods, target, target_key, options, database, tasks or [], hardware)


def _tune_modules(
    mods: list[Any],
    target: Any,
    target_key: str,
    options: Options,
    database: Any,
    extra: list[Task],
    hardware: AnyHardware,
) -> TuningRun:
    budget = options.trials
    proposer_label = (
        "llm:" + (options.llm_model or "gpt-4o-mini") if options.llm_enabled else "builtin"
    )
    run = TuningRun(
        options.tune_method,
        proposer_label if options.tune_method == "mcts" else "metaschedule",
        budget,
        hardware=hardware.describe(),
    )
    start = time.monotonic()
    deadline = start + options.tune_time_s if options.tune_time_s else math.inf
    deadline = min(deadline, start + PROCESS_CLOCK.left_s(options.tune_total_s))
    run.tasks = extract_tasks(mods, target) if mods else []
    for task in extra:
        from tvm.s_tir.analysis import estimate_tir_flops

        prepare_meta_schedule(str(target.kind.name))
        task.key = workload_key(task.mod["main"])
        task.flops = float(estimate_tir_flops(task.mod))
        run.tasks.append(task)
    for task in run.tasks:
        if database is not None and database.has_workload(task.mod):
            task.status = "cached"
        elif shard_of(task.key, options.tune_drivers) != options.tune_driver_index:
            task.status = "other-driver"
            task.error = (
                f"tuned by driver {shard_of(task.key, options.tune_drivers)} of "
                f"{options.tune_drivers}"
            )
    pending = [t for t in run.tasks if t.status == "pending"]
    measurer = _measurer(target, options) if pending else None
    display = TuningDisplay(options.progress and bool(pending), budget)
    profiled: list[Task] = []
    try:
        with display:
            if measurer is not None:
                profiled = _profile(pending, measurer, display, deadline)
                _schedule(
                    run, profiled, budget, deadline, options, hardware, measurer, display, database
                )
    except KeyboardInterrupt:
        run.interrupted = True
    except TrackerGone as exc:
        run.interrupted = True
        run.stopped = str(exc)
        logger.warning("torch_rc: %s", exc)
    try:
        for task in profiled:
            _conclude(task, database, target)
    except KeyboardInterrupt:
        run.interrupted = True
    if measurer is not None:
        run.measuring = measurer.summary()
        measurer.close()
    run.seconds = time.monotonic() - start
    PROCESS_CLOCK.spend(run.seconds)
    if run.interrupted:
        logger.warning(
            "torch_rc: tuning interrupted; %d kernels tuned so far are kept",
            sum(t.status in ("tuned", "interrupted") for t in run.tasks),
        )
    run.log_path = _write_log(run, options)
    return run


def shard_of(key: str, drivers: int) -> int:
    """Which of ``drivers`` tuning processes tunes the workload ``key`` (the same answer in
    every process and on every machine: a hash of the key, not Python's salted ``hash``)."""
    if drivers <= 1:
        return 0
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % drivers


def _measurer(target: Any, options: Options) -> Any:
    """Where candidates are checked and timed: this process, or an RPC tracker's servers."""
    if options.rpc_tracker:
        return RemoteMeasurer(
            target,
            tracker=options.rpc_tracker,
            key=options.rpc_key,
            timeout_s=options.rpc_timeout_s,
            retries=options.rpc_retries,
            repeats=5,
            min_repeat_ms=10,
            seed=options.tune_seed,
        )
    return Measurer(target, repeats=5, min_repeat_ms=10, seed=options.tune_seed)


def _profile(
    tasks: list[Task], measurer: Measurer, display: TuningDisplay, deadline: float
) -> list[Task]:
    """Each task's latency with the default schedule (its time per inference is weight x that):
    what the scheduler spends the budget by. Tasks that cannot be measured keep their default."""
    display.phase("profiling kernels", len(tasks))
    profiled = []
    for done, task in enumerate(tasks, start=1):
        if time.monotonic() > deadline:
            task.status, task.error = "skipped", "time limit reached"
            continue
        task.default, task.default_trace = _measure_default(task.mod, measurer)
        task.default_s = task.default.latency_s if task.default is not None else None
        if task.default_s is None:
            task.status, task.error = "skipped", "the default schedule could not be measured"
        else:
            task.unscheduled = _unscheduled(task.mod, task.default_s, measurer)
            profiled.append(task)
        display.advance(done)
    return profiled


def _schedule(
    run: TuningRun,
    tasks: list[Task],
    budget: int,
    deadline: float,
    options: Options,
    hardware: AnyHardware,
    measurer: Measurer,
    display: TuningDisplay,
    database: Any,
) -> None:
    """Hand the budget out in rounds, by :class:`TaskScheduler`, to resumable searches."""
    slots = [Slot(float(t.weight), float(t.default_s or 0.0)) for t in tasks]
    scheduler = TaskScheduler(slots)
    for task, slot in zip(tasks, slots, strict=True):
        if slot.done:
            task.status, task.error = "skipped", "under 1% of the kernels' time: default schedule"
    round_size = max(2, min(8, budget // 4))
    searches: dict[int, TaskSearch] = {}
    traces: list[tuple[str, str]] | None = None  # the store's records, read once per run
    spent = 0
    display.phase("tuning", budget, scheduler.projected_s())
    while spent < budget and time.monotonic() < deadline:
        index = scheduler.next_task()
        if index is None:
            break
        task = tasks[index]
        if index not in searches and database is not None and database.has_workload(task.mod):
            # Another process (a driver sharing the store) finished it meanwhile.
            task.status, task.error = "cached", "tuned by another process meanwhile"
            slots[index].done = True
            continue
        if index not in searches and traces is None:
            transfer_on = options.tune_transfer and options.tune_method == "mcts"
            traces = database.transfer_traces() if transfer_on and database is not None else []
        search = searches.get(index) or _start_search(
            task, options, hardware, measurer, [t for t in traces or [] if t[0] != task.key]
        )
        if search is None:
            slots[index].done = True
            continue
        searches[index] = search
        try:
            got = search.step(min(round_size, budget - spent), deadline)
        except TrackerGone as exc:  # the fleet is gone: keep every search's best so far
            task.trials = search.samples
            run.interrupted, run.stopped = True, str(exc)
            logger.warning("torch_rc: %s", exc)
            break
        spent += got
        task.trials = search.samples
        scheduler.record(index, search.best_latency_s, got)
        display.round(task.name, spent, scheduler.projected_s(), search.best_latency_s)
        if search.result.interrupted and time.monotonic() < deadline:
            run.interrupted = True  # Ctrl-C, not the time limit: stop tuning
            break
    for index, search in searches.items():
        tasks[index].result = search.finish()
    why = (
        "gains flattened"
        if scheduler.flattened()
        else "time limit reached"
        if time.monotonic() >= deadline
        else "budget spent elsewhere"
    )
    for index, task in enumerate(tasks):
        if index not in searches and task.status == "pending":
            task.status, task.error = "skipped", f"{why}: default schedule"
    run.projected = {"default_s": scheduler.projections[0], "tuned_s": scheduler.projected_s()}


def _start_search(
    task: Task,
    options: Options,
    hardware: AnyHardware,
    measurer: Measurer,
    traces: list[tuple[str, str]],
) -> TaskSearch | None:
    """A search for ``task``, starting also from ``traces`` (other workloads' records) adapted."""
    try:
        space = DesignSpace(task.mod, measurer.target, seed=1 + options.tune_seed)
        found = transferred_states(space, traces) if traces else []
        transfer = [t.state for t in found]
        if found:
            logger.info(
                "torch_rc: %s starts from %d schedule(s) of tuned workloads (nearest %s)",
                task.name,
                len(found),
                found[0].source[:12],
            )
        return TaskSearch(
            space,
            measurer,
            transfer=transfer,
            blocking=options.tune_blocking,
            rollout_depth=options.tune_rollout_depth,
            handoff=options.tune_handoff,
            screen=options.tune_screen,
            method=options.tune_method,
            proposer=_proposer(space, options, hardware),
            hardware=hardware,
            seed=options.tune_seed,
            branching=options.tune_branching,
            context_depth=options.tune_context_depth,
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a kernel MetaSchedule cannot handle keeps its default
        task.status = "failed"
        message = str(exc).strip()
        task.error = f"{type(exc).__name__}: {message.splitlines()[-1][:200] if message else ''}"
        logger.warning("torch_rc: tuning %s failed: %s", task.name, task.error)
        return None


def _conclude(task: Task, database: Any, target: Any) -> None:
    """Keep a tuned schedule only if it is verified and beats both the default schedule and
    the unscheduled kernel (when that was measured faster than the default); store the winner.
    """
    result = task.result
    if result is None:
        return
    task.status = "interrupted" if result.interrupted else "tuned"
    unscheduled = task.unscheduled.latency_s if task.unscheduled is not None else None
    bars = [b for b in (task.default_s, unscheduled) if b is not None]
    best = result.best_latency_s
    tuned_wins = result.best_trace is not None and (
        not bars or (best is not None and best < min(bars))
    )
    if tuned_wins:
        if database is not None:
            _promote(database, task, result, target, result.best_trace, result.best_measurement)
    elif task.unscheduled is not None and unscheduled is not None:
        # The plain loops (LLVM vectorises them itself) beat every schedule: store "no schedule".
        task.status = "kept-unscheduled"
        task.error = (
            f"unscheduled kernel {unscheduled * 1e3:.4f} ms < default schedule "
            + (f"{task.default_s * 1e3:.4f} ms" if task.default_s is not None else "(none)")
            + (f" and best tuned {best * 1e3:.4f} ms" if best is not None else "")
        )
        if database is not None:
            empty = tvm_api().s_tir.Schedule(task.mod).trace
            _promote(database, task, result, target, empty, task.unscheduled, "unscheduled")
    elif result.best_trace is not None:
        # Never slower than what the build would do anyway: keep the default schedule, and
        # store it (its trace, verified to replay) so that later runs do not tune the kernel
        # again; not after Ctrl-C or the time limit cut the search short.
        task.status = "kept-default"
        task.error = (
            f"best tuned {best * 1e3:.4f} ms >= default schedule {task.default_s * 1e3:.4f} ms"
        )
        stored = task.default_trace is not None and task.default is not None
        if database is not None and stored and not result.interrupted:
            _promote(database, task, result, target, task.default_trace, task.default, "default")


def _unscheduled(mod: Any, default_s: float, measurer: Measurer) -> Measurement | None:
    """The unscheduled kernel's measurement if it beats ``default_s``, on a CPU (GPU kernels
    need a schedule). It is timed only when its one cold run (the correctness reference, already
    made) took under 3x ``default_s``: an unscheduled GEMM can take seconds per call."""
    if str(measurer.target.kind.name) == "cuda":
        return None
    cold = getattr(measurer, "reference_seconds", {}).get(workload_key(mod["main"]))
    if cold is None or cold > 3 * default_s:
        return None
    try:
        measurement = measurer.measure(mod, mod, count=False)
    except TrackerGone:
        raise
    except Exception:  # noqa: BLE001 - a baseline that cannot be measured is not a candidate
        return None
    ok = measurement.ok and measurement.latency_s is not None
    return measurement if ok and measurement.latency_s < default_s else None


def _default_latency(mod: Any, measurer: Measurer) -> float | None:
    """Latency of ``mod`` with the default schedule (what an untuned build runs: torch_rc's CPU
    rule, or dlight's GPU rules)."""
    measurement, _ = _measure_default(mod, measurer)
    return measurement.latency_s if measurement is not None else None


def _measure_default(mod: Any, measurer: Measurer) -> tuple[Measurement | None, Any]:
    """The default schedule's verified measurement (None if it fails or cannot be scheduled)
    and its trace (None unless replaying it on ``mod`` gives exactly the measured module)."""
    api = tvm_api()
    try:
        # The rules get a deep copy (default_schedule): the task's module and key stay as
        # extracted. Where no rule applies, the build runs the function as it is.
        sch = default_schedule(mod["main"], measurer.target)
        scheduled = mod if sch is None else api.tvm.IRModule({"main": sch.mod["main"]})
        measurement = measurer.measure(mod, scheduled, count=False)
    except TrackerGone:
        raise
    except Exception:  # the default rule could not schedule it: any verified result is better
        return None, None
    if not (measurement.ok and measurement.latency_s is not None):
        return None, None
    return measurement, None if sch is None else _replaying_trace(mod, sch.trace, scheduled)


def _replaying_trace(mod: Any, trace: Any, expected: Any) -> Any:
    """``trace`` if it replays on ``mod`` to ``expected`` (structurally), else None."""
    import tvm_ffi  # loaded with TVM by then (tvm_api() imported it)

    try:
        replay = tvm_api().s_tir.Schedule(mod)
        trace.apply_to_schedule(replay, remove_postproc=False)
        same = bool(tvm_ffi.structural_equal(replay.mod["main"], expected["main"]))
    except Exception:  # noqa: BLE001 - a trace that does not replay is not stored
        return None
    return trace if same else None


def _promote(
    database: Any,
    task: Task,
    result: TuneResult,
    target: Any,
    trace: Any,
    measurement: Measurement,
    found_by: str = "",
) -> None:
    """Store ``trace`` (measured as ``measurement``) for ``task``; provenance from ``result``,
    the proposer named ``found_by`` when it was not the search's (the unscheduled kernel)."""
    ms = tvm_api().s_tir.meta_schedule
    record = ms.database.TuningRecord(
        trace,
        database.commit_workload(task.mod),
        list(measurement.runs) or [measurement.latency_s],
        target,
        ms.arg_info.ArgInfo.from_prim_func(task.mod["main"]),
    )
    stats = result.stats
    database.promote(
        record,
        measurement.check,
        # The key as computed at extraction, which is what the build looks records up with.
        key=task.key,
        samples=result.samples,
        method=result.method,
        proposer=found_by or result.proposer,
        models=tuple(m for m, v in stats["models"].items() if v["calls"])
        if isinstance(stats.get("models"), dict)
        else ((stats["model"],) if "model" in stats else ()),
        tokens=int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0)),
    )


def _write_log(run: TuningRun, options: Options) -> str:
    if not any(t.result for t in run.tasks):
        return ""
    try:
        directory = runs_dir(options)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run.to_json(), indent=1))
        tmp.replace(path)
        return str(path)
    except OSError as exc:  # a read-only cache dir: the tuned records are what matter
        logger.warning("torch_rc: could not write the tuning log: %s", exc)
        return ""
