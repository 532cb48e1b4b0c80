"""Analytic register and cache blocking: starting tiles derived from the machine."""

import math

import pytest

from tests.tuning.workloads import matmul, row_softmax
from torch_rc.platform.hardware import Hardware, gpu_hardware
from torch_rc.platform.target import KNOWN_GPUS
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.blocking import blocked_states, micro_tile, reduction_states
from torch_rc.tuning.measure import Measurer
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.tuner import TaskSearch

AVX512 = Hardware("test", 2, 64, 32, 32 * 1024, 1024 * 1024, 32 * 1024**2, "AVX512")
AVX2 = Hardware("test", 4, 32, 16, 32 * 1024, 512 * 1024, 8 * 1024**2, "AVX2")


def test_the_register_tile_fits_the_vector_registers_and_fills_whole_vectors():
    for hw in (AVX512, AVX2):
        lanes = hw.lanes(32)
        tiles = micro_tile(64, 256, lanes, hw.vector_registers, 64)
        assert tiles
        for mr, cols in tiles:
            vectors = cols // lanes
            assert cols % lanes == 0 and vectors in (1, 2, 4)
            assert mr * vectors + vectors + 1 <= hw.vector_registers and 64 % mr == 0
        mr, cols = tiles[0]
        assert mr * (cols // lanes) >= 8  # enough accumulators to hide the FMA latency
    # AVX-512 (32 registers) carries a larger tile than AVX2 (16).
    big = micro_tile(64, 256, 16, 32, 64)[0]
    small = micro_tile(64, 256, 8, 16, 64)[0]
    assert big[0] * big[1] // 16 > small[0] * small[1] // 8


def test_short_or_odd_rows_are_covered_whole_or_by_a_divisor():
    assert micro_tile(8, 28, 16, 32, 64)[0][1] == 28  # shorter than two vectors: the whole row
    assert micro_tile(8, 100, 16, 32, 64)[0][1] == 10  # else the largest divisor up to a vector
    assert micro_tile(1, 1024, 16, 32, 64)[0][0] == 1  # one row (a GEMV): no row tile


@pytest.fixture(scope="module")
def space():
    return DesignSpace(matmul(64, 256, 128), tvm_api().cpu_target(2), seed=1)


def test_blocked_states_are_legal_and_derived_from_the_machine(space):
    states = blocked_states(space, AVX512, 32, limit=2)
    assert len(states) == 2 and len(set(states)) == 2
    assert states == blocked_states(space, AVX512, 32, limit=2)  # no randomness
    for state in states:
        assert space.legal(state)
        tiles = [d for d in space.decisions[state.sketch] if d.kind == "tile"]
        rows, cols, k = (state.value(d.index) for d in tiles)
        for decision, factors in zip(tiles, (rows, cols, k), strict=True):
            assert math.prod(factors) == decision.extent
        assert cols[-1] % 16 == 0  # whole vectors
        assert rows[-1] * cols[-1] // 16 + cols[-1] // 16 + 1 <= 32  # registers
        assert k[-1] == 32  # the reduction depth
        assert rows[0] * cols[0] >= 2 * AVX512.cores  # parallel tasks for every core
        # One R0 step's panel (depth x block columns) fits half the L1.
        assert k[-1] * cols[-2] * cols[-1] * 4 <= AVX512.l1_bytes // 2
        unroll = next(d for d in space.decisions[state.sketch] if d.kind == "unroll")
        assert unroll.candidates[state.value(unroll.index)] == 64
    # A machine with fewer registers gets a smaller register tile.
    avx2 = blocked_states(space, AVX2, 32, limit=1)[0]
    tiles = [d.index for d in space.decisions[avx2.sketch] if d.kind == "tile"]
    assert avx2.value(tiles[1])[-1] % 8 == 0
    assert avx2.value(tiles[0])[-1] * avx2.value(tiles[1])[-1] // 8 <= 16 - 3


def test_no_blocking_on_a_gpu_or_when_not_asked(space):
    assert blocked_states(space, gpu_hardware(KNOWN_GPUS["h100"]), 32) == []
    assert blocked_states(space, AVX512, 32, limit=0) == []


class RecordingMeasurer(Measurer):
    """A real measurer that remembers the modules it measured as samples, in order."""

    def __init__(self, target):
        super().__init__(target, repeats=1, min_repeat_ms=1)
        self.candidates = []

    def measure(self, reference_mod, candidate_mod, *, count=True):
        if count:
            self.candidates.append(candidate_mod)
        return super().measure(reference_mod, candidate_mod, count=count)


def test_the_search_measures_the_blocked_tiles_right_after_its_root(space):
    """Exact sample count: root, then the blocked states, then the search's own; the blocked
    states are labelled in the accounting, and off means none."""

    def equal(a, b):
        return a.script() == b.script()

    measurer = RecordingMeasurer(space.target)
    search = TaskSearch(
        space, measurer, proposer=RuleProposer(space, AVX512), hardware=AVX512, blocking=True
    )
    assert search.result.stats["blocked"] == 2
    search.step(5)
    result = search.finish()
    assert result.samples == measurer.count == len(measurer.candidates) == 5
    blocked = [space.schedule(s).mod for s in blocked_states(space, AVX512, 32)]
    assert all(equal(a, b) for a, b in zip(measurer.candidates[1:3], blocked, strict=True))
    assert not any(equal(measurer.candidates[0], b) for b in blocked)  # the root came first
    assert result.stats["improvements_by_source"].get("root") == 1

    off = RecordingMeasurer(space.target)
    search = TaskSearch(space, off, proposer=RuleProposer(space, AVX512), hardware=AVX512)
    assert "blocked" not in search.result.stats
    search.step(3)
    assert not any(equal(c, b) for c in off.candidates for b in blocked)


def test_row_reductions_start_from_vector_partial_sums_fused_per_row():
    """A softmax (no multi-level tiling) gets reduction states: each reduction split into
    (extent / (2 x lanes), 2 x lanes) (two vectors of partial sums; one where 2 x lanes does not
    divide), producers under their consumer's row loop, unroll 64; they replay, compute softmax
    (the measurer checks the result before timing) and the search measures them right after its
    root. A matmul gets none (blocked_states covers it), nor does a GPU."""
    space = DesignSpace(row_softmax(64, 128), tvm_api().cpu_target(2), seed=0)
    states = reduction_states(space, AVX512, 32)
    assert len(states) == 2 and states == reduction_states(space, AVX512, 32)
    assert blocked_states(space, AVX512, 32) == []
    for state in states:
        decisions = space.decisions[state.sketch]
        tiles = [d for d in decisions if d.kind == "tile"]
        assert len(tiles) == 2  # both reductions (max, sum) split for an rfactor
        assert all(state.value(d.index) == (128 // 32, 32) for d in tiles)
        assert all(state.value(d.index) == 0 for d in decisions if d.kind == "compute_location")
        unroll = next(d for d in decisions if d.kind == "unroll")
        assert unroll.candidates[state.value(unroll.index)] == 64
        assert not space.recomputes(state)
    # AVX2: 8 lanes, two vectors.
    assert all(v == (8, 16) for s in reduction_states(space, AVX2, 32) for _, v in s.decisions[:2])
    # A row of 48: three 16-lane vectors, not a multiple of two: one vector of partial sums.
    odd = DesignSpace(row_softmax(64, 48), tvm_api().cpu_target(2), seed=0)
    assert all(v == (3, 16) for s in reduction_states(odd, AVX512, 32) for _, v in s.decisions[:2])
    assert reduction_states(odd, AVX512, 32)
    assert reduction_states(space, gpu_hardware(KNOWN_GPUS["h100"]), 32) == []
    tiled = DesignSpace(matmul(), tvm_api().cpu_target(2), seed=0)
    assert reduction_states(tiled, AVX512, 32) == []

    measurer = RecordingMeasurer(space.target)
    search = TaskSearch(
        space, measurer, proposer=RuleProposer(space, AVX512), hardware=AVX512, blocking=True
    )
    assert search.result.stats["blocked"] == 2
    search.step(3)
    result = search.finish()
    assert result.samples == 3 and result.best_latency_s is not None
    for got, state in zip(measurer.candidates[1:], states, strict=True):
        assert got.script() == space.schedule(state).mod.script()
        assert measurer.measure(space.mod, got, count=False).ok  # checked against the reference
