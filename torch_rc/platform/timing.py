"""Decide which of two implementations is faster, robustly, on a shared and noisy machine.

A first-call choice that a busy moment decides wrongly is a model slower than eager for good (one
was seen 8x slower: eager measured at 14-32 ms while the machine was busy, for a model that takes
0.06 ms). :func:`compare` therefore

* warms both sides up, then times them in **paired rounds** whose order alternates (A B, B A, ...),
  so slow periods hit both sides of a round alike and order effects cancel;
* summarises the rounds as the **median of the per-round ratios** candidate / baseline with a
  distribution-free confidence interval (order statistics of the binomial sign test);
* measures the **spread** (interquartile range / median) of the per-round ratios: on this
  machine they spread 0.02-0.13 when quiet and up to ~6 with busy neighbours. (Each side's own
  times may drift together — seen going from 40 to 160 us and back within 60 rounds — which the
  pairing cancels, so they are not what decides.)
* keeps sampling until the interval decides or the time budget runs out.

Interference only ever adds time. A candidate win therefore counts only when it is robust: the
whole interval, the upper quartile of the per-round ratios (three rounds in four) and the ratio of
the two sides' fastest runs all lie below ``1 - margin``. A median win that fails one of them (the
baseline was slowed on many rounds, not generally slower) is marked noisy. Spread alone marks
other verdicts noisy.

The verdict is ``"candidate"`` for a robust win; ``"baseline"`` when the candidate is clearly
not that much faster; otherwise ``"undecided"``. An undecided or noisy comparison is *provisional*: callers run the
baseline and do not treat the choice as final (see :mod:`torch_rc.backends.decisions`).

Other processes' CPU use is measured over the timed rounds too (the machine's busy CPU time
minus this process's own): when others kept more than :data:`CONTENDED_CORES` cores busy on
average, the verdict is marked noisy whatever the ratios say. A busy neighbour on a 2-core machine
slows the two sides unequally (they use different thread pools), so a consistent-looking verdict
taken then is still not one to keep for good.

CUDA work is asynchronous, so each timed call is bracketed by a synchronisation of the inputs'
devices (the times are the work, not the launch).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Comparison",
    "CONTENDED_CORES",
    "NOISY_SPREAD",
    "compare",
    "cuda_devices",
    "median_interval",
    "spread",
]

# Relative interquartile range of the paired ratios above which timings are too noisy to decide
# (quiet: 0.02-0.35 for calls of 50 us to 1 ms; a busy neighbour: up to ~6).
NOISY_SPREAD = 0.5
# Cores other processes kept busy, on average over the timed rounds, above which a verdict is
# not trusted (a quiet 2-core machine: under 0.1; one spinning neighbour beside a 2-thread
# comparison: 0.5-0.9).
CONTENDED_CORES = 0.3
# Rounds go on at least this long (within half the budget), so that the load of other processes
# is measured over a window much longer than the kernel's 10 ms accounting tick.
MIN_OBSERVE_S = 0.15
# Two-sided normal quantile for a 95% interval.
_Z95 = 1.959964


@dataclass(frozen=True)
class Comparison:
    """The outcome of timing a candidate against a baseline on the same inputs.

    Attributes:
        baseline_ms: Median time of the baseline.
        candidate_ms: Median time of the candidate.
        ratio: Median of the per-round ratios candidate / baseline (below 1: candidate faster).
        low: Lower end of the 95% interval of that median.
        high: Upper end.
        spread: Relative interquartile range of the per-round ratios (the noise).
        rounds: Paired rounds timed.
        verdict: ``"candidate"``, ``"baseline"`` or ``"undecided"``.
        noisy: A median win that is not robust, or another verdict taken with ``spread`` above
            :data:`NOISY_SPREAD`.
        min_ratio: Fastest candidate run / fastest baseline run.
        others_cores: Cores other processes kept busy, on average, while the rounds ran (NaN
            when it could not be measured).
    """

    baseline_ms: float
    candidate_ms: float
    ratio: float
    low: float
    high: float
    spread: float
    rounds: int
    verdict: str
    noisy: bool
    min_ratio: float = math.nan
    others_cores: float = math.nan

    @property
    def decided(self) -> bool:
        """A clear verdict on quiet timings (a choice that may be kept for good)."""
        return self.verdict != "undecided" and not self.noisy

    def describe(self, baseline: str, candidate: str) -> str:
        """One line: both medians, the ratio with its interval, the noise and the rounds."""
        return (
            f"{candidate} {self.candidate_ms:.3f} ms vs {baseline} {self.baseline_ms:.3f} ms "
            f"(ratio {self.ratio:.2f}, 95% [{self.low:.2f}, {self.high:.2f}], spread "
            f"{self.spread:.2f}, {self.rounds} rounds{', noisy' if self.noisy else ''}"
            + (
                f", other processes busy on {self.others_cores:.1f} cores"
                if self.others_cores > CONTENDED_CORES
                else ""
            )
            + ")"
        )


def cuda_devices(args: Sequence[Any]) -> list[torch.device]:
    """The distinct CUDA devices of the tensors in ``args``."""
    seen: dict[torch.device, None] = {}
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            seen[arg.device] = None
    return list(seen)


def spread(samples: Sequence[float]) -> float:
    """Interquartile range / median (0 for fewer than 4 samples or a zero median)."""
    if len(samples) < 4:
        return 0.0
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else 0.0


def median_interval(samples: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median (order statistics of the sign test)."""
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:  # too few rounds for a 95% interval: the whole range
        return ordered[0], ordered[-1]
    half_width = _Z95 * math.sqrt(n) / 2
    lower = max(0, math.floor(n / 2 - half_width))
    upper = min(n - 1, math.ceil(n / 2 + half_width) - 1)
    return ordered[lower], ordered[upper]


def _timer(args: Sequence[Any]) -> Callable[[Callable[..., Any]], float]:
    devices = cuda_devices(args)

    def timed(fn: Callable[..., Any]) -> float:
        for device in devices:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(*args)
        for device in devices:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def compare(
    baseline: Callable[..., Any],
    candidate: Callable[..., Any],
    args: Sequence[Any],
    *,
    margin: float = 0.05,
    min_rounds: int = 8,
    max_rounds: int = 400,
    budget_s: float = 1.0,
    warmup: int = 2,
) -> Comparison:
    """Time ``candidate`` against ``baseline`` on ``args`` and say which is faster (see module).

    Args:
        margin: The candidate must be at least this much faster (0.05: 5%) to win.
        min_rounds: Paired rounds before a verdict may be taken.
        max_rounds: Paired rounds at most, once the load-observation window has passed.
        budget_s: Wall time after which sampling stops (after at least 3 rounds).
        warmup: Untimed calls of each side first, at least (more while a tenth of the budget,
            at most 50 ms, has not passed).
    """
    timed = _timer(args)
    # Warm both sides up: at least ``warmup`` calls, and up to a tenth of the budget (at most
    # 50 ms, 100 calls) so that caches, branch predictors and sleeping threads settle.
    settle = min(0.05, budget_s / 10)
    start, calls = time.monotonic(), 0
    while calls < warmup or (time.monotonic() - start < settle and calls < 100):
        baseline(*args)
        candidate(*args)
        calls += 1
    base: list[float] = []
    cand: list[float] = []
    # A first call follows a compile that left garbage behind: collect it now and keep the
    # collector out of the timed rounds (as timeit does), or its pauses land on random rounds.
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    load = _Load()
    try:
        _rounds(timed, baseline, candidate, base, cand, margin, min_rounds, max_rounds, budget_s)
    finally:
        if collecting:
            gc.enable()
    others = load.others_cores()
    result = _summarise(base, cand, margin)
    contended = others > CONTENDED_CORES
    return dataclasses.replace(result, others_cores=others, noisy=result.noisy or contended)


class _Load:
    """CPU time other processes used since this object was made (psutil's system-wide times
    minus this process's own)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.own = time.process_time()
        self.busy = _busy_cpu_s()

    def others_cores(self) -> float:
        wall = time.monotonic() - self.start
        busy = _busy_cpu_s()
        if wall <= 0 or math.isnan(busy) or math.isnan(self.busy):
            return math.nan
        # The kernel counts system CPU time in ticks (10 ms) per CPU: allow one tick per CPU at
        # each end, so that a short comparison is never "contended" by rounding alone.
        slack = 2 * _TICK_S * (os.cpu_count() or 1)
        others = (busy - self.busy) - (time.process_time() - self.own) - slack
        return max(0.0, others) / wall


try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _TICK_S = 0.01


def _busy_cpu_s() -> float:
    try:
        import psutil

        times = psutil.cpu_times()
    except Exception:  # noqa: BLE001 - no reading on this platform: unknown, not busy
        return math.nan
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(times, name, 0.0) for name in fields)


def _rounds(
    timed: Callable[[Callable[..., Any]], float],
    baseline: Callable[..., Any],
    candidate: Callable[..., Any],
    base: list[float],
    cand: list[float],
    margin: float,
    min_rounds: int,
    max_rounds: int,
    budget_s: float,
) -> None:
    deadline = time.monotonic() + budget_s
    observe_until = time.monotonic() + min(MIN_OBSERVE_S, budget_s / 2)
    rounds = 0
    # ``max_rounds`` bounds the rounds once the observation window has passed: a tiny kernel
    # runs 400 rounds in a few tens of milliseconds, too short to see other processes' load
    # (the accounting slack alone is 40 ms on two CPUs).
    while rounds < max_rounds or time.monotonic() < observe_until:
        if rounds % 2 == 0:
            base.append(timed(baseline))
            cand.append(timed(candidate))
        else:
            cand.append(timed(candidate))
            base.append(timed(baseline))
        rounds += 1
        if time.monotonic() < observe_until:
            continue  # too short a window to see other processes' load (see _Load)
        if rounds >= min_rounds and _summarise(base, cand, margin).decided:
            break
        if rounds >= 3 and time.monotonic() > deadline:
            break


def _summarise(base: list[float], cand: list[float], margin: float) -> Comparison:
    ratios = [c / b if b > 0 else math.inf for b, c in zip(base, cand, strict=True)]
    low, high = median_interval(ratios)
    ratio = statistics.median(ratios)
    noise = spread(ratios)
    threshold = 1.0 - margin
    fastest = min(cand) / min(base) if min(base) > 0 else math.inf
    upper_quartile = (
        statistics.quantiles(ratios, n=4, method="inclusive")[2] if len(ratios) >= 4 else high
    )
    if high < threshold and upper_quartile < threshold and fastest < threshold:
        # A robust win: the interval, three rounds in four and the fastest runs all agree, so
        # however widely the ratios spread, the candidate is faster by the margin.
        verdict, noisy = "candidate", False
    elif high < threshold:
        # The median says the candidate wins, but a quarter of the rounds or the fastest runs say
        # it does not: the baseline was slowed on many rounds (interference).
        verdict, noisy = "undecided", True
    elif low >= threshold or ratio >= 1.0 + margin:
        # The candidate is not faster by the margin (its best plausible ratio misses it), or it
        # is clearly slower; on noisy timings that is not final either.
        verdict, noisy = "baseline", noise > NOISY_SPREAD
    else:
        verdict, noisy = "undecided", noise > NOISY_SPREAD
    return Comparison(
        baseline_ms=statistics.median(base) * 1e3,
        candidate_ms=statistics.median(cand) * 1e3,
        ratio=ratio,
        low=low,
        high=high,
        spread=noise,
        rounds=len(base),
        verdict=verdict,
        noisy=noisy,
        min_ratio=fastest,
    )
