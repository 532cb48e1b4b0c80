"""The built-in proposer's rules and proposals."""

import random

from tests.tuning.workloads import matmul
from torch_rc.platform.hardware import Hardware, host_hardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.mcts import Context
from torch_rc.tuning.rules import RuleProposer, rule_score
from torch_rc.tuning.space import DesignSpace

AVX2 = Hardware("test", 4, 32, 16, 32 * 1024, 512 * 1024, 8 * 1024**2, "AVX2")


def test_host_hardware_is_read_from_the_machine():
    hw = host_hardware()
    assert hw.cores >= 1 and hw.vector_bytes in (16, 32, 64) and hw.l1_bytes > 0
    assert "fp32 lanes" in hw.describe()


def test_rules_prefer_vector_width_tiles_and_parallel_outer_loops():
    space = DesignSpace(matmul(64, 128, 128), tvm_api().cpu_target(2), seed=1)
    state = space.initial_states()[0]
    i, j, k = (d.index for d in space.decisions[0] if d.kind == "tile")
    good = space.set_decision(space.set_decision(state, j, [8, 2, 1, 8]), i, [8, 1, 2, 4])
    scalar = space.set_decision(good, j, [16, 2, 4, 1])
    serial = space.set_decision(good, i, [1, 1, 16, 4])
    serial = space.set_decision(serial, j, [1, 1, 16, 8])
    score, parts = rule_score(space, good, AVX2)
    assert parts["vectorise"] == 1.0 and parts["parallel"] == 1.0
    assert rule_score(space, scalar, AVX2)[0] < score
    assert rule_score(space, serial, AVX2)[1]["parallel"] < 1.0


def test_proposals_are_legal_new_labeled_and_improve_the_rules_score():
    space = DesignSpace(matmul(64, 128, 128), tvm_api().cpu_target(2), seed=1)
    proposer = RuleProposer(space, AVX2)
    state = space.initial_states()[0]
    proposals = proposer.propose(Context(state, 0.5, (), space.actions), 2, random.Random(0))
    assert len(proposals) == 2
    assert all(
        p.source == "builtin" and p.state != state and space.legal(p.state) for p in proposals
    )
    assert rule_score(space, proposals[0].state, AVX2)[0] > rule_score(space, state, AVX2)[0]
    assert "rules score" in proposals[0].rationale


def test_proposals_and_roots_never_recompute_a_reduction():
    """Moving the row max or the exp-sum of a softmax under the column loop is one move away
    and legal, but the built-in proposer does not offer it, nor is such a state a root."""
    from tests.tuning.test_space import _softmax_sketch0
    from torch_rc.tuning.tuner import _pick_root

    space, state, _ = _softmax_sketch0()
    proposer = RuleProposer(space, AVX2)
    rng = random.Random(0)
    neighbours = [s for s in proposer.neighbours(state, rng) if space.legal(s)]
    assert any(space.recomputes(s) for s in neighbours)  # the test can fail
    offered = []
    for seed in range(6):
        context = Context(state, 0.5, (), space.actions)
        offered += proposer.propose(context, 4, random.Random(seed))
    assert offered and not any(space.recomputes(p.state) for p in offered)
    for seed in range(3):
        assert not space.recomputes(_pick_root(space, AVX2, random.Random(seed)))
