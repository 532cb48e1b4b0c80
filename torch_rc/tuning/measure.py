"""Real measurement of candidate schedules: build, verify, time. Failures are values.

MetaSchedule's stock LocalBuilder starts a process pool per batch whose workers import every
target's tensor intrinsics (~40 s), so with its 30 s timeout every candidate fails here
(docs/tvm-facts.md). This measurer builds each candidate in a forked child of the tuning process
instead (:mod:`torch_rc.tuning.bounded_build`: ~0.05-3 s per candidate, stopped at
``build_timeout_s``), checks each candidate's output against the untuned function's before
timing it (a wrong kernel can never win), and times with TVM's ``time_evaluator`` (warm-up run, ``repeats`` repeats, each at
least ``min_repeat_ms`` long).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from torch_rc.cache.keys import workload_key
from torch_rc.cache.records import Check
from torch_rc.tuning.bounded_build import (
    DEFAULT_BUILD_TIMEOUT_S,
    BuildFailed,
    BuildTimedOut,
    build_module,
)
from torch_rc.tuning.verify import compare, run_once, target_device, timed_reference_run

__all__ = ["Measurement", "Measurer"]


@dataclass(frozen=True)
class Measurement:
    """The outcome of measuring one candidate.

    Attributes:
        latency_s: Median run time (None when the candidate failed).
        std_s: Standard deviation of the timed repeats.
        runs: Every timed repeat, in seconds.
        check: The correctness check (None when the build failed).
        error: Why the candidate failed (build error or wrong result), or None.
        build_s: Seconds spent building.
        where: The RPC server that measured it ("" when measured in this process).
    """

    latency_s: float | None
    std_s: float = 0.0
    runs: tuple[float, ...] = ()
    check: Check | None = None
    error: str | None = None
    build_s: float = 0.0
    where: str = ""

    @classmethod
    def timed(
        cls, runs: tuple[float, ...], check: Check, build_s: float, where: str = ""
    ) -> Measurement:
        """A passed candidate's measurement from its timed repeats (median, spread)."""
        return cls(
            statistics.median(runs),
            statistics.pstdev(runs) if len(runs) > 1 else 0.0,
            runs,
            check,
            None,
            build_s,
            where,
        )

    @property
    def ok(self) -> bool:
        return self.error is None and self.check is not None and self.check.passed


class Measurer:
    """Builds, verifies and times TIR modules for one target.

    Args:
        target: The ``tvm.target.Target``.
        repeats: Timed repeats (the median is reported).
        min_repeat_ms: Each repeat runs the kernel until at least this long.
        seed: Seed of the random inputs.
        build_timeout_s: A candidate whose build takes longer fails ("build timed out"); None:
            build in this process, without a limit.
    """

    def __init__(
        self,
        target: Any,
        *,
        repeats: int = 5,
        min_repeat_ms: int = 20,
        seed: int = 0,
        build_timeout_s: float | None = DEFAULT_BUILD_TIMEOUT_S,
    ) -> None:
        self.target = target
        self.build_timeout_s = build_timeout_s
        self.repeats = repeats
        self.min_repeat_ms = min_repeat_ms
        self.seed = seed
        self.device = target_device(target)
        self._references: dict[str, tuple[list[Any], torch.Tensor]] = {}
        # One cold run of each reference (unscheduled) kernel, by workload key: what measuring
        # the unscheduled kernel as a candidate would cost, known before paying for it.
        self.reference_seconds: dict[str, float] = {}
        self.count = 0  # real measurements made (the sample count everything reports)
        self.parallelism = 1  # measurements that can run at once (RPC fleets have more)
        self.measured = 0  # every measurement, baselines included
        self.seconds = 0.0  # spent measuring: builds, checks, timing

    def _reference(self, reference_mod: Any) -> tuple[list[Any], torch.Tensor]:
        key = workload_key(reference_mod["main"])
        if key not in self._references:
            arrays, want, seconds = timed_reference_run(reference_mod, self.target, self.seed)
            self._references[key] = (arrays, want)
            self.reference_seconds[key] = seconds
        return self._references[key]

    def measure_many(
        self, reference_mod: Any, candidate_mods: Any, *, count: bool = True
    ) -> list[Measurement]:
        """Measure several candidates (one after another here; a fleet measures them at once)."""
        return [self.measure(reference_mod, mod, count=count) for mod in candidate_mods]

    def close(self) -> None:
        """Nothing to release here (a fleet's measurer stops its workers)."""

    def summary(self) -> dict[str, Any]:
        """Accounting for the run log (what remote measurement reports, for comparison)."""
        return {"where": "local", "measured": self.measured, "seconds": round(self.seconds, 2)}

    def measure(self, reference_mod: Any, candidate_mod: Any, *, count: bool = True) -> Measurement:
        start = time.perf_counter()
        try:
            return self._measure(reference_mod, candidate_mod, count=count)
        finally:
            self.measured += 1
            self.seconds += time.perf_counter() - start

    def _measure(self, reference_mod: Any, candidate_mod: Any, *, count: bool) -> Measurement:
        """Measure ``candidate_mod`` (a scheduled version of ``reference_mod``); ``count=False``
        for baselines that are not tuning samples (the untuned function)."""
        self.count += int(count)
        arrays, want = self._reference(reference_mod)
        start = time.perf_counter()
        try:
            module = build_module(candidate_mod, self.target, self.build_timeout_s)
        except BuildTimedOut as exc:  # a failed sample, not an error
            return Measurement(None, error=str(exc), build_s=time.perf_counter() - start)
        except BuildFailed as exc:
            return Measurement(None, error=f"build failed: {str(exc)[-300:]}")
        build_s = time.perf_counter() - start
        try:
            got, tensors = run_once(module, arrays, self.device)
        except Exception as exc:
            return Measurement(
                None, error=f"run failed: {type(exc).__name__}: {str(exc)[-300:]}", build_s=build_s
            )
        check = compare(got, want, f"standard normal, seed {self.seed}")
        if not check.passed:
            return Measurement(None, check=check, error="wrong result", build_s=build_s)
        # time_evaluator synchronises the device around each repeat, so GPU times are kernel
        # times, not launch times.
        evaluator = module.time_evaluator(
            "main",
            self.device,
            number=1,
            repeat=self.repeats,
            min_repeat_ms=self.min_repeat_ms,
        )
        return Measurement.timed(
            tuple(float(r) for r in evaluator(*tensors).results), check, build_s
        )
