"""Spend a model's tuning budget where its time goes: MetaSchedule's gradient-based task scheduler,
with a prior so that small budgets go to the heaviest kernels first.

Each task (a fused kernel) starts with its profiled time per inference: weight (how often it runs
per call) x latency with the default schedule. The budget is handed out in rounds of samples; the
next round goes to the task with the largest expected gain per sample (TVM's
``src/s_tir/meta_schedule/task_scheduler/gradient_based.cc``)::

    g = weight * (alpha * (b[n-1-W] - b[n-1]) / W + (1 - alpha) * b[n-1] / n)

where ``b`` is the task's best latency after each round (``b[0]`` the default schedule's) and
``n`` the length of that history. MetaSchedule first gives every task one round (round robin);
with tens of kernels and budgets of tens of samples that spends everything on small kernels, so
here an untried task's gradient is its prior ``weight * b[0] * (1 - alpha)`` (the second term with
``n = 1``): the heaviest kernels are tried first, and a small kernel only when the heavy ones stop
paying off. Tasks under ``min_share`` of the total are never tuned. Tuning stops early when the
projected total (sum of weight x best latency) improved by less than ``min_gain`` over the last
``patience`` rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Slot", "TaskScheduler"]


@dataclass
class Slot:
    """The scheduler's view of one task.

    Attributes:
        weight: Times the kernel runs per inference.
        default_s: Its latency with the default schedule (the bar to beat).
        history: Best latency after each round, starting with ``default_s``.
        samples: Samples spent on it.
        done: No more rounds (its search is used up or failed).
    """

    weight: float
    default_s: float
    history: list[float] = field(default_factory=list)
    samples: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        if not self.history:
            self.history = [self.default_s]

    @property
    def best_s(self) -> float:
        return min(self.history)

    @property
    def time_s(self) -> float:
        """Time per inference with the best schedule so far."""
        return self.weight * self.best_s


class TaskScheduler:
    """Chooses which task tunes next (see the module docstring).

    Args:
        slots: One per task, in any order.
        alpha: Weight of the recent improvement rate against the optimistic prior (TVM: 0.2).
        window: Rounds the improvement rate is measured over (TVM: 3).
        min_share: Tasks below this share of the total time are not tuned.
        patience: Rounds over which gains must exceed ``min_gain``...
        min_gain: ...as a fraction of the projected total, or tuning stops.
    """

    def __init__(
        self,
        slots: list[Slot],
        *,
        alpha: float = 0.2,
        window: int = 3,
        min_share: float = 0.01,
        patience: int = 6,
        min_gain: float = 0.005,
    ) -> None:
        self.slots = slots
        self.alpha, self.window = alpha, window
        self.patience, self.min_gain = patience, min_gain
        total = sum(s.time_s for s in slots)
        for slot in slots:
            if total <= 0 or not math.isfinite(slot.time_s) or slot.time_s < min_share * total:
                slot.done = True
        self.projections: list[float] = [self.projected_s()]

    def eligible(self) -> list[int]:
        """Indices of the tasks that may still get rounds."""
        return [i for i, slot in enumerate(self.slots) if not slot.done]

    def gradient(self, index: int) -> float:
        """Expected gain per sample of another round of task ``index``."""
        slot = self.slots[index]
        history = slot.history
        n = len(history)
        best = history[-1]
        recent = (history[-1 - self.window] - best) / self.window if n >= 1 + self.window else 0.0
        return slot.weight * (self.alpha * recent + (1 - self.alpha) * best / n)

    def next_task(self) -> int | None:
        """The task to tune next, or None when none is left or the gains have flattened."""
        candidates = self.eligible()
        if not candidates or self.flattened():
            return None
        return max(candidates, key=lambda i: (self.gradient(i), -i))

    def record(self, index: int, best_s: float | None, spent: int) -> None:
        """Task ``index`` used ``spent`` samples; its best latency is now ``best_s``."""
        slot = self.slots[index]
        slot.samples += spent
        latest = slot.history[-1]
        slot.history.append(min(latest, best_s) if best_s is not None else latest)
        if spent == 0:
            slot.done = True  # its search has nothing left to measure
        self.projections.append(self.projected_s())

    def projected_s(self) -> float:
        """Time per inference of all tasks with their best schedules so far."""
        return sum(slot.time_s for slot in self.slots)

    def flattened(self) -> bool:
        """The projected total improved by less than ``min_gain`` over the last ``patience``
        rounds."""
        if len(self.projections) <= self.patience:
            return False
        before, now = self.projections[-1 - self.patience], self.projections[-1]
        return before <= 0 or (before - now) / before < self.min_gain
