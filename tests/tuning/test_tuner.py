"""Tuning a real matmul with MCTS and with MetaSchedule's evolutionary search, same measurer."""

import pytest

from tests.tuning.workloads import matmul, row_softmax
from torch_rc.platform.hardware import host_hardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.measure import Measurer
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.tuner import measure_untuned, tune_workload
from torch_rc.tuning.verify import check_schedule


@pytest.fixture(scope="module")
def space():
    return DesignSpace(matmul(64, 128, 128), tvm_api().cpu_target(2), seed=1)


@pytest.mark.parametrize("method", ["mcts", "evolutionary"])
def test_tuning_finds_a_verified_schedule_faster_than_untuned(space, method):
    measurer = Measurer(space.target, repeats=3, min_repeat_ms=5)
    untuned = measure_untuned(space, measurer)
    hw = host_hardware()
    result = tune_workload(
        space,
        measurer,
        method=method,
        proposer=RuleProposer(space, hw),
        hardware=hw,
        trials=12,
        seed=0,
    )
    assert result.samples == 12 == measurer.count
    assert result.best_measurement.check.passed
    assert result.best_latency_s < untuned  # unscheduled TIR is scalar and single-threaded
    # The curve is monotone and ends at the best; the best trace replays to a correct kernel.
    latencies = [latency for _, latency in result.curve]
    assert latencies == sorted(latencies, reverse=True) and latencies[-1] == result.best_latency_s
    sch = tvm_api().s_tir.Schedule(space.mod)
    result.best_trace.apply_to_schedule(sch, remove_postproc=False)
    assert check_schedule(space.mod, sch.mod, space.target).passed
    if method == "mcts":
        assert result.proposer == "builtin" and all(
            step.source == "builtin" for step in result.steps
        )
    else:
        assert result.proposer == "metaschedule" and result.steps == []


def test_time_limit_stops_early_and_keeps_the_best(space):
    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    hw = host_hardware()
    result = tune_workload(
        space,
        measurer,
        proposer=RuleProposer(space, hw),
        hardware=hw,
        trials=1000,
        time_limit_s=2.0,
    )
    assert result.interrupted and 0 < result.samples < 1000 and result.best_latency_s is not None


def test_bad_method_is_named(space):
    with pytest.raises(ValueError, match="method must be one of mcts, evolutionary"):
        tune_workload(space, Measurer(space.target), method="annealing")


def test_ctrl_c_keeps_the_best_found_so_far(space, monkeypatch):
    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    real = measurer.measure
    calls = []

    def interrupted_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(measurer, "measure", interrupted_on_the_fourth)
    hw = host_hardware()
    result = tune_workload(
        space, measurer, proposer=RuleProposer(space, hw), hardware=hw, trials=50
    )
    assert result.interrupted and result.samples == 3
    assert result.best_measurement is not None and result.best_measurement.check.passed


@pytest.mark.parametrize("method", ["mcts", "evolutionary"])
def test_a_resumed_search_spends_exact_rounds_and_never_measures_a_program_twice(space, method):
    import tvm_ffi

    from torch_rc.tuning.tuner import TaskSearch

    programs = []

    def rounds(seed):
        measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
        measure = measurer.measure  # measure_many measures through it too

        def counted(mod, candidate, **kw):
            programs.append(int(tvm_ffi.structural_hash(candidate)))
            return measure(mod, candidate, **kw)

        measurer.measure = counted
        hw = host_hardware()
        search = TaskSearch(
            space,
            measurer,
            method=method,
            proposer=RuleProposer(space, hw),
            hardware=hw,
            seed=seed,
        )
        spent = [search.step(4), search.step(3), search.step(5)]
        result = search.finish()
        return spent, result, measurer

    spent, result, measurer = rounds(0)
    assert spent == [4, 3, 5] and result.samples == 12 == measurer.count
    # Different states can make one program; each program is measured once, across rounds.
    assert len(programs) == 12 == len(set(programs))
    latencies = [latency for _, latency in result.curve]
    assert latencies == sorted(latencies, reverse=True)  # a round never loses the best
    if method == "mcts":
        # Later rounds start from the best state so far: its path keeps growing from there.
        assert result.steps and result.steps[-1].latency_s == result.best_latency_s


def test_a_stalled_tree_hands_off_to_an_evolution_seeded_with_its_measurements(space):
    """After ``handoff`` samples without a new best the rest goes to MetaSchedule's evolution:
    exact sample counts over rounds, the tree's records in its database, nothing measured twice."""
    import tvm_ffi

    from torch_rc.tuning.tuner import TaskSearch

    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    measured: list[int] = []
    one = measurer.measure

    def measure(source, mod, **kwargs):  # measure_many goes through this too
        if kwargs.get("count", True):
            measured.append(tvm_ffi.structural_hash(mod))
        return one(source, mod, **kwargs)

    measurer.measure = measure
    hw = host_hardware()
    search = TaskSearch(
        space, measurer, proposer=RuleProposer(space, hw), hardware=hw, seed=0, handoff=2
    )
    spent = [search.step(10), search.step(14)]
    tree_best = min(lat for lat in search._known.values() if lat is not None)
    result = search.finish()
    assert spent == [10, 14] and result.samples == 24 == measurer.count == len(measured)
    handed = result.stats["handoff_at"]
    assert 2 <= handed < 24 and 0 < result.stats["handoff_seeded"] <= handed
    assert len(set(measured)) == len(measured)  # the evolution never re-measures the tree's
    latencies = [latency for _, latency in result.curve]
    assert latencies == sorted(latencies, reverse=True) and latencies[-1] <= tree_best
    assert result.best_measurement.check.passed
    if result.best_latency_s < tree_best:  # the evolution found the best: its path says so
        assert result.steps[-1].source == "evolutionary"


def test_screening_adds_scored_walks_that_are_legal_and_redo_no_reduction():
    """Population screening on a real row softmax: the exact budget, many more states scored than
    measured, and every screened state in the tree replays and redoes no reduction."""
    from torch_rc.tuning.tuner import TaskSearch

    space = DesignSpace(row_softmax(64, 128), tvm_api().cpu_target(2), seed=1)
    hw = host_hardware()
    counts = {}
    for screen in (0, 64):
        measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
        search = TaskSearch(
            space, measurer, proposer=RuleProposer(space, hw), hardware=hw, seed=0, screen=screen
        )
        spent = search.step(12)
        result = search.finish()
        assert spent == 12 == result.samples == measurer.count
        assert result.best_measurement.check.passed
        counts[screen] = result.stats["screened"]
    assert counts[64] >= 4 * counts[0]
    with pytest.raises(ValueError, match="screen"):
        TaskSearch(
            space, Measurer(space.target), proposer=RuleProposer(space, hw), hardware=hw, screen=-1
        )


def test_screened_states_in_the_tree_are_offerable():
    import random

    from torch_rc.tuning.cost_model import XGBCostModel
    from torch_rc.tuning.mcts import search

    space = DesignSpace(row_softmax(64, 128), tvm_api().cpu_target(2), seed=1)
    hw = host_hardware()
    rules = RuleProposer(space, hw)
    result = search(
        space.initial_states()[0],
        proposer=rules,
        cost_model=XGBCostModel(space, hw),
        measure=lambda state: 1e-3 * (1 + len(str(state)) % 7),  # no build: a stand-in latency
        budget=16,
        rng=random.Random(0),
        rollout=rules.neighbours,
        screen=48,
        offerable=rules.offerable,
    )
    nodes, stack = [], [result.root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children)
    screened = [n for n in nodes if n.action == "screen"]
    assert screened and all(
        space.legal(n.state) and not space.recomputes(n.state) for n in screened
    )


@pytest.mark.parametrize("workload", ["matmul", "row_softmax"])
def test_the_evolution_after_a_handoff_starts_from_the_tree_records(space, workload):
    """The records replay in the evolution's own population (a row softmax's reduction states
    once failed there: their postprocessed traces do not replay on the bare workload)."""
    from torch_rc.tuning.tuner import TaskSearch

    if workload == "row_softmax":
        space = DesignSpace(row_softmax(64, 128), space.target, seed=1)
    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    hw = host_hardware()
    search = TaskSearch(
        space, measurer, proposer=RuleProposer(space, hw), hardware=hw, seed=1, handoff=1
    )
    while not search._handed_off and search.samples < 40:  # noise-level bests delay the stall
        search.step(4)
    search.step(8)  # a round of the evolution: its population drew from the records
    assert search._handed_off and search._evolution is not None
    _, _, database, workload, _, _ = search._evolution
    tree = {lat for lat in search._known.values() if lat is not None}
    records = [float(record.run_secs[0]) for record in database.get_top_k(workload, 1000)]
    assert tree <= set(records)  # every verified tree measurement is a record it evolves from


def test_a_failing_evolution_after_the_handoff_leaves_the_tree_to_finish(space, caplog):
    """A TVM error inside MetaSchedule (a fault on demand here) costs no sample and no run."""
    from torch_rc.tuning.tuner import TaskSearch

    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    hw = host_hardware()
    search = TaskSearch(
        space, measurer, proposer=RuleProposer(space, hw), hardware=hw, seed=0, handoff=1
    )

    def broken(context, database, workload, cost_model, args_info):
        raise RuntimeError("parallel_for_dynamic error with Check failed: (5 vs. 4)")

    search._seed_evolution = broken
    spent = 0
    while "handoff_failed" not in search.result.stats and spent < 40:  # noise-level new bests
        spent += search.step(2)  # can delay the stall; each round spends all it is given
    assert spent == measurer.count and spent % 2 == 0
    assert search.step(10) == 10 and measurer.count == spent + 10  # the tree goes on
    result = search.finish()
    assert result.stats["handoff_failed"] == (
        "RuntimeError: parallel_for_dynamic error with Check failed: (5 vs. 4)"
    )
    assert "handoff_at" in result.stats and not search._handed_off
    assert "evolution after the hand-off failed" in caplog.text
    assert result.best_measurement.check.passed and result.samples == spent + 10


def test_states_that_make_one_program_share_one_sample(space):
    """Two states of the matmul that make one program (on this space e.g. j tiled [1, 64, 2, 1]
    or [2, 32, 2, 1]: the outer levels fuse into one parallel loop of 64 either way) start the
    search: the second takes the first one's latency without a sample."""
    import random

    import tvm_ffi

    from torch_rc.tuning.tuner import TaskSearch

    hw = host_hardware()
    rules = RuleProposer(space, hw)
    by_program = {}
    for start in space.initial_states():
        for state in rules.neighbours(start, random.Random(0)):
            sch = space.schedule(state)
            if sch is not None:
                by_program.setdefault(int(tvm_ffi.structural_hash(sch.mod)), set()).add(state)
    twins = next(sorted(states, key=repr)[:2] for states in by_program.values() if len(states) > 1)
    measurer = Measurer(space.target, repeats=1, min_repeat_ms=1)
    programs = []
    measure = measurer.measure

    def counted(mod, candidate, **kw):
        programs.append(int(tvm_ffi.structural_hash(candidate)))
        return measure(mod, candidate, **kw)

    measurer.measure = counted
    search = TaskSearch(space, measurer, proposer=rules, hardware=hw, seed=0, transfer=twins)
    assert search.step(6) == 6
    result = search.finish()
    assert result.samples == 6 == measurer.count == len(programs) == len(set(programs))
    assert result.stats["reused"] >= 1
    twin_latencies = {search._known[state] for state in twins}
    assert len(twin_latencies) == 1 and None not in twin_latencies
