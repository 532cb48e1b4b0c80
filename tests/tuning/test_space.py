"""The design space on a real matmul: descriptions, seeded mutations, concrete settings."""

import pytest

from tests.tuning.workloads import matmul
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.verify import check_schedule


@pytest.fixture(scope="module")
def space():
    return DesignSpace(matmul(relu=True), tvm_api().cpu_target(2), seed=1)


def test_decisions_are_described_with_loops_and_ranges(space):
    tiles = [d for d in space.decisions[0] if d.kind == "tile"]
    assert [(d.block, d.loop, d.spatial, d.extent) for d in tiles] == [
        ("C", "i", True, 64),
        ("C", "j", True, 128),
        ("C", "k", False, 128),
    ]
    assert any(d.kind == "unroll" and 16 in d.candidates for d in space.decisions[0])
    text = "\n".join(space.describe_state(space.initial_states()[0]))
    assert "reduction loop C.k (extent 128)" in text


def test_sketches_give_legal_correct_states(space):
    states = space.initial_states()
    assert len(states) == len(space.sketches) >= 2
    assert set(space.actions) == {"tile_size", "compute_location", "unroll"}
    assert abs(sum(space.mutator_probs.values()) - 1.0) < 1e-6
    for state in states:
        sch = space.schedule(state)
        assert sch is not None
        assert check_schedule(space.mod, sch.mod, space.target).passed


def test_mutations_are_seeded_legal_and_correct_including_seed_zero(space):
    state = space.initial_states()[0]
    # Seed 0 is the fixed point of TVM's LCG and used to hang MutateTileSize.
    assert space.mutate(state, "tile_size", seed=0) == space.mutate(state, "tile_size", seed=0)
    changed = {space.mutate(state, "tile_size", seed=s) for s in range(12)} - {None}
    assert len(changed) >= 3 and state not in changed
    for new in list(changed)[:3]:
        sch = space.schedule(new)
        assert sch is not None and check_schedule(space.mod, sch.mod, space.target).passed
    with pytest.raises(ValueError, match="legal: tile_size"):
        space.mutate(state, "make_it_fast", seed=1)


def test_concrete_settings_are_validated(space):
    state = space.initial_states()[0]
    j = next(d for d in space.decisions[0] if d.loop == "j")
    new = space.set_decision(state, j.index, [4, 2, 2, 8])
    assert new.value(j.index) == (4, 2, 2, 8)
    sch = space.schedule(new)
    assert sch is not None and check_schedule(space.mod, sch.mod, space.target).passed
    with pytest.raises(ValueError, match="multiply to 64, not the loop extent 128"):
        space.set_decision(state, j.index, [4, 2, 2, 4])
    with pytest.raises(ValueError, match="needs 4 positive factors"):
        space.set_decision(state, j.index, [128])
    with pytest.raises(ValueError, match="is not a decision"):
        space.set_decision(state, 999, 1)
    unroll = next(d for d in space.decisions[0] if d.kind == "unroll")
    with pytest.raises(ValueError, match="index 0..3"):
        space.set_decision(state, unroll.index, 7)
    with pytest.raises(ValueError, match="sketch 9 does not exist"):
        space.switch_sketch(9)


def _softmax_sketch0():
    from tests.tuning.workloads import row_softmax

    space = DesignSpace(row_softmax(64, 128), tvm_api().cpu_target(2), seed=0)
    state = space.initial_states()[0]
    locations = [d for d in space.decisions[0] if d.kind == "compute_location"]
    for decision in locations:
        state = space.set_decision(state, decision.index, -1)  # each block at the root
    return space, state, locations


def test_a_reduction_under_a_loop_it_does_not_depend_on_is_counted_as_recomputed():
    """The row max computed under its consumer's column loop runs once per column (128 times
    over); under the row loop, or at the root, once."""
    space, at_root, locations = _softmax_sketch0()
    assert space.recomputation(at_root) == ("", 1.0) and not space.recomputes(at_root)
    maxelem = next(d for d in locations if d.block == "T_softmax_maxelem")
    per_column = space.set_decision(at_root, maxelem.index, 1)
    assert space.legal(per_column)
    assert space.recomputation(per_column) == ("T_softmax_maxelem_update", 128.0)
    assert space.recomputes(per_column)
    per_row = space.set_decision(at_root, maxelem.index, 0)
    assert space.recomputation(per_row) == ("", 1.0)
    # A matmul's tiles (every loop split, the reduction inside) redo nothing.
    plain = DesignSpace(matmul(), tvm_api().cpu_target(2), seed=1)
    assert all(plain.recomputation(s) == ("", 1.0) for s in plain.initial_states())
