"""Transfer across workloads: a schedule tuned for one shape starts the search of another."""

import json
import math

import pytest

from tests.tuning.workloads import matmul
from torch_rc.cache.location import store_for
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.transfer import adapt_factors, trace_json, transferred_states


def test_adapted_factors_keep_the_inner_tiles_that_divide_the_new_extent():
    assert adapt_factors((4, 2, 8, 16), 256, 64) == (1, 2, 8, 16)  # 256 = 1*2*8*16
    assert adapt_factors((1, 2, 8, 16), 512, 64) == (2, 2, 8, 16)  # the rest goes outermost
    assert adapt_factors((2, 2, 8, 16), 48, 64) == (1, 1, 3, 16)  # 48 = 16 * 3
    assert adapt_factors((2, 2, 8, 16), 40, 64) == (1, 1, 5, 8)  # the vector tile halves
    assert adapt_factors((8, 16), 8, 64) == (1, 8)
    assert adapt_factors((1, 1, 1, 64), 128, 32) == (4, 1, 1, 32)  # the innermost limit holds
    for factors, extent in [((3, 5, 7), 210), ((2, 2, 2, 2), 7), ((16, 1), 1)]:
        assert math.prod(adapt_factors(factors, extent, 64)) == extent


@pytest.fixture(scope="module")
def target():
    return tvm_api().cpu_target(2)


def _tuned_like_state(space):
    """A state of sketch 0 with distinctive tiles (what a tuning run might have found)."""
    state = space.initial_states()[0]
    tiles = [d for d in space.decisions[0] if d.kind == "tile"]
    i_tile, j_tile = tiles[0], tiles[1]
    state = space.set_decision(state, i_tile.index, [2, 4, 2, i_tile.extent // 16])
    state = space.set_decision(state, j_tile.index, [j_tile.extent // 32, 1, 2, 16])
    assert space.legal(state)
    return state, i_tile.index, j_tile.index


def test_a_tuned_trace_is_adapted_to_a_new_shape_of_the_same_operator(target):
    source = DesignSpace(matmul(64, 128, 128), target, seed=1)
    state, i_index, j_index = _tuned_like_state(source)
    trace = json.loads(trace_json(source.schedule(state).trace))
    record_json = json.dumps([trace, [1e-4], {"kind": "llvm"}, []])  # a stored record's shape
    new = DesignSpace(matmul(32, 256, 64), target, seed=1)
    found = transferred_states(new, [("src", record_json)])
    assert found and found[0].source == "src"
    adapted = found[0].state
    assert adapted.sketch == 0 and new.legal(adapted)
    # The vector tile (16) and register tiles survive; the outer levels absorb the new extents.
    assert adapted.value(j_index) == (8, 1, 2, 16)
    assert adapted.value(i_index) == (1, 4, 2, 4)  # from (2, 4, 2, 4): 64 rows became 32
    assert found[0].distance == pytest.approx(
        abs(math.log(64 / 32)) + abs(math.log(128 / 256)) + abs(math.log(128 / 64))
    )


def test_garbage_and_other_operators_transfer_nothing(target):
    new = DesignSpace(matmul(32, 256, 64), target, seed=1)
    relu = DesignSpace(matmul(32, 64, 64, relu=True), target, seed=1)
    other = trace_json(relu.schedule(relu.initial_states()[-1]).trace)
    garbage = [("a", "not json"), ("b", "[1, 2]"), ("c", json.dumps([[["Bogus", [], [], []]], []]))]
    found = transferred_states(new, garbage + [("relu", other)])
    # The fused matmul+relu has other sketches; only a prefix-identical sketch could match.
    assert all(t.source == "relu" for t in found)
    assert all(new.legal(t.state) for t in found)


def test_a_second_shape_starts_from_the_first_shapes_record(tmp_path):
    from torch_rc import tune_tir

    options = {"cache_dir": str(tmp_path), "progress": False}
    first = tune_tir(matmul(64, 128, 128), trials=6, options=options)
    assert first.tasks[0].status == "tuned"
    second = tune_tir(matmul(32, 256, 128), trials=3, options=options)
    task = second.tasks[0]
    assert task.result.stats.get("transferred", 0) >= 1
    assert task.result.samples == 3
    off = tune_tir(matmul(48, 256, 128), trials=3, options={**options, "tune_transfer": False})
    assert "transferred" not in off.tasks[0].result.stats
    records = store_for(str(tmp_path / "store.sqlite")).all_records()
    assert len({r.workload_key for r in records}) >= 2
