"""The MCTS kernel on a bandit with a known optimum: a 2-D grid of 'tile sizes' whose latency is a
known bowl; actions move one step. Exact counts, determinism, failures, and that real
measurements reach the tree."""

import math
import random

import pytest

from torch_rc.tuning.mcts import Proposal, search

OPT = (11, 5)


def latency(state):
    x, y = state
    return 1.0 + 0.05 * ((x - OPT[0]) ** 2 + (y - OPT[1]) ** 2)


class StepProposer:
    def __init__(self, size=16):
        self.contexts = []
        self.size = size

    def propose(self, context, count, rng):
        self.contexts.append(context)
        x, y = context.state
        moves = [("x+1", (x + 1, y)), ("x-1", (x - 1, y)), ("y+1", (x, y + 1)), ("y-1", (x, y - 1))]
        moves = [(name, s) for name, s in moves if 0 <= s[0] < self.size and 0 <= s[1] < self.size]
        rng.shuffle(moves)
        # Like a real proposer, it may suggest states the tree already has (the kernel drops them).
        return [Proposal(name, s) for name, s in moves][:count]


class ExactModel:
    """A cost model that knows the bowl, predicting on the measured scale the kernel's contract
    asks for: (best latency measured so far) / latency."""

    def __init__(self):
        self.updates = 0
        self.fastest = math.inf

    def predict(self, states):
        return [self.fastest / latency(s) for s in states]

    def update(self, states, latencies):
        self.updates += len(states)
        self.fastest = min([self.fastest] + [t for t in latencies if t is not None])


def run(seed, budget=40, **kw):
    measured = []

    def measure(state):
        measured.append(state)
        return latency(state)

    proposer, model = StepProposer(), ExactModel()
    result = search(
        (0, 0),
        proposer=proposer,
        cost_model=model,
        measure=measure,
        budget=budget,
        rng=random.Random(seed),
        **kw,
    )
    return result, measured, proposer, model


def test_exact_counts_and_a_monotone_curve():
    result, measured, _, model = run(seed=0, budget=40)
    assert result.samples == len(measured) == model.updates == 40
    assert len(set(measured)) == len(measured)  # no state measured twice
    samples, latencies = zip(*result.curve, strict=True)
    assert list(samples) == list(range(1, 41))
    assert list(latencies) == sorted(latencies, reverse=True)


def test_finds_the_known_optimum_on_most_seeds():
    # Start latency is 8.3 (16 steps from the optimum); 40 samples, 10 fixed seeds.
    bests = [run(seed=seed, budget=40)[0].best for seed in range(10)]
    assert sum(b.state == OPT for b in bests) >= 5
    assert all(b.latency <= 1.5 for b in bests)


def test_every_seed_spends_the_whole_budget_when_states_remain():
    assert [run(seed=seed, budget=40)[0].samples for seed in range(10)] == [40] * 10


def test_small_space_ends_when_everything_is_measured():
    result = search(
        (0, 0),
        proposer=StepProposer(size=3),
        cost_model=ExactModel(),
        measure=latency,
        budget=50,
        rng=random.Random(0),
    )
    assert result.samples == result.nodes == 9 and result.root.exhausted


def test_same_seed_same_search_and_budget_is_never_exceeded():
    a = run(seed=7, budget=25)
    b = run(seed=7, budget=25)
    assert a[1] == b[1] and a[0].samples == 25


def test_failed_measurements_count_and_get_zero_reward():
    def measure(state):
        return None if state[0] % 2 else latency(state)

    result = search(
        (0, 0),
        proposer=StepProposer(),
        cost_model=ExactModel(),
        measure=measure,
        budget=20,
        rng=random.Random(1),
    )
    failed = [n for n in _nodes(result.root) if n.failed]
    assert result.samples == 20 and failed
    assert all(n.reward == 0.0 and n.latency is None for n in failed)
    assert result.best.state[0] % 2 == 0


def test_measurements_replace_predictions_in_the_tree():
    class WrongModel(ExactModel):
        def predict(self, states):
            return [0.5 for _ in states]  # says nothing

    result = search(
        (0, 0),
        proposer=StepProposer(),
        cost_model=WrongModel(),
        measure=latency,
        budget=10,
        rng=random.Random(3),
    )
    measured = [n for n in _nodes(result.root) if n.measured]
    best = min(n.latency for n in measured)
    assert all(math.isclose(n.reward, best / n.latency) for n in measured if n is not result.root)


def test_proposer_sees_configurable_ancestor_context():
    _, _, proposer, _ = run(seed=2, budget=15, context_depth=3)
    deepest = max(proposer.contexts, key=lambda c: len(c.ancestors))
    assert len(deepest.ancestors) == 3
    assert all(isinstance(score, float) for _, score in deepest.ancestors)


def test_proposer_sees_the_measured_lineage_and_what_made_new_bests():
    result, _, proposer, _ = run(seed=3, budget=30)
    moves = {"x+1": (1, 0), "x-1": (-1, 0), "y+1": (0, 1), "y-1": (0, -1)}
    measured_steps = 0
    for context in proposer.contexts:
        assert context.lineage[0].action == "root"
        # Replaying the lineage's actions from the root reaches the node's state, and every
        # measured step carries that step's real latency.
        x, y = 0, 0
        for step in context.lineage:
            if step.action != "root":
                dx, dy = moves[step.action]
                x, y = x + dx, y + dy
            if step.latency is not None:
                assert step.latency == latency((x, y))
                measured_steps += step.action != "root"
        assert (x, y) == context.state
    assert measured_steps > 0
    # "helped": each new best's action and its speed-up over the best before it, as the curve has it.
    bests = list(dict.fromkeys(t for _, t in result.curve))
    ratios = [a / b for a, b in zip(bests, bests[1:], strict=False)]
    for context in proposer.contexts:
        speedups = [s for _, s in context.helped]
        assert any(speedups == pytest.approx(ratios[:k][-8:]) for k in range(len(ratios) + 1)), (
            speedups
        )
        assert all(action in moves for action, _ in context.helped)
    assert proposer.contexts[-1].helped


def _nodes(root):
    stack, out = [root], []
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children)
    return out


def test_a_search_resumed_with_known_states_spends_samples_only_on_new_ones():
    # Rounds of a task scheduler: the second search reuses the first one's measurements (its
    # root among them, free); nothing is measured twice and each round spends exactly its budget.
    known = {}
    first, measured_1, _, _ = run(seed=3, budget=12, known=known)
    assert len(known) == 12 == len(measured_1)
    second, measured_2, _, model = run(seed=3, budget=12, known=known)
    assert second.samples == 12 == len(measured_2)
    assert not set(measured_1) & set(measured_2)  # the root and revisits came from `known`
    assert len(known) == 24
    again = {}
    run(seed=3, budget=12, known=again)
    run(seed=3, budget=12, known=again)
    assert again == known  # deterministic per seed


# ---------------------------------------------------------------- screening: cost-model rollouts
def grid_neighbours(state, rng, size=16):
    """Every state one or two steps away (what a rollout may move to): no measurement."""
    x, y = state
    out = [
        (x + dx, y + dy)
        for dx in (-2, -1, 0, 1, 2)
        for dy in (-2, -1, 0, 1, 2)
        if (dx or dy) and 0 <= x + dx < size and 0 <= y + dy < size
    ]
    rng.shuffle(out)
    return out


class CountingModel(ExactModel):
    def __init__(self):
        super().__init__()
        self.predicted = 0
        self.update_calls = []

    def predict(self, states):
        self.predicted += len(states)
        return super().predict(states)

    def update(self, states, latencies):
        self.update_calls.append(len(states))
        super().update(states, latencies)


def rollout_run(seed, budget, depth, width=8, latency_of=latency, **kw):
    measured = []

    def measure(state):
        measured.append(state)
        return latency_of(state)

    model = CountingModel()
    result = search(
        (0, 0),
        proposer=StepProposer(),
        cost_model=model,
        measure=measure,
        budget=budget,
        rng=random.Random(seed),
        rollout=grid_neighbours,
        rollout_depth=depth,
        rollout_width=width,
        **kw,
    )
    return result, measured, model


def test_rollouts_screen_many_states_per_measurement_and_spend_the_exact_budget():
    without, measured_0, model_0 = rollout_run(seed=0, budget=24, depth=0)
    with_rollouts, measured_3, model_3 = rollout_run(seed=0, budget=24, depth=3, width=8)
    assert without.samples == len(measured_0) == 24
    assert with_rollouts.samples == len(measured_3) == 24 == model_3.updates
    assert len(set(measured_3)) == 24  # nothing measured twice
    # Every prediction is counted as screened; rollouts add up to depth x width per child.
    assert with_rollouts.screened == model_3.predicted
    assert with_rollouts.screened >= 3 * without.screened
    rollout_nodes = [n for n in _nodes(with_rollouts.root) if n.action == "rollout"]
    assert rollout_nodes and all(n.parent is not with_rollouts.root for n in rollout_nodes)
    # A rollout node is kept only when the cost model predicts it better than its parent child.
    assert all(n.reward >= n.parent.reward or n.measured for n in rollout_nodes)


def median_samples_to_opt(run, budget=30):
    """Median over seeds 0-5 of the samples a search needs to measure the optimum."""
    out = []
    for seed in range(6):
        _, measured, _ = run(seed=seed, budget=budget)
        out.append(measured.index(OPT) + 1 if OPT in measured else budget + 1)
    return sorted(out)[len(out) // 2]


def assert_deterministic_per_seed(run):
    a, b, c = run(seed=5, budget=20), run(seed=5, budget=20), run(seed=6, budget=20)
    assert a[1] == b[1] and a[0].screened == b[0].screened and a[0].curve == b[0].curve
    assert c[1] != a[1]


def test_rollouts_reach_the_optimum_in_fewer_samples():
    # The exact model makes screening decisive: the optimum is 16 single steps from the start.
    def with_depth(depth):
        return median_samples_to_opt(lambda **kw: rollout_run(depth=depth, **kw))

    assert with_depth(3) < with_depth(0)


def test_rollout_search_is_deterministic_per_seed():
    assert_deterministic_per_seed(lambda **kw: rollout_run(depth=3, **kw))


def test_the_cost_model_retrains_once_per_measured_batch():
    result, _, model = rollout_run(seed=1, budget=20, depth=2, measure_batch=4, measure_every=2)
    assert sum(model.update_calls) == 20
    assert max(model.update_calls) == 4  # a batch of four measurements, one retraining
    assert len(model.update_calls) < 20


def test_transferred_starting_points_are_measured_first():
    starts = [(10, 4), (12, 6), (10, 4)]  # a duplicate is measured once
    result, measured, _ = rollout_run(seed=0, budget=10, depth=2, extra_roots=starts)
    assert measured[:3] == [(0, 0), (10, 4), (12, 6)]
    assert result.samples == 10
    transferred = [n for n in result.root.children if n.source == "transfer"]
    assert [n.state for n in transferred] == [(10, 4), (12, 6)]
    # The search goes on from the measured transfer: the optimum next to it is found quickly.
    assert OPT in measured


def test_starting_points_keep_the_source_they_are_given_with():
    starts = [Proposal("blocking", (6, 6), "tiles from the machine", "blocking"), (10, 4)]
    result, measured, _ = rollout_run(seed=0, budget=6, depth=0, extra_roots=starts)
    assert measured[:3] == [(0, 0), (6, 6), (10, 4)]
    sources = {n.state: n.source for n in result.root.children}
    assert sources[(6, 6)] == "blocking" and sources[(10, 4)] == "transfer"


def test_batched_measurement_is_the_same_search_with_whole_batches_at_once():
    """An RPC fleet measures a batch at once (``measure_many``): the search, its counts and its
    curve are what one-at-a-time measurement gives with the same batch size."""
    batches = []

    def measure_many(states):
        batches.append(list(states))
        return [latency(s) for s in states]

    for seed in range(3):
        one, measured_one, _, _ = run(seed, budget=37, measure_batch=4)
        batches.clear()
        many, measured_many, _, model = run(
            seed, budget=37, measure_batch=4, measure_many=measure_many
        )
        assert many.samples == one.samples == 37 == model.updates
        assert many.curve == one.curve and many.best.state == one.best.state
        batched = [s for batch in batches for s in batch]
        assert sorted(batched + measured_many) == sorted(measured_one)
        assert batches and all(1 < len(batch) <= 4 for batch in batches)
        assert len(set(batched)) == len(batched)  # never a state twice


def screen_run(seed, budget, screen, offerable=None, **kw):
    return rollout_run(seed, budget, depth=0, screen=screen, offerable=offerable, **kw)


def test_screening_scores_many_walks_per_batch_and_spends_the_exact_budget():
    without, _, _ = screen_run(seed=0, budget=24, screen=0)
    screened, measured, model = screen_run(seed=0, budget=24, screen=32)
    assert screened.samples == len(measured) == 24 == model.updates
    assert len(set(measured)) == 24  # nothing measured twice
    assert screened.screened == model.predicted
    # Up to 32 walks per batch (duplicates and states already in the tree are not rescored).
    assert screened.screened >= 3 * without.screened
    nodes = [n for n in _nodes(screened.root) if n.action == "screen"]
    assert nodes and all(n.source == "screen" for n in nodes)
    # A screened state hangs under the measured elite its walk started from, at most 3 moves
    # away (a move here goes up to two cells in x and y: a Chebyshev distance of 6 at most).
    for node in nodes:
        assert node.parent.measured and not node.parent.failed
        (x, y), (px, py) = node.state, node.parent.state
        assert 0 < max(abs(x - px), abs(y - py)) <= 6
    # Each batch adds at most measure_batch (2) screened states.
    batches = sum(1 for _ in model.update_calls)
    assert len(nodes) <= 2 * batches


def test_screening_reaches_the_optimum_in_fewer_samples():
    def with_screen(screen):
        return median_samples_to_opt(lambda **kw: screen_run(screen=screen, **kw))

    assert with_screen(64) < with_screen(0)


def test_screening_is_deterministic_per_seed():
    assert_deterministic_per_seed(lambda **kw: screen_run(screen=32, **kw))


def test_screening_adds_only_offerable_states():
    def offerable(state):
        return state[0] % 2 == 0  # odd columns "redo a reduction"

    result, _, _ = screen_run(seed=2, budget=24, screen=32, offerable=offerable)
    nodes = [n for n in _nodes(result.root) if n.action == "screen"]
    assert nodes and all(n.state[0] % 2 == 0 for n in nodes)


def test_screening_needs_a_neighbour_function_and_a_non_negative_count():
    with pytest.raises(ValueError, match="screen"):
        screen_run(seed=0, budget=4, screen=-1)
    # Without a neighbour function there is nothing to walk: the search runs as without it.
    measured = []

    def measure(state):
        measured.append(state)
        return latency(state)

    result = search(
        (0, 0),
        proposer=StepProposer(),
        cost_model=ExactModel(),
        measure=measure,
        budget=12,
        rng=random.Random(0),
        screen=16,
    )
    assert result.samples == 12
    assert not [n for n in _nodes(result.root) if n.action == "screen"]


# ------------------------------------------------------------ one sample per program, not per state
def program_of(state):
    """Two columns make one program (like a compute location naming a unit loop): x and x + 1
    for even x."""
    return (state[0] // 2, state[1])


def program_latency(state):
    return latency((state[0] // 2 * 2, state[1]))


def program_run(seed, budget, dedupe, screen=0, **kw):
    program = program_of if dedupe else None
    return rollout_run(
        seed, budget, 0, screen=screen, program=program, latency_of=program_latency, **kw
    )


@pytest.mark.parametrize("screen", [0, 32])
def test_states_of_a_measured_program_spend_no_sample(screen):
    repeats = 0
    for seed in range(4):
        plain, measured_plain, _ = program_run(seed, 30, dedupe=False, screen=screen)
        repeats += len(measured_plain) - len({program_of(s) for s in measured_plain})
        result, measured, model = program_run(seed, 30, dedupe=True, screen=screen)
        # The exact budget, every sample a new program, the cost model trained on each once.
        assert result.samples == len(measured) == 30 == model.updates
        assert len({program_of(s) for s in measured}) == 30
        # States that share a measured program took its latency, counted apart from samples.
        nodes = [n for n in _nodes(result.root) if n.measured]
        assert all(n.latency == program_latency(n.state) for n in nodes)
        assert len(nodes) == 30 + result.reused
        assert result.curve[-1][0] == 30
    assert repeats > 0  # without it, the same searches measure some programs twice


def test_one_sample_per_program_is_deterministic_per_seed():
    assert_deterministic_per_seed(lambda **kw: program_run(dedupe=True, screen=32, **kw))


def test_one_sample_per_program_in_batches_and_across_resumed_searches():
    batches = []

    def measure_many(states):
        batches.append(list(states))
        return [program_latency(s) for s in states]

    one, measured_one, _ = program_run(1, 25, dedupe=True, measure_batch=4)
    many, measured_many, _ = program_run(
        1, 25, dedupe=True, measure_batch=4, measure_many=measure_many
    )
    batched = [s for batch in batches for s in batch]
    assert many.samples == 25 == len(batched) + len(measured_many)
    assert many.curve == one.curve and many.reused == one.reused
    assert len({program_of(s) for s in batched + measured_many}) == 25
    # A resumed search shares the first one's programs: nothing is measured twice.
    known, programs = {}, {}
    _, first, _ = program_run(2, 12, dedupe=True, known=known, programs=programs)
    _, second, _ = program_run(2, 12, dedupe=True, known=known, programs=programs)
    assert len(first) == len(second) == 12 and len(programs) == 24
    assert not {program_of(s) for s in first} & {program_of(s) for s in second}
    # Given only the states (no table), the search derives their programs itself.
    _, third, _ = program_run(2, 12, dedupe=True, known=dict(known))
    assert not {program_of(s) for s in third} & set(programs)
