"""Whole-graph "never slower than eager" gate.

Partition-level choices compare a TVM kernel with its PyTorch twin, but that twin runs decomposed
ATen ops (attention split into matmuls and softmax), which can be slower than eager's fused
kernels. So on the first call the compiled graph is also timed against the original Dynamo graph
run eagerly (:func:`torch_rc.platform.timing.compare`), and the compiled graph is kept only on a
clear, quiet win (:mod:`torch_rc.backends.decisions`); a provisional or losing comparison keeps
the original graph. A cached "compiled" decision is re-checked with a few rounds and measured
again if it looks wrong or was timed elsewhere. A provisional decision (timings too noisy or too
close, or other processes busy) runs the original graph and is measured again in this process
after :data:`REMEASURE_AFTER` calls (then 4x and 16x as many), so a busy moment at the first call
does not cost the speed-up for the life of a serving process. Graphs that mutate inputs or draw random numbers
are never re-run for timing (that would change the user's state): they keep the compiled version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch_rc.backends.compiler import GraphReport
from torch_rc.backends.decisions import Decision, Machine, decision_from_comparison
from torch_rc.backends.first_call import FirstCallDispatch
from torch_rc.backends.select import Counted, recheck
from torch_rc.options import Options
from torch_rc.platform.timing import compare

__all__ = ["GraphGate", "REMEASURE_AFTER"]

# Calls after which a provisional choice is timed again (then 4x, 16x as many; three tries).
REMEASURE_AFTER = 64
_REMEASURE_TRIES = 3

logger = logging.getLogger(__name__)


class GraphGate:
    """Runs the compiled graph or the eager graph, whichever the first call chose.

    ``compiled_side.calls`` and ``eager_side.calls`` count what ran after the choice.
    """

    def __init__(
        self,
        compiled: Callable[..., Any],
        eager: Callable[..., Any],
        report: GraphReport,
        options: Options,
        machine: Machine,
        preset: Decision | None = None,
        partitions: Sequence[Any] = (),
    ) -> None:
        """``preset`` is an earlier run's decision, from the cache; ``partitions`` are the
        graph's SelectingPartitions (re-opened when their choices were provisional)."""
        self.compiled_side = Counted(compiled, "compiled")
        self.eager_side = Counted(eager, "eager")
        self.report = report
        self.options = options
        self.machine = machine
        self.preset = preset
        self._dispatch = FirstCallDispatch()
        self.remeasured = 0  # provisional decisions measured again in this process
        self.partitions = list(partitions)

    def __call__(self, *args: Any) -> Any:
        return self._dispatch.dispatch(args, self._first_call)

    def calls(self) -> dict[str, int]:
        return {"compiled": self.compiled_side.calls, "eager": self.eager_side.calls}

    def _first_call(self, args: tuple[Any, ...]) -> Any:
        compiled, eager = self.compiled_side.fn, self.eager_side.fn
        result = compiled(*args)  # partitions make their own choices here
        if not self.report.rerun_safe:
            reason = "graph mutates inputs or draws random numbers; not re-run for timing"
            self._choose(Decision("compiled", "fixed", reason))
            return result
        if self.report.executed_ops == 0:
            reason = "no partition runs on TVM; the original graph skips decomposition overhead"
            states = {p.decision.state for p in self.report.partitions if p.decision is not None}
            # Follows the partitions' choices: as valid as they are (timed ones hold here only,
            # provisional ones are measured again).
            state = (
                "provisional"
                if "provisional" in states
                else ("final" if "final" in states else "fixed")
            )
            decision = (
                Decision(
                    "eager", state, reason, target=self.machine.target, threads=self.machine.threads
                )
                if state != "fixed"
                else Decision("eager", "fixed", reason)
            )
            self._choose(decision)
            return result
        preset = self.preset
        if preset is not None and preset.choice == "compiled" and preset.valid_on(self.machine):
            if recheck(preset, eager, compiled, args, self.options.select_margin):
                self._choose(preset, f"cached decision, re-checked: {preset.reason}")
                return result
        elif preset is not None and preset.state != "fixed":
            logger.info(
                "torch_rc: graph %d: measuring again: %s",
                self.report.index,
                preset.why_stale(self.machine),
            )
        self._measure(args)
        return result

    def _measure(self, args: tuple[Any, ...]) -> None:
        compiled, eager = self.compiled_side.fn, self.eager_side.fn
        comparison = compare(
            eager,
            compiled,
            args,
            margin=self.options.select_margin,
            min_rounds=self.options.measure_repeats,
            budget_s=self.options.measure_budget_s,
        )
        self.report.eager_ms, self.report.compiled_ms = (
            comparison.baseline_ms,
            comparison.candidate_ms,
        )
        decision = decision_from_comparison(
            comparison,
            candidate="compiled",
            baseline="eager",
            machine=self.machine,
            names=("eager", "compiled"),
        )
        self._choose(decision)
        logger.info(
            "torch_rc: graph %d runs %s: %s", self.report.index, decision.choice, decision.reason
        )

    def _remeasure(self, args: tuple[Any, ...]) -> Any:
        """Take a provisional choice again on this call's inputs: the partitions whose own
        choices were provisional time both sides anew, then the graph is compared with eager
        (or follows them). Returns this call's result."""
        self.remeasured += 1
        self.preset = None
        self.report.choice = "pending"  # undecided again (executed_ops reads it)
        for partition in self.partitions:
            partition.reopen()
        return self._first_call(args)

    def _choose(self, decision: Decision, reason: str = "") -> None:
        self.report.decision = decision
        self.report.choice = decision.choice
        self.report.choice_reason = reason or decision.reason
        timing = decision.comparison
        if timing is not None and self.report.eager_ms is None:
            self.report.eager_ms, self.report.compiled_ms = timing.baseline_ms, timing.candidate_ms
        side = self.compiled_side if decision.choice == "compiled" else self.eager_side
        if decision.state == "provisional" and self.remeasured < _REMEASURE_TRIES:
            side = _Remeasure(side, REMEASURE_AFTER * 4**self.remeasured, self._remeasure)
        self._dispatch.choose(side)


class _Remeasure:
    """Runs ``side`` (counting on it) and, on the ``after``-th call, hands the call to
    ``remeasure`` instead (which chooses again)."""

    def __init__(self, side: Counted, after: int, remeasure: Callable[..., Any]) -> None:
        self.side, self.left, self.remeasure = side, after, remeasure

    def __call__(self, *args: Any) -> Any:
        self.left -= 1
        if self.left <= 0:
            return self.remeasure(args)
        return self.side(*args)
