"""Analytic register and cache blocking for MetaSchedule's CPU multi-level tiling.

MetaSchedule's CPU sketches tile every spatial loop into four levels and every reduction loop
into two, in the order ``S0 S1 R0 S2 R1 S3``: ``S0`` is parallelised, ``S3`` (fused across the
spatial loops, innermost last) is the register tile and its innermost loop is vectorised, ``R1``
is the reduction depth the register tile accumulates over, ``S2`` x ``R1`` is the block that one
``R0`` step sweeps. Instead of drawing these factors at random, :func:`blocked_states` derives
them from the machine (the textbook GEMM micro-kernel design, applied to any kernel this
sketch tiles: matmuls, batched matmuls, convolutions):

* **vector**: the innermost spatial loop's register tile is ``nv`` whole vectors (``nv`` = 1, 2
  or 4, ``nv`` x lanes dividing the loop), or the whole loop when it is shorter than two
  vectors (a three-vector tile made the 64-token linear+GELU kernel 20x slower than a
  four-vector one in one measurement here, cause not investigated, so none is offered);
* **registers**: a second spatial loop (the longest other one, then the next) carries ``mr``
  rows, with ``mr x nv`` accumulators + ``nv`` loaded vectors + 1 broadcast at most the vector
  registers; among those, the most multiply-adds per load (``mr*nv / (mr + nv)``), then the
  largest tile; at least 8 accumulators where the loops allow (FMA latency x ports);
* **L1**: ``R1`` up to 32 steps (spread innermost-first over the reduction loops); ``S2`` of the
  vector loop as large as keeps one ``R0`` step's ``R1`` x columns panel in half the L1;
  ``S2`` of the row loop as large as keeps the rows x ``R1`` panel in a quarter of L1 and the
  block's accumulators in half the L2;
* **parallel**: what is left goes to ``S0`` outermost-first until there are two tasks per core,
  the rest to ``S1``; if the blocks leave too few tasks, ``S2`` factors move out to ``S0``;
* **unroll**: 64 steps of auto-unroll (16 where 64 is not a choice).

Row reductions (softmax, norms: no spatial tiling, reductions split in two by ``AddRFactor``)
get :func:`reduction_states`: every reduction split as (extent / (2 x lanes), 2 x lanes), so the
rfactor block accumulates two independent vectors of partial results per row (one vector
leaves each add waiting on the previous one's latency: a layer norm 256 x 768 ran 3.3x faster
than unscheduled with one, 17x with two and 64-step unroll, 14x with four, in one measurement
here; softmax, bound by its exponentials, within 3% either way), or one vector where the
extent does not divide; every producer computed under its consumer's outermost loop (the row:
max, exp-sum and normalisation fused per row, their temporaries a row long instead of the whole
tensor); auto-unroll 64 (512 made one softmax candidate's build run for minutes).

These states are starting points, not answers: the search measures them first (one sample each)
and goes on from the best. Nothing here is measured; a state that does not replay is dropped.
"""

from __future__ import annotations

import math
from typing import Any

from torch_rc.platform.hardware import AnyHardware, GPUHardware
from torch_rc.tuning.space import Decision, DesignSpace, ScheduleState

__all__ = ["blocked_states", "micro_tile", "reduction_states"]

_MAX_R1 = 32
_ACCUMULATORS = 2  # vectors of partial sums per row in a row reduction (see the docstring)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in _divisors(n) if d <= max(1, limit))


def micro_tile(
    rows_extent: int, cols_extent: int, lanes: int, registers: int, max_innermost: int
) -> list[tuple[int, int]]:
    """Register tiles ``(mr, cols)`` for a rows x cols loop nest, best first.

    ``cols`` is the innermost (vectorised) factor: whole vectors dividing ``cols_extent``, or
    the whole loop when it is shorter than two vectors, or else the largest divisor up to one
    vector. ``mr`` divides ``rows_extent``; accumulators (``mr`` x vectors per row) plus the
    loaded vectors plus one broadcast fit ``registers``.
    """
    if cols_extent % lanes == 0:
        col_options = [
            nv * lanes
            for nv in (1, 2, 4)
            if cols_extent % (nv * lanes) == 0 and nv * lanes <= max_innermost
        ]
    elif cols_extent <= min(2 * lanes, max_innermost):
        col_options = [cols_extent]
    else:
        col_options = [_largest_divisor_at_most(cols_extent, min(lanes, max_innermost))]
    scored = []
    for cols in col_options or [1]:
        vectors = math.ceil(cols / lanes)
        for mr in _divisors(rows_extent):
            if mr > max_innermost or mr * vectors + vectors + 1 > registers:
                continue
            accumulators = mr * vectors
            intensity = accumulators / (mr + vectors)
            # Too few accumulators leave the FMA units waiting on the previous result.
            latency_ok = accumulators >= min(8, rows_extent * vectors)
            scored.append(((latency_ok, round(intensity, 3), accumulators, cols), (mr, cols)))
    scored.sort(reverse=True)
    return [tile for _, tile in scored]


def _tile_decisions(space: DesignSpace, sketch: int) -> tuple[list[Decision], list[Decision]]:
    """The sketch's spatial (4-level) and reduction (2-level) tile decisions, or ([], []) when
    it is not a multi-level tiling of that shape."""
    tiles = [d for d in space.decisions[sketch] if d.kind == "tile"]
    spatial = [d for d in tiles if d.spatial is True]
    reduction = [d for d in tiles if d.spatial is False]
    shaped = (
        tiles
        and len(spatial) + len(reduction) == len(tiles)
        and all(d.levels == 4 and d.extent for d in spatial)
        and all(d.levels == 2 and d.extent for d in reduction)
        and spatial
    )
    return (spatial, reduction) if shaped else ([], [])


def _blocked(
    space: DesignSpace,
    state: ScheduleState,
    spatial: list[Decision],
    reduction: list[Decision],
    row: Decision | None,
    tile: tuple[int, int],
    hardware: Any,
    bits: int,
) -> ScheduleState:
    cols_decision = spatial[-1]
    mr, cols = tile
    nbytes = max(1, bits // 8)
    # R1: up to _MAX_R1 steps, innermost reduction loop first.
    r1: dict[int, int] = {}
    budget = _MAX_R1
    for decision in reversed(reduction):
        take = _largest_divisor_at_most(int(decision.extent), min(budget, decision.max_innermost))
        r1[decision.index] = take
        budget = max(1, budget // take)
    depth = math.prod(r1.values()) if r1 else 1
    inner = {d.index: 1 for d in spatial}
    inner[cols_decision.index] = cols
    if row is not None:
        inner[row.index] = mr
    rest = {d.index: int(d.extent) // inner[d.index] for d in spatial}
    # S2 of the vector loop: one R0 step's panel (depth x columns) in half the L1.
    s2 = {d.index: 1 for d in spatial}
    s2[cols_decision.index] = _largest_divisor_at_most(
        rest[cols_decision.index], hardware.l1_bytes // 2 // max(1, depth * cols * nbytes)
    )
    if row is not None:
        block_cols = s2[cols_decision.index] * cols
        by_l1 = hardware.l1_bytes // 4 // max(1, mr * depth * nbytes)
        by_l2 = hardware.l2_bytes // 2 // max(1, mr * block_cols * nbytes)
        s2[row.index] = _largest_divisor_at_most(rest[row.index], min(by_l1, by_l2))
    outer = {i: rest[i] // s2[i] for i in rest}
    wanted = 2 * hardware.cores
    # Too few parallel tasks: give S2 factors back to the outer loops, rows first.
    for decision in ([row] if row is not None else []) + [cols_decision]:
        while math.prod(outer.values()) < wanted and s2[decision.index] > 1:
            p = min(d for d in _divisors(s2[decision.index]) if d > 1)
            s2[decision.index] //= p
            outer[decision.index] *= p
    s0: dict[int, int] = {}
    tasks = 1
    for decision in spatial:
        need = max(1, math.ceil(wanted / tasks))
        take = min(
            d for d in _divisors(outer[decision.index]) if d >= need or d == outer[decision.index]
        )
        s0[decision.index] = take
        tasks *= take
    new = state
    for decision in spatial:
        i = decision.index
        factors = (s0[i], outer[i] // s0[i], s2[i], inner[i])
        new = space.set_decision(new, i, factors)
    for decision in reduction:
        i = decision.index
        new = space.set_decision(new, i, (int(decision.extent) // r1[i], r1[i]))
    for decision in space.decisions[state.sketch]:
        if decision.kind == "unroll":
            steps = [int(c) for c in decision.candidates]
            pick = 64 if 64 in steps else (16 if 16 in steps else steps[-1])
            new = space.set_decision(new, decision.index, steps.index(pick))
    return new


def blocked_states(
    space: DesignSpace, hardware: AnyHardware, bits: int = 32, limit: int = 2
) -> list[ScheduleState]:
    """Up to ``limit`` legal states of ``space`` with analytically chosen tiles (see the module
    docstring), best guess first; [] on a GPU or when no sketch is a CPU multi-level tiling."""
    if isinstance(hardware, GPUHardware) or limit <= 0:
        return []
    lanes = hardware.lanes(bits)
    found: list[ScheduleState] = []
    candidates: list[ScheduleState] = []
    for sketch, state in enumerate(space.initial_states()):
        spatial, reduction = _tile_decisions(space, sketch)
        if not spatial:
            continue
        cols = spatial[-1]
        others = sorted(
            (d for d in spatial[:-1] if int(d.extent) > 1), key=lambda d: -int(d.extent)
        )
        variants: list[tuple[int, Decision | None, tuple[int, int]]] = []
        for row in others[:2] or [None]:
            tiles = micro_tile(
                int(row.extent) if row is not None else 1,
                int(cols.extent),
                lanes,
                hardware.vector_registers,
                min(cols.max_innermost, row.max_innermost if row is not None else 64),
            )
            variants += [(rank, row, t) for rank, t in enumerate(tiles[:2])]
        # Interleave: the best tile of each row loop first, then the runners-up.
        variants.sort(key=lambda v: v[0])
        for _, row, tile in variants:
            try:
                candidates.append(
                    _blocked(space, state, spatial, reduction, row, tile, hardware, bits)
                )
            except ValueError:  # a factor out of the decision's range: not this variant
                continue
    # The first sketch's variants first, then the others' best (cache-write placements).
    for state in dict.fromkeys(candidates):
        if len(found) >= limit:
            break
        if space.legal(state):
            found.append(state)
    return found


def reduction_states(
    space: DesignSpace, hardware: AnyHardware, bits: int = 32, limit: int = 2
) -> list[ScheduleState]:
    """Up to ``limit`` legal states for a row-reduction kernel (see the module docstring): from
    the sketches that split the most reductions for an rfactor, in the space's order; [] on a
    GPU, for multi-level tilings (:func:`blocked_states` covers those), or when no reduction's
    extent is a multiple of the vector length."""
    if isinstance(hardware, GPUHardware) or limit <= 0:
        return []
    lanes = hardware.lanes(bits)
    ranked: list[tuple[int, int, ScheduleState]] = []
    for sketch, state in enumerate(space.initial_states()):
        decisions = space.decisions[sketch]
        tiles = [d for d in decisions if d.kind == "tile"]
        if not tiles or any(d.spatial is not False or d.levels != 2 for d in tiles):
            continue
        if any(int(d.extent or 0) % lanes for d in tiles):
            continue
        new = state
        try:
            for decision in tiles:
                inner = _ACCUMULATORS * lanes
                if int(decision.extent) % inner or 0 < decision.max_innermost < inner:
                    inner = lanes
                new = space.set_decision(
                    new, decision.index, (int(decision.extent) // inner, inner)
                )
            for decision in decisions:
                if decision.kind == "compute_location":
                    new = space.set_decision(new, decision.index, 0)
                elif decision.kind == "unroll":
                    steps = [int(c) for c in decision.candidates]
                    for wanted in (64, 16):
                        if wanted in steps:
                            new = space.set_decision(new, decision.index, steps.index(wanted))
                            break
        except ValueError:  # a value out of the decision's range: not this sketch
            continue
        ranked.append((-len(tiles), sketch, new))
    found: list[ScheduleState] = []
    for _, _, state in sorted(ranked, key=lambda r: (r[0], r[1])):
        if len(found) >= limit:
            break
        if space.legal(state):
            found.append(state)
    return found
