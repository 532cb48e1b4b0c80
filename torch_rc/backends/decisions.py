"""First-call decisions: what runs (TVM or PyTorch), why, with what numbers, and where it holds.

Every decision the backend takes on a first call — per partition (``tvm``/``torch``/``failed``)
and per graph (``compiled``/``eager``) — is a :class:`Decision`, stored with the compiled artifact
and read back by later processes. Its ``state`` says how much it may be trusted later:

* ``final``: timed with a clear verdict on quiet timings. Valid on the same CPU with the same
  thread count; a later process re-checks it with a few interleaved rounds on first use and
  re-measures it if it looks wrong.
* ``provisional``: timed, but the timings were too noisy or too close to decide. The safe side
  (PyTorch) runs, and the next process measures again.
* ``fixed``: not a matter of timing (an option forced it, the TVM result was wrong, the graph
  cannot be re-run): valid everywhere the artifact is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch_rc.platform.timing import Comparison

__all__ = ["Decision", "Machine", "decision_from_comparison", "decisions_from_json"]

STATES = ("final", "provisional", "fixed")


@dataclass(frozen=True)
class Machine:
    """What a timed decision is valid for: the CPU (or GPU) it ran on and the thread count."""

    target: str
    threads: int


@dataclass(frozen=True)
class Decision:
    """One first-call choice (see the module docstring).

    Attributes:
        choice: ``compiled``/``eager`` for a graph; ``tvm``/``torch``/``failed`` for a partition.
        state: ``final``, ``provisional`` or ``fixed``.
        reason: One line for reports.
        target: The target key the timing was taken on (timed decisions).
        threads: Threads used then.
        at: When (seconds since the epoch).
        timing: The :class:`~torch_rc.platform.timing.Comparison` fields, for timed decisions.
    """

    choice: str
    state: str
    reason: str
    target: str = ""
    threads: int = 0
    at: float = field(default_factory=time.time)
    timing: Mapping[str, Any] | None = None

    def valid_on(self, machine: Machine) -> bool:
        """May this decision be applied on ``machine`` without measuring again?"""
        if self.state == "fixed":
            return True
        return (
            self.state == "final"
            and self.target == machine.target
            and self.threads == machine.threads
        )

    def why_stale(self, machine: Machine) -> str:
        """Why a timed decision does not hold on ``machine`` (``""`` when it does)."""
        if self.valid_on(machine):
            return ""
        if self.state == "provisional":
            return "the earlier timing was provisional (noisy or too close)"
        if self.threads != machine.threads:
            return f"it was timed with {self.threads} threads, this process uses {machine.threads}"
        return "it was timed on another CPU or GPU"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing"] = dict(self.timing) if self.timing is not None else None
        return data

    @classmethod
    def from_json(cls, data: Any) -> Decision | None:
        """A decision from its JSON form; None for anything else (older formats, damage)."""
        if not isinstance(data, Mapping):
            return None
        try:
            decision = cls(
                choice=str(data["choice"]),
                state=str(data["state"]),
                reason=str(data.get("reason", "")),
                target=str(data.get("target", "")),
                threads=int(data.get("threads", 0)),
                at=float(data.get("at", 0.0)),
                timing=dict(data["timing"]) if isinstance(data.get("timing"), Mapping) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None
        return decision if decision.state in STATES else None

    @property
    def comparison(self) -> Comparison | None:
        if not self.timing:
            return None
        try:
            return Comparison(**self.timing)
        except TypeError:
            return None


def decision_from_comparison(
    comparison: Comparison,
    *,
    candidate: str,
    baseline: str,
    machine: Machine,
    names: tuple[str, str],
) -> Decision:
    """The decision a comparison supports: the candidate only on a clear, quiet win; otherwise
    the baseline, final when the comparison decided and provisional when it did not.

    Args:
        candidate: The choice name of the candidate (``tvm``, ``compiled``).
        baseline: That of the baseline (``torch``, ``eager``).
        names: How the report calls (baseline, candidate), e.g. ``("PyTorch", "TVM")``.
    """
    numbers = comparison.describe(*names)
    if comparison.verdict == "candidate" and not comparison.noisy:
        choice, state, reason = candidate, "final", f"{names[1]} faster: {numbers}"
    elif comparison.decided:
        choice, state, reason = baseline, "final", f"{names[1]} not faster: {numbers}"
    else:
        why = "timings too noisy" if comparison.noisy else "too close to call"
        choice, state = baseline, "provisional"
        reason = f"{why}, running {names[0]} until re-measured: {numbers}"
    return Decision(
        choice,
        state,
        reason,
        target=machine.target,
        threads=machine.threads,
        timing=asdict(comparison),
    )


def decisions_from_json(data: Any) -> dict[str, Decision]:
    """The readable decisions of a stored mapping (entries of older formats are dropped)."""
    if not isinstance(data, Mapping):
        return {}
    out = {}
    for name, value in data.items():
        decision = Decision.from_json(value)
        if decision is not None:
            out[str(name)] = decision
    return out
