"""Knowledge carried across workloads: start a search from schedules tuned for other shapes.

A tuned record holds a schedule trace (MetaSchedule's JSON: instructions, then the sampling
decisions by instruction index). A workload of the same operator family at another shape has
sketches with the same instructions — only the loop extents differ — so a cached trace can be
*adapted*: each tile decision keeps its innermost factors as far as they divide the new extent
(the vector width and the register tile are what was learned), the rest of the extent goes to the
outermost level; unroll and categorical choices keep their index; compute locations keep their
value. The adapted state must still replay and pass the postprocessors (``DesignSpace.legal``); it
is then measured and verified like any other candidate, so a bad transfer costs one sample and can
never be wrong.

Records are ordered by how close their loop extents are to the new workload's (the sum of
``|log(old extent / new extent)|`` over the tile decisions), nearest first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch_rc.tuning.space import DesignSpace, ScheduleState

__all__ = ["Transferred", "adapt_factors", "trace_json", "transferred_states"]


@dataclass(frozen=True)
class Transferred:
    """A state adapted from a tuned record: where it came from and how near that workload was."""

    state: ScheduleState
    distance: float
    source: str  # the record's workload key (or an index when it has none)


def adapt_factors(factors: Sequence[int], extent: int, max_innermost: int) -> tuple[int, ...]:
    """Tile ``factors`` (outermost first) of another extent, adapted to ``extent``: the innermost
    level keeps the largest common divisor of its old factor and the extent (a vector width stays
    a power of two), each level further out the largest divisor of what is left that is at most
    its old factor; the outermost level takes the rest."""
    left = extent
    inner: list[int] = []
    for level, old in enumerate(reversed(factors[1:])):
        if level == 0:
            factor = math.gcd(old, left)
            while max_innermost > 0 and factor > max_innermost:
                factor //= _smallest_prime(factor)
        else:
            factor = max(d for d in range(1, max(1, min(old, left)) + 1) if left % d == 0)
        inner.append(factor)
        left //= factor
    return (left, *reversed(inner))


def _json_value(value: Any) -> Any:
    """A TVM JSON-style object (Arrays, Maps, IntImm, FloatImm) as plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "value") and not hasattr(value, "items"):
        return value.value  # IntImm, FloatImm
    if hasattr(value, "items"):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, str) or type(value).__name__ == "String":
        return str(value)
    return [_json_value(v) for v in value]


def trace_json(trace: Any, *, remove_postproc: bool = False) -> str:
    """A MetaSchedule trace as the JSON text records store (instructions, decisions)."""
    return json.dumps(_json_value(trace.as_json(remove_postproc=remove_postproc)))


def _smallest_prime(n: int) -> int:
    return next((p for p in range(2, math.isqrt(n) + 1) if n % p == 0), n)


def _kinds(insts: Sequence[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """Each instruction's kind, with the attributes of sampling instructions (their levels)."""
    out = []
    for inst in insts:
        kind = inst[0]
        attrs = (
            tuple(json.dumps(a, sort_keys=True) for a in inst[2])
            if kind.startswith("Sample")
            else ()
        )
        out.append((kind, attrs))
    return out


def _parse(text: str) -> tuple[list[Any], dict[int, Any]] | None:
    """(instructions, decisions by instruction index) of a stored record's trace, or None."""
    try:
        data = json.loads(text)
        # A stored record is MetaSchedule's TuningRecord JSON, [trace, run_secs, target, args];
        # a bare trace is [instructions, decisions], each instruction [kind, inputs, attrs, outs].
        raw = isinstance(data[0][0], list) and isinstance(data[0][0][0], str)
        insts, decisions = data if raw else data[0]
        return list(insts), {int(i): d for i, d in decisions}
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return int(value)


def _adapt(
    space: DesignSpace, sketch: int, decisions: dict[int, Any]
) -> tuple[ScheduleState, float] | None:
    """``decisions`` adapted to ``sketch`` of ``space``; with the extent distance."""
    state = space.initial_states()[sketch]
    distance = 0.0
    values = []
    for decision in space.decisions[sketch]:
        old = decisions.get(decision.index)
        current = state.value(decision.index)
        if old is None:
            values.append((decision.index, current))
            continue
        try:
            if decision.kind == "tile":
                factors = [int(f) for f in old]
                if len(factors) != decision.levels or not all(f >= 1 for f in factors):
                    return None
                extent = decision.extent or math.prod(current)
                distance += abs(math.log(math.prod(factors) / extent))
                value: Any = adapt_factors(factors, extent, decision.max_innermost)
            elif decision.kind in ("unroll", "categorical"):
                value = int(old) if 0 <= int(old) < len(decision.candidates) else current
            else:
                value = _plain(old)
        except (TypeError, ValueError):
            return None
        values.append((decision.index, value))
    return ScheduleState(sketch, tuple(values)), distance


def transferred_states(
    space: DesignSpace, traces: Iterable[tuple[str, str]], *, limit: int = 4
) -> list[Transferred]:
    """Legal states of ``space`` adapted from stored traces of other workloads.

    Args:
        space: The new workload's design space.
        traces: (source key, stored record trace JSON) pairs, e.g. every record of the target.
        limit: At most this many states, nearest sources first.
    """
    sketches = [
        (_kinds(json.loads(trace_json(sketch, remove_postproc=True))[0]), index)
        for index, sketch in enumerate(space.sketches)
    ]
    found: dict[ScheduleState, Transferred] = {}
    for source, text in traces:
        parsed = _parse(text)
        if parsed is None:
            continue
        insts, decisions = parsed
        kinds = _kinds(insts)
        for sketch_kinds, index in sketches:
            if kinds[: len(sketch_kinds)] != sketch_kinds:
                continue
            adapted = _adapt(space, index, decisions)
            if adapted is None:
                continue
            state, distance = adapted
            if state not in found or distance < found[state].distance:
                found[state] = Transferred(state, distance, source)
    ranked = sorted(found.values(), key=lambda t: t.distance)
    return [t for t in ranked if space.legal(t.state)][:limit]
