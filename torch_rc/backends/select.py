"""Choose, per partition and on its first real call, between the TVM kernel and PyTorch.

On the first call a partition runs its PyTorch twin and its TVM kernel on the same real inputs and
checks the TVM result against PyTorch (the correctness gate) — also on adversarial variants of the
inputs (:func:`torch_rc.numerics.probe_inputs`: shifted and scaled values below float32, NaN and
Inf everywhere). A kernel that fails any of them never runs. Then both are timed
(:func:`torch_rc.platform.timing.compare`) and the faster kept: TVM only on a clear, quiet win
(:mod:`torch_rc.backends.decisions`). A cached decision is verified again and re-checked with a
few rounds; it is measured afresh if it looks wrong, was provisional, or was timed with another
thread count or CPU.

After the first call the partitioned graph calls the chosen implementation directly (this module
steps out of the call path); ``calls`` counters say what actually ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_rc.backends.decisions import Decision, Machine, decision_from_comparison
from torch_rc.backends.first_call import FirstCallDispatch
from torch_rc.backends.runtime import TVMKernel
from torch_rc.errors import InputMismatchError, VerificationError
from torch_rc.numerics import compare_outputs, probe_inputs
from torch_rc.options import Options
from torch_rc.platform.timing import Comparison, compare

__all__ = ["Counted", "PartitionReport", "SelectingPartition", "recheck"]

logger = logging.getLogger(__name__)


@dataclass
class PartitionReport:
    """What happened to one TVM partition.

    Attributes:
        name: Submodule name in the partitioned graph.
        num_ops: Compute ops in the partition.
        ops: Op counts by name.
        status: ``"pending"`` (not called yet), ``"tvm"``, ``"torch"`` or ``"failed"``.
        reason: Why the status is what it is.
        tvm_ms: Median TVM time on the first call, when measured.
        torch_ms: Median PyTorch time on the first call, when measured.
        max_abs_error: Largest difference between TVM and PyTorch in the verification.
        decision: The full decision (state, numbers, machine), once made.
        library: Per large matrix product: whether it runs as PyTorch's kernel inside the TVM
            program, and the timing that decided it.
    """

    name: str
    num_ops: int
    ops: dict[str, int] = field(default_factory=dict)
    status: str = "pending"
    reason: str = ""
    tvm_ms: float | None = None
    torch_ms: float | None = None
    max_abs_error: float | None = None
    decision: Decision | None = None
    library: list[str] = field(default_factory=list)


def _calls(kernel: Any) -> int:
    return int(getattr(kernel, "calls", 0)) if kernel is not None else 0


class Counted:
    """A callable that counts its calls; ``side`` names what it runs (``eager``, ``compiled``,
    ``torch``)."""

    __slots__ = ("fn", "calls", "side")

    def __init__(self, fn: Callable[..., Any], side: str = "") -> None:
        self.fn = fn
        self.calls = 0
        self.side = side

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


def recheck(
    preset: Decision,
    baseline: Callable[..., Any],
    candidate: Callable[..., Any],
    args: tuple[Any, ...],
    margin: float,
) -> bool:
    """True when a cached choice of the candidate still looks right after a few interleaved
    rounds (it is overturned only when the candidate is clearly slower)."""
    quick = compare(
        baseline, candidate, args, margin=margin, min_rounds=5, max_rounds=7, budget_s=0.2
    )
    clearly_slower = quick.low > 1.0 + margin and not quick.noisy
    if clearly_slower:
        logger.info(
            "torch_rc: cached choice %s looks wrong now (%s); measuring again",
            preset.choice,
            quick.describe("baseline", "candidate"),
        )
    return not clearly_slower


class SelectingPartition(torch.nn.Module):
    """Stands in a partitioned graph for one TVM partition until its first call has chosen.

    Args:
        eager: The partition as an ATen GraphModule (its PyTorch twin).
        kernel: The TVM kernel, or None (then PyTorch runs).
        report: Filled in with the decision.
        options: Tolerances, ``select``, ``verify``, timing settings.
        machine: Where timings are taken (what a decision is valid for).
        preset: A cached decision for this partition.
        weights: Input positions that are weights (left out of the probes).
    """

    def __init__(
        self,
        eager: torch.fx.GraphModule,
        kernel: TVMKernel | None,
        report: PartitionReport,
        options: Options,
        machine: Machine,
        preset: Decision | None = None,
        weights: Collection[int] = (),
    ) -> None:
        super().__init__()
        self.eager = eager
        self.kernel = kernel
        self.report = report
        self.options = options
        self.machine = machine
        self.preset = preset
        self.weights = frozenset(weights)
        self.torch_side = Counted(eager, "torch")
        self._parent: torch.nn.Module | None = None
        self._attr = ""
        self._dispatch = FirstCallDispatch()
        self._counted_from = {"tvm": 0, "torch": 0}
        self._verified = False
        if kernel is None:
            self._choose_fn(self.torch_side)

    def bind(self, parent: torch.nn.Module, attribute: str) -> None:
        """Where this stands in the partitioned graph: after the first call the chosen
        implementation is installed there directly."""
        self._parent, self._attr = parent, attribute
        if self._dispatch.chosen is not None:
            self._install(self._dispatch.chosen)

    def calls(self) -> dict[str, int]:
        """How often each side ran since the first call chose (its verification and timing runs
        are not counted)."""
        return {
            "tvm": _calls(self.kernel) - self._counted_from["tvm"],
            "torch": self.torch_side.calls - self._counted_from["torch"],
        }

    def restart_counters(self) -> None:
        """Count calls from now on (after the graph's first call, its timing runs included)."""
        self._counted_from = {"tvm": _calls(self.kernel), "torch": self.torch_side.calls}

    def forward(self, *args: Any) -> Any:
        return self._dispatch.dispatch(args, self._first_call)

    def reopen(self) -> bool:
        """Make a provisional choice undecided again: the next call times both sides anew
        (without verifying again). Returns whether it was provisional."""
        decision = self.report.decision
        if self.kernel is None or decision is None or decision.state != "provisional":
            return False
        self.preset = None
        self._verified = True
        self._dispatch.chosen = None
        if self._parent is not None:
            self._parent.__dict__.pop(self._attr, None)  # calls go through forward() again
        return True

    # ----------------------------------------------------------------------- first call
    def _first_call(self, args: tuple[Any, ...]) -> Any:
        kernel = self.kernel
        if kernel is None:  # pragma: no cover - chosen in __init__
            return self.torch_side(*args)
        expected = self.eager(*args)
        try:
            actual = kernel(*args)
        except InputMismatchError:
            raise
        except Exception as exc:  # e.g. a CUDA kernel whose (lazy) compile or launch fails
            if self.options.strict:
                raise
            message = f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
            return self._fixed(
                "failed", f"TVM kernel failed on its first call: {message}", expected
            )
        if self.options.verify and not self._verified:
            problem = self._verify(kernel, args, expected, actual)
            if problem:
                if self.options.strict:
                    raise VerificationError(f"{self.report.name}: {problem}")
                return self._fixed("failed", problem, expected)
        if self.options.select == "torch":
            return self._fixed("torch", "option select='torch'", expected)
        if self.options.select == "tvm":
            return self._fixed("tvm", "option select='tvm'", actual)
        preset = self.preset
        if preset is not None and preset.choice == "tvm" and preset.valid_on(self.machine):
            if recheck(preset, self.eager, kernel, args, self.options.select_margin):
                self._decide(preset, reason=f"cached decision, re-checked: {preset.reason}")
                return actual
        elif preset is not None and preset.state != "fixed":
            logger.info(
                "torch_rc: %s: measuring again: %s",
                self.report.name,
                preset.why_stale(self.machine),
            )
        comparison = self._time(args)
        decision = decision_from_comparison(
            comparison,
            candidate="tvm",
            baseline="torch",
            machine=self.machine,
            names=("PyTorch", "TVM"),
        )
        self._decide(decision, comparison=comparison)
        return actual if decision.choice == "tvm" else expected

    def _verify(self, kernel: TVMKernel, args: tuple[Any, ...], expected: Any, actual: Any) -> str:
        """Why the kernel's results differ from PyTorch's, or ``""``."""
        rtol, atol = self.options.rtol, self.options.atol
        match = compare_outputs(expected, actual, rtol=rtol, atol=atol)
        if not match.ok:
            return f"TVM result differs from PyTorch: {match.problem}"
        worst = match.max_abs_error
        for probe in probe_inputs(args, skip=self.weights):
            try:
                want = self.eager(*probe.args)
            except Exception:  # PyTorch itself rejects this probe: nothing to compare with
                continue
            got = kernel(*probe.args)
            match = compare_outputs(
                want, got, rtol=rtol, atol=atol, label=probe.label, nonfinite=probe.nonfinite
            )
            if not match.ok:
                return f"TVM result differs from PyTorch on {probe.label}: {match.problem}"
            worst = max(worst, match.max_abs_error)
        self.report.max_abs_error = worst
        return ""

    def _time(self, args: tuple[Any, ...]) -> Comparison:
        options = self.options
        return compare(
            self.eager,
            self.kernel,  # type: ignore[arg-type]
            args,
            margin=options.select_margin,
            min_rounds=options.measure_repeats,
            budget_s=options.measure_budget_s,
        )

    # ----------------------------------------------------------------------- outcome
    def _fixed(self, choice: str, reason: str, result: Any) -> Any:
        self._decide(Decision(choice, "fixed", reason))
        if choice != "tvm":
            logger.info("torch_rc: %s runs in PyTorch: %s", self.report.name, reason)
        return result

    def _decide(
        self, decision: Decision, *, reason: str = "", comparison: Comparison | None = None
    ) -> None:
        report = self.report
        report.decision = decision
        report.status = decision.choice
        report.reason = reason or decision.reason
        timing = comparison or decision.comparison
        if timing is not None:
            report.torch_ms, report.tvm_ms = timing.baseline_ms, timing.candidate_ms
        chosen = self.kernel if decision.choice == "tvm" else self.torch_side
        self._counted_from = {"tvm": _calls(self.kernel), "torch": self.torch_side.calls}
        self._choose_fn(chosen)  # type: ignore[arg-type]

    def _choose_fn(self, fn: Callable[..., Any]) -> None:
        self._dispatch.choose(fn)
        self._install(fn)

    def _install(self, fn: Callable[..., Any]) -> None:
        if self._parent is not None:
            # An instance attribute is found before nn.Module's submodule lookup: the graph's
            # call of this partition then goes straight to the chosen implementation.
            self._parent.__dict__[self._attr] = fn
