"""The MCTS kernel on a bandit with a known optimum: a 2-D grid of 'tile sizes' whose latency is a
known bowl; actions move one step. Exact counts, determinism, failures, and that real
measurements reach the tree."""

import math
import random

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
