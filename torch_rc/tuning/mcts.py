"""A pure Monte Carlo tree search kernel over program states (the Reasoning Compiler's search).

The kernel knows nothing of TVM: a state is any hashable value; a :class:`Proposer` turns a node
(with its ancestors' states and scores, its lineage's measured latencies and the moves that made
new bests) into candidate transformations; a :class:`CostModel`
predicts a reward in [0, 1] for states; a measure function returns a real latency (or None for a
failed candidate). Each round selects a leaf by UCT, expands it with up to ``branching`` proposals,
scores them with the cost model and backpropagates; every ``measure_every`` expansions the most
promising unmeasured states (plus an ``explore_fraction`` of random ones) are really measured, and
those measurements replace the predictions in the tree (the paper's code only retrained the cost
model with them) and retrain the cost model (once per batch, as MetaSchedule does).

**Screening.** A real measurement costs a build and timed runs (~0.2 s on a CPU); a prediction
costs a replay and a feature extraction (~4 ms). With a ``rollout`` function (cheap neighbours of
a state, no build), each new child is followed by a short greedy rollout under the cost model:
``rollout_depth`` steps, each scoring up to ``rollout_width`` neighbours and moving to the best
predicted one (an ``explore_fraction`` of steps move to a random one). The rollout's best state
joins the tree as the child's child (action ``rollout``), so it competes for measurement like any
other node and its real latency, once measured, replaces its prediction. Many states are screened
per measurement; only measured latencies decide what is best.

**Population screening** (``screen`` > 0, MetaSchedule's evolution inside the tree): before each
measurement batch, ``screen`` short random walks (1 to 3 moves of ``rollout``) start from the
fastest measured states (the elites, picked with weight 1 / rank); the cost model scores every
new state they reach, and the ``measure_batch`` best-predicted ones (that ``offerable`` accepts)
join the tree as children of the elite they came from (action ``screen``). They then compete with
the tree's own proposals for the batch by predicted value, and once measured their real latency
replaces the prediction like any other node's. Where the tree's single moves from one leaf stall,
the walks reach states two or three moves away from any good state, hundreds per measurement.

**One sample per program.** Different states can make the same program (outer tile levels the
postprocessor fuses into one parallel loop; a compute location naming a unit loop replays as the
loop outside it). With
a ``program`` function (a state's program identity, e.g. the structural hash of its scheduled
module), a state whose program was measured already takes that latency without a sample, and a
batch is filled until it holds ``measure_batch`` programs not measured yet; screening offers no
state whose program is measured or already offered.

Defaults follow the paper (Reasoning Compiler, arXiv 2506.01374): UCT exploration c = sqrt(2),
branching factor B = 2, ~5% random measurements.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = [
    "Proposal",
    "Step",
    "Context",
    "Proposer",
    "CostModel",
    "Node",
    "SearchResult",
    "search",
]

S = TypeVar("S", bound=Hashable)
_EMPTY_EXPANSIONS_TO_EXHAUST = 3
_HELPED_IN_CONTEXT = 8  # the latest new bests a proposer is shown
_SCREEN_ELITES = 8  # fastest measured states the screening walks start from
_SCREEN_MAX_MOVES = 3  # moves per screening walk, at most
_NEIGHBOUR_CACHE = 4096  # states whose neighbour lists a search keeps


@dataclass(frozen=True)
class Proposal(Generic[S]):
    """A transformation a proposer suggests: its name, the state it leads to, and why."""

    action: str
    state: S
    rationale: str = ""
    source: str = "builtin"
    next_model: str = ""  # a model pool's joint action: who should expand this child next


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a node's lineage as measured: the action that made it, who proposed it, and
    its real latency in seconds (None: not measured yet, or the candidate failed)."""

    action: str
    source: str
    latency: float | None = None
    failed: bool = False


@dataclass(frozen=True)
class Context(Generic[S]):
    """What a proposer sees: the node's state and score, and its ancestors' (nearest first).

    ``lineage`` is the measured history of the path from the root to the node (root first, the
    node last); ``helped`` the transformations that made a new best in this search so far, each
    with its speedup over the best before it (oldest first).
    """

    state: S
    score: float
    ancestors: tuple[tuple[S, float], ...]
    actions: tuple[str, ...]
    source: str = ""  # who proposed this node
    next_model: str = ""  # the model its proposer asked to expand it next
    ancestor_sources: tuple[str, ...] = ()  # who proposed each ancestor, nearest first
    lineage: tuple[Step, ...] = ()
    helped: tuple[tuple[str, float], ...] = ()


class Proposer(Protocol[S]):
    def propose(
        self, context: Context[S], count: int, rng: random.Random
    ) -> Sequence[Proposal[S]]: ...


class CostModel(Protocol[S]):
    """Predicts rewards on the scale measured rewards use: (best latency measured so far) /
    (predicted latency of the state), so 1.0 means "as fast as the best seen" and above 1.0
    "faster". MetaSchedule's XGBoost model is trained on exactly this (min_cost / cost)."""

    def predict(self, states: Sequence[S]) -> list[float]: ...
    def update(self, states: Sequence[S], latencies: Sequence[float | None]) -> None: ...


@dataclass(slots=True)
class Node(Generic[S]):
    """One program state in the tree."""

    state: S
    parent: Node[S] | None = None
    action: str = ""
    source: str = ""
    rationale: str = ""
    next_model: str = ""
    children: list[Node[S]] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    reward: float = 0.0  # predicted, replaced by the measured reward once measured
    latency: float | None = None
    measured: bool = False
    failed: bool = False
    exhausted: bool = False  # the proposer has nothing new for it or anything below it
    empty_expansions: int = 0

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def path(self) -> list[Node[S]]:
        node: Node[S] | None = self
        out = []
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


@dataclass
class SearchResult(Generic[S]):
    """Best measured state, and the best-latency-vs-samples curve."""

    best: Node[S] | None
    samples: int
    curve: list[tuple[int, float]]
    root: Node[S]
    nodes: int
    improvements: list[tuple[int, str]] = field(
        default_factory=list
    )  # (samples, source) of each new best
    screened: int = 0  # states the cost model scored (expansions and rollouts)
    reused: int = 0  # states that took a measured program's latency, no sample spent


def _uct(child: Node[S], parent_visits: int, exploration: float) -> float:
    if child.visits == 0:
        return math.inf
    return child.value + exploration * math.sqrt(math.log(parent_visits) / child.visits)


def _backpropagate(node: Node[S] | None, reward: float, visits: int = 1) -> None:
    while node is not None:
        node.visits += visits
        node.value_sum += reward
        node = node.parent


def search(
    root_state: S,
    *,
    proposer: Proposer[S],
    cost_model: CostModel[S],
    measure: Callable[[S], float | None],
    budget: int,
    rng: random.Random,
    exploration: float = math.sqrt(2.0),
    branching: int = 2,
    measure_every: int = 4,
    measure_batch: int = 2,
    explore_fraction: float = 0.05,
    context_depth: int = 2,
    actions: tuple[str, ...] = (),
    max_expansions: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    select: Callable[[list[Node[S]], int], Node[S]] | None = None,
    known: dict[S, float | None] | None = None,
    rollout: Callable[[S, random.Random], Sequence[S]] | None = None,
    rollout_depth: int = 0,
    rollout_width: int = 16,
    extra_roots: Sequence[S | Proposal[S]] = (),
    measure_many: Callable[[Sequence[S]], list[float | None]] | None = None,
    screen: int = 0,
    offerable: Callable[[S], bool] | None = None,
    program: Callable[[S], Hashable | None] | None = None,
    programs: dict[Hashable, float | None] | None = None,
) -> SearchResult[S]:
    """Search for a fast state, spending at most ``budget`` real measurements.

    Args:
        root_state: Where the search starts (measured first, as the baseline).
        proposer: Suggests transformations of a node.
        cost_model: Predicts rewards in [0, 1] (higher is faster) and learns from measurements.
        measure: Real latency of a state in seconds, or None if it failed (build error, wrong
            result); failures count as samples and get reward 0.
        budget: Real measurements allowed (the sample count reported everywhere).
        rng: Random generator (the search is deterministic given it and deterministic parts).
        exploration: UCT constant c (paper: sqrt(2)).
        branching: Children per expansion B (paper: 2, its most sample-efficient setting).
        measure_every: Expansions between measurement batches.
        measure_batch: States measured per batch.
        explore_fraction: Share of each batch drawn at random instead of by prediction (paper ~5%).
        context_depth: Ancestors shown to the proposer (paper: parent and grandparent = 2).
        actions: Names of the legal actions, passed to the proposer.
        max_expansions: Stop after this many expansions even if budget remains (default 50 x budget).
        should_stop: Polled every round; True ends the search early (a wall-clock limit).
        select: Tree policy choosing among open children (default UCT with ``exploration``);
            a model pool passes a model-aware one.
        known: Latencies of states measured before (a resumed search): reused without spending
            a sample, and filled with this search's measurements.
        rollout: Cheap neighbours of a state (no measurement), for cost-model rollouts.
        rollout_depth: Steps of each rollout (0: none).
        rollout_width: Neighbours scored per rollout step, at most.
        extra_roots: Other starting points: states (taken as transferred from tuned workloads)
            or :class:`Proposal` s that name their source (e.g. ``blocking``); they become the
            root's children and are measured first, in order, before any expansion.
        measure_many: Measures several states at once (an RPC fleet); used instead of
            ``measure`` for each batch when given. Same results, same order, same sample count.
        screen: Random walks scored per measurement batch (population screening, needs
            ``rollout``; 0: none).
        offerable: States the screening may add (default: any); e.g. legal and not redoing work.
        program: A state's program identity (None: unknown, e.g. illegal); states of one program
            share one measurement (default: every state is its own program).
        programs: Latencies by program measured before (a resumed search), filled like ``known``.
    """
    if screen < 0:
        raise ValueError(f"screen must be >= 0, got {screen}")
    known = known if known is not None else {}
    program_of: dict[S, Hashable | None] = {}

    def program_key(state: S) -> Hashable | None:
        if program is None:
            return None
        if state not in program_of:
            program_of[state] = program(state)
        return program_of[state]

    by_program: dict[Hashable, float | None] = programs if programs is not None else {}
    if programs is None and program is not None:
        for state, latency in known.items():
            key = program_key(state)
            if key is not None:
                by_program.setdefault(key, latency)
    root: Node[S] = Node(root_state)
    seen: dict[S, Node[S]] = {root_state: root}
    curve: list[tuple[int, float]] = []
    best: list[Node[S] | None] = [None]
    samples = [0]
    fastest = [math.inf]

    measured: list[Node[S]] = []
    improvements: list[tuple[int, str]] = []
    helped: list[tuple[str, float]] = []  # (action, speedup over the previous best) of new bests

    def set_reward(node: Node[S], reward: float) -> None:
        # Replace the node's own contribution; its ancestors' sums change by the same delta.
        delta = reward - node.reward
        node.reward = reward
        if node.visits and delta:
            _backpropagate(node, delta, visits=0)

    screened = [0]
    reused = [0]

    def needs_sample(state: S, taken: set[Hashable]) -> bool:
        """Whether measuring ``state`` costs a sample (its program is new, and not among
        ``taken``, the programs of a batch being filled, which it joins)."""
        if state in known:
            return False
        key = program_key(state)
        if key is None:
            return True
        if key in by_program or key in taken:
            return False
        taken.add(key)
        return True

    def take(pending: list[Node[S]], want: int, explore: float) -> list[Node[S]]:
        """Pop nodes off ``pending`` (best first; ``explore``: share of random picks) until
        ``want`` of them need a sample; the others ride along for free."""
        batch: list[Node[S]] = []
        taken: set[Hashable] = set()
        real = 0
        while pending and real < want:
            pick = rng.randrange(len(pending)) if explore and rng.random() < explore else 0
            node = pending.pop(pick)
            batch.append(node)
            real += needs_sample(node.state, taken)
        return batch

    def record_batch(nodes: Sequence[Node[S]]) -> None:
        """Measure ``nodes`` (those whose program is not known yet), then retrain the cost
        model once."""
        fresh: list[tuple[S, float | None]] = []
        taken: set[Hashable] = set()
        todo = list(dict.fromkeys(n.state for n in nodes if needs_sample(n.state, taken)))
        batch: dict[S, float | None] = {}
        if measure_many is not None and len(todo) > 1:
            batch = dict(zip(todo, measure_many(todo), strict=True))
        for node in nodes:
            state = node.state
            if state not in known:
                key = program_key(state)
                if key is not None and key in by_program:
                    known[state] = by_program[key]  # the same program, measured: no sample
                    reused[0] += 1
                else:
                    known[state] = batch[state] if state in batch else measure(state)
                    samples[0] += 1
                    fresh.append((state, known[state]))
                    if key is not None:
                        by_program[key] = known[state]
            record(node)
        if fresh:
            cost_model.update([state for state, _ in fresh], [lat for _, lat in fresh])

    def record(node: Node[S]) -> None:
        latency = known[node.state]
        node.measured = True
        node.latency = latency
        if latency is None or not math.isfinite(latency) or latency <= 0:
            node.failed = True
            set_reward(node, 0.0)
        else:
            measured.append(node)
            if latency < fastest[0]:
                if math.isfinite(fastest[0]):
                    helped.append((node.action or "root", fastest[0] / latency))
                fastest[0] = latency
                best[0] = node
                improvements.append((samples[0], node.source or "root"))
                # Rewards are fastest / latency: a new best rescales every measured node.
                for other in measured:
                    set_reward(other, fastest[0] / other.latency)  # type: ignore[operator]
            else:
                set_reward(node, fastest[0] / latency)
        if best[0] is not None and best[0].latency is not None:
            curve.append((samples[0], best[0].latency))

    def predict(states: Sequence[S]) -> list[float]:
        screened[0] += len(states)
        return [float(v) for v in cost_model.predict(states)]

    def add_child(parent: Node[S], proposal: Proposal[S], predicted: float) -> Node[S]:
        child: Node[S] = Node(
            proposal.state,
            parent,
            proposal.action,
            proposal.source,
            proposal.rationale,
            proposal.next_model,
            reward=predicted,
        )
        parent.children.append(child)
        seen[proposal.state] = child
        _backpropagate(child, child.reward)
        return child

    def roll_out(child: Node[S]) -> None:
        """Greedy steps under the cost model from ``child``; its best state becomes a node."""
        state, best_state, best_value, steps = child.state, None, child.reward, 0
        visited = {state}
        for step in range(rollout_depth):
            neighbours = [
                n
                for n in rollout(state, rng)
                if n not in seen and n not in visited  # type: ignore[misc]
            ][:rollout_width]
            if not neighbours:
                break
            values = predict(neighbours)
            if rng.random() < explore_fraction:
                pick = rng.randrange(len(neighbours))
            else:
                pick = max(range(len(neighbours)), key=values.__getitem__)
            state = neighbours[pick]
            visited.add(state)
            if values[pick] > best_value:
                best_state, best_value, steps = state, values[pick], step + 1
        if best_state is not None:
            rationale = f"cost-model rollout, {steps} moves from its parent"
            add_child(child, Proposal("rollout", best_state, rationale, "rollout"), best_value)

    neighbour_lists: dict[S, list[S]] = {}

    def neighbours_of(state: S) -> list[S]:
        found = neighbour_lists.get(state)
        if found is None:
            found = list(rollout(state, rng))  # type: ignore[misc]
            if len(neighbour_lists) >= _NEIGHBOUR_CACHE:
                neighbour_lists.clear()
            neighbour_lists[state] = found
        return found

    def screen_population() -> None:
        """Random walks from the elites, scored; the best-predicted new states join the tree."""
        elites = sorted(measured, key=lambda n: n.latency)[:_SCREEN_ELITES]  # type: ignore[arg-type,return-value]
        if not elites:
            return
        weights = [1.0 / (rank + 1) for rank in range(len(elites))]
        found: dict[S, tuple[Node[S], int]] = {}
        for _ in range(screen):
            parent = rng.choices(elites, weights=weights)[0]
            state, moves = parent.state, 0
            for _ in range(rng.randint(1, _SCREEN_MAX_MOVES)):
                options = neighbours_of(state)
                if not options:
                    break
                state, moves = options[rng.randrange(len(options))], moves + 1
            if moves and state not in seen and state not in found:
                found[state] = (parent, moves)
        if not found:
            return
        states = list(found)
        values = predict(states)
        ranked = sorted(range(len(states)), key=lambda i: (-values[i], i))
        kept = 0
        offered: set[Hashable] = set()
        for i in ranked:
            if kept >= measure_batch:
                break
            if offerable is not None and not offerable(states[i]):
                continue
            if not needs_sample(states[i], offered):
                continue  # a program measured or offered already: nothing new to learn
            parent, moves = found[states[i]]
            rationale = (
                f"best predicted of {len(states)} screened states; "
                f"{moves} random move(s) from a measured elite"
            )
            add_child(parent, Proposal("screen", states[i], rationale, "screen"), values[i])
            kept += 1

    record_batch([root])
    _backpropagate(root, root.reward)
    labelled = [
        r
        if isinstance(r, Proposal)
        else Proposal("transfer", r, "from a tuned workload", "transfer")
        for r in extra_roots
    ]
    starts: list[Proposal[S]] = []
    for proposal in labelled:
        if proposal.state not in seen and all(p.state != proposal.state for p in starts):
            starts.append(proposal)
    if starts:
        values = predict([p.state for p in starts])
        for proposal, value in zip(starts, values, strict=True):
            add_child(root, proposal, value)
        record_batch(take([seen[p.state] for p in starts], budget - samples[0], 0.0))
    expansions = 0
    limit = max_expansions if max_expansions is not None else 50 * max(budget, 1)
    stop = should_stop or (lambda: False)
    while samples[0] < budget and expansions < limit and not stop():
        leaf = root
        while True:
            open_children = [c for c in leaf.children if not c.exhausted]
            if not open_children:
                break  # a fresh leaf, or one whose subtree is used up: (re-)expand it
            parent_visits = max(leaf.visits, 1)
            if select is not None:
                leaf = select(open_children, parent_visits)
            else:
                leaf = max(open_children, key=lambda c, v=parent_visits: _uct(c, v, exploration))
        path = leaf.path()
        ancestors = tuple((n.state, n.reward) for n in path[-context_depth - 1 : -1][::-1])
        context = Context(
            leaf.state,
            leaf.reward,
            ancestors,
            actions,
            leaf.source,
            leaf.next_model,
            tuple(n.source for n in path[-context_depth - 1 : -1][::-1]),
            tuple(Step(n.action or "root", n.source or "root", n.latency, n.failed) for n in path),
            tuple(helped[-_HELPED_IN_CONTEXT:]),
        )
        proposals = [p for p in proposer.propose(context, branching, rng) if p.state not in seen]
        expansions += 1
        if not proposals:
            # Proposers (an LLM especially) may repeat themselves: give up on a node only after
            # several expansions in a row brought nothing new.
            leaf.empty_expansions += 1
            leaf.exhausted = leaf.empty_expansions >= _EMPTY_EXPANSIONS_TO_EXHAUST
            if root.exhausted:
                break  # every reachable state is in the tree
            continue
        leaf.empty_expansions = 0
        predictions = predict([p.state for p in proposals])
        children = [
            add_child(leaf, proposal, predicted)
            for proposal, predicted in zip(proposals, predictions, strict=True)
        ]
        if rollout is not None and rollout_depth > 0:
            for child in children:
                roll_out(child)
        if expansions % measure_every == 0:
            if screen and rollout is not None:
                screen_population()
            pending = [n for n in seen.values() if not n.measured]
            pending.sort(key=lambda n: n.reward, reverse=True)
            want = min(measure_batch, budget - samples[0])
            record_batch(take(pending, want, explore_fraction))
    # Whatever is still only predicted gets measured, best prediction first, while budget remains.
    leftovers = sorted(
        (n for n in seen.values() if not n.measured), key=lambda n: n.reward, reverse=True
    )
    chunk = measure_batch if measure_many is not None else 1
    while leftovers and samples[0] < budget and not stop():
        record_batch(take(leftovers, min(chunk, budget - samples[0]), 0.0))
    return SearchResult(
        best[0], samples[0], curve, root, len(seen), improvements, screened[0], reused[0]
    )
