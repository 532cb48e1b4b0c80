"""The built-in, hardware-informed proposer: works offline, and is the LLM proposer's fallback.

It is a set of rules, not a model, and is labeled ``builtin`` everywhere it appears. For a node it
generates candidate transformations — moves of one prime factor between the levels of a tile,
vector-width innermost tiles, unroll settings, MetaSchedule's own random mutations, and the other
sketches — scores every candidate state with rules about the hardware, and proposes the best ones
(with a little randomness so that repeated expansions of one node differ):

* **vectorise**: the innermost factor of the innermost spatial loop (the one the postprocessor
  vectorises) is a multiple of the vector lanes;
* **registers**: the innermost register tile (accumulators updated per reduction step) uses most,
  but not more than, the vector registers;
* **L1**: the data touched by the innermost reduction tile fits the L1 data cache;
* **parallel**: the outermost spatial tiles give at least two iterations per core;
* **unroll**: moderate auto-unroll (16 or 64 steps) over none or 512.

On a GPU (MetaSchedule's ``SSSRRSRS`` tiling: spatial levels block, virtual thread, thread,
then two per-thread levels) the rules are instead:

* **threads**: threads per block (product of the thread level) a multiple of the warp size,
  128-512 preferred, never above the block limit;
* **occupancy**: at least two blocks per SM;
* **registers**: 4-64 accumulators per thread (register reuse without spilling);
* **shared**: the block's shared-memory tiles fit the per-block shared memory;
* **unroll**: 64-512 steps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from torch_rc.platform.hardware import AnyHardware, GPUHardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.mcts import Context, Proposal
from torch_rc.tuning.space import Decision, DesignSpace, ScheduleState

__all__ = ["RuleProposer", "gpu_rule_score", "output_bits", "rule_score"]

_UNROLL_PREFERENCE = {0: 0.6, 16: 1.0, 64: 1.0, 512: 0.7}
_MUTATION_TRIES = 6


def _smallest_prime(n: int) -> int:
    for p in range(2, int(math.isqrt(n)) + 1):
        if n % p == 0:
            return p
    return n


def output_bits(space: DesignSpace) -> int:
    """Bits of the workload's output dtype (the vector lanes depend on it)."""
    cached = getattr(space, "_output_bits", None)
    if cached is not None:
        return cached
    try:
        info = tvm_api().s_tir.meta_schedule.arg_info.ArgInfo.from_prim_func(space.mod["main"])[-1]
        bits = int(tvm_api().tvm.DataType(str(info.dtype)).bits) or 32
    except Exception:  # an unusual signature: assume fp32
        bits = 32
    space._output_bits = bits  # type: ignore[attr-defined]
    return bits


_GPU_UNROLL_PREFERENCE = {0: 0.6, 16: 0.8, 32: 0.9, 64: 1.0, 128: 1.0, 256: 1.0, 512: 1.0}


def gpu_rule_score(
    space: DesignSpace, state: ScheduleState, hardware: GPUHardware
) -> tuple[float, dict[str, float]]:
    """The GPU rules' score of ``state`` in (0, 1] and each rule's factor."""
    decisions = space.decisions[state.sketch]
    tiles = [(d, state.value(d.index)) for d in decisions if d.kind == "tile"]
    spatial = [v for d, v in tiles if d.spatial is not False and len(v) >= 5]
    reduction = [v for d, v in tiles if d.spatial is False]
    parts: dict[str, float] = {}
    if spatial:
        threads = math.prod(v[2] for v in spatial)
        if threads > hardware.max_threads_per_block:
            parts["threads"] = 0.05
        elif threads % hardware.warp_size:
            parts["threads"] = 0.3 * min(1.0, threads / hardware.warp_size)
        else:
            parts["threads"] = 1.0 if 128 <= threads <= 512 else 0.7
        blocks = math.prod(v[0] for v in spatial)
        wanted = 2 * hardware.sms
        parts["occupancy"] = 1.0 if blocks >= wanted else max(0.1, blocks / wanted)
        per_thread = math.prod(v[1] * v[3] * v[4] for v in spatial)
        if per_thread < 4:
            parts["registers"] = 0.5 + 0.5 * per_thread / 4
        elif per_thread > 64:
            parts["registers"] = max(0.1, 64 / per_thread)
        else:
            parts["registers"] = 1.0
        k_tile = math.prod(math.prod(v[1:]) for v in reduction) if reduction else 1
        block_tiles = [math.prod(v[1:]) for v in spatial]
        shared = k_tile * sum(block_tiles[-2:]) * output_bits(space) // 8
        parts["shared"] = 1.0 if shared <= hardware.shared_memory_per_block else 0.05
    for decision in decisions:
        if decision.kind == "unroll":
            steps = decision.candidates[state.value(decision.index)]
            parts["unroll"] = _GPU_UNROLL_PREFERENCE.get(int(steps), 0.8)
    return (math.prod(parts.values()) if parts else 0.5), parts


def rule_score(
    space: DesignSpace, state: ScheduleState, hardware: AnyHardware
) -> tuple[float, dict[str, float]]:
    """The rules' score of ``state`` in (0, 1] and each rule's factor (for rationales)."""
    if isinstance(hardware, GPUHardware):
        return gpu_rule_score(space, state, hardware)
    decisions = space.decisions[state.sketch]
    lanes = hardware.lanes(output_bits(space))
    bits = output_bits(space)
    tiles = [(d, state.value(d.index)) for d in decisions if d.kind == "tile"]
    spatial = [(d, v) for d, v in tiles if d.spatial is not False]
    reduction = [(d, v) for d, v in tiles if d.spatial is False]
    parts: dict[str, float] = {}
    if spatial:
        inner_decision, inner = spatial[-1]
        v = inner[-1]
        if v % lanes == 0:
            parts["vectorise"] = 1.0 if v <= 4 * lanes else 0.8
        elif inner_decision.extent is not None and inner_decision.extent < lanes:
            parts["vectorise"] = 0.8  # the loop is shorter than a vector: nothing better exists
        else:
            parts["vectorise"] = 0.25 + 0.5 * min(v, lanes) / lanes
        rows = math.prod(f[-1] for _, f in spatial[:-1])
        registers = math.ceil(rows * v / lanes)
        low, high = 4, hardware.vector_registers - 3
        if registers < low:
            parts["registers"] = 0.5 + 0.5 * registers / low
        elif registers > high:
            parts["registers"] = max(0.1, high / registers)
        else:
            parts["registers"] = 1.0
        tile_rows = math.prod(math.prod(f[len(f) // 2 :]) for _, f in spatial[:-1])
        tile_cols = math.prod(inner[len(inner) // 2 :])
        k_inner = math.prod(f[-1] for _, f in reduction) if reduction else 1
        working = (k_inner * (tile_rows + tile_cols) + tile_rows * tile_cols) * bits // 8
        parts["L1"] = 1.0 if working <= hardware.l1_bytes else max(0.2, hardware.l1_bytes / working)
        outer = math.prod(f[0] for _, f in spatial)
        if len(spatial[0][1]) > 2:
            outer *= math.prod(f[1] for _, f in spatial)
        wanted = 2 * hardware.cores
        parts["parallel"] = 1.0 if outer >= wanted else max(0.1, outer / wanted)
    for decision in decisions:
        if decision.kind == "unroll":
            steps = decision.candidates[state.value(decision.index)]
            parts["unroll"] = _UNROLL_PREFERENCE.get(int(steps), 0.8)
    return (math.prod(parts.values()) if parts else 0.5), parts


class RuleProposer:
    """Hardware-informed proposals for one design space (see the module docstring).

    Args:
        space: The workload's design space.
        hardware: The machine the kernels run on.
        temperature: Randomness of the choice among scored candidates (0: always the best).
    """

    label = "builtin"

    def __init__(
        self, space: DesignSpace, hardware: AnyHardware, *, temperature: float = 0.15
    ) -> None:
        self.space = space
        self.hardware = hardware
        self.temperature = temperature
        # The search's learned cost model (set by the tuner): once trained on real measurements,
        # it ranks the candidate moves instead of the rules.
        self.model: Any = None

    def _moves(self, state: ScheduleState, rng: random.Random) -> list[tuple[str, ScheduleState]]:
        space = self.space
        out: list[tuple[str, ScheduleState]] = []
        # On a GPU the innermost tile is per-thread work, not vector lanes: no lane moves.
        lanes = (
            0 if isinstance(self.hardware, GPUHardware) else self.hardware.lanes(output_bits(space))
        )
        tiles = [d for d in space.decisions[state.sketch] if d.kind == "tile"]
        innermost = [d for d in tiles if d.spatial is not False][-1:] or tiles[-1:]
        for decision in space.decisions[state.sketch]:
            value = state.value(decision.index)
            if decision.kind == "tile":
                out += self._tile_moves(
                    state, decision, value, lanes if decision in innermost else 0
                )
            elif decision.kind in ("unroll", "categorical"):
                for choice in range(len(decision.candidates)):
                    if choice != value:
                        label = f"set d{decision.index} ({decision.name}) to {decision.candidates[choice]}"
                        out.append((label, space.set_decision(state, decision.index, choice)))
        for action, probability in space.mutator_probs.items():
            for _ in range(max(1, round(_MUTATION_TRIES * probability))):
                new = space.mutate(state, action, rng.randrange(1, 2**31 - 1))
                if new is not None:
                    out.append((f"mutate {action} (TVM random)", new))
        for sketch in range(len(space.sketches)):
            if sketch != state.sketch:
                out.append((f"switch to sketch {sketch}", space.switch_sketch(sketch)))
        return out

    def _tile_moves(
        self, state: ScheduleState, decision: Decision, value: tuple[int, ...], lanes: int
    ) -> list[tuple[str, ScheduleState]]:
        out = []
        n = len(value)
        for src in range(n):
            if value[src] == 1:
                continue
            p = _smallest_prime(value[src])
            for dst in range(n):
                if dst == src:
                    continue
                new = list(value)
                new[src] //= p
                new[dst] *= p
                if new[-1] > decision.max_innermost:
                    continue
                label = f"tile {decision.block}.{decision.loop}: move factor {p} from level {src} to {dst} -> {new}"
                out.append((label, self.space.set_decision(state, decision.index, new)))
        extent = decision.extent or math.prod(value)
        if lanes and extent % lanes == 0 and value[-1] % lanes:
            rest = extent // lanes
            new = [1] * n
            new[-1] = lanes
            new[0] = rest
            label = (
                f"tile {decision.block}.{decision.loop}: innermost = {lanes} vector lanes -> {new}"
            )
            out.append((label, self.space.set_decision(state, decision.index, new)))
        return out

    def neighbours(self, state: ScheduleState, rng: random.Random) -> list[ScheduleState]:
        """Every state one built-in move away, in random order (for cost-model rollouts: no
        scoring, no legality check here; an illegal state predicts 0)."""
        states = list(dict.fromkeys(new for _, new in self._moves(state, rng) if new != state))
        rng.shuffle(states)
        return states

    def _scored(
        self, state: ScheduleState, rng: random.Random
    ) -> list[tuple[ScheduleState, tuple[float, str, dict[str, float]]]]:
        scored: dict[ScheduleState, tuple[float, str, dict[str, float]]] = {}
        for label, new in self._moves(state, rng):
            if new == state or new in scored:
                continue
            score, parts = rule_score(self.space, new, self.hardware)
            scored[new] = (score, label, parts)
        if self._learned():
            states = list(scored)
            for new, predicted in zip(states, self.model.predict(states), strict=True):
                _, label, parts = scored[new]
                scored[new] = (float(predicted), label, {**parts, "model": float(predicted)})
        return sorted(scored.items(), key=lambda item: item[1][0], reverse=True)

    def offerable(self, state: ScheduleState) -> bool:
        """Legal and not redoing a reduction (``DesignSpace.recomputes``): neither rules nor a
        cost model trained on a few samples see that cost, and it can be 100x."""
        return self.space.legal(state) and not self.space.recomputes(state)

    def _learned(self) -> bool:
        return self.model is not None and getattr(self.model, "trained", False)

    def climb(
        self, state: ScheduleState, rng: random.Random, steps: int = 6
    ) -> tuple[ScheduleState, list[str]]:
        """Greedy best-improvement moves under the rules, up to ``steps``; the state and the moves."""
        labels: list[str] = []
        score = rule_score(self.space, state, self.hardware)[0]
        for _ in range(steps):
            better = (item for item in self._scored(state, rng) if item[1][0] > score * 1.001)
            # The best-scored offerable move: replays only until one is found.
            found = next((item for item in better if self.offerable(item[0])), None)
            if found is None:
                break
            state, (score, label, _) = found
            labels.append(label)
        return state, labels

    def propose(
        self, context: Context[ScheduleState], count: int, rng: random.Random
    ) -> Sequence[Proposal[ScheduleState]]:
        state = context.state
        before, _ = rule_score(self.space, state, self.hardware)
        chosen: list[Proposal[ScheduleState]] = []
        learned = self._learned()
        climbed, moves = (state, []) if learned else self.climb(state, rng)
        if moves:
            after = rule_score(self.space, climbed, self.hardware)[0]
            chosen.append(
                Proposal(
                    "; ".join(moves),
                    climbed,
                    f"rules score {before:.2f} -> {after:.2f} in {len(moves)} greedy moves",
                    self.label,
                )
            )
        ranked = [item for item in self._scored(state, rng) if item[0] != climbed]
        while ranked and len(chosen) < count:
            if learned and not chosen:
                pick = 0  # the model's favourite first, then a sample
            elif self.temperature > 0:
                top = max(ranked[0][1][0], 1e-9)
                weights = [
                    math.exp((s - top) / (self.temperature * top)) for _, (s, _, _) in ranked
                ]
                pick = rng.choices(range(len(ranked)), weights=weights)[0]
            else:
                pick = 0
            new, (score, label, parts) = ranked.pop(pick)
            if not self.offerable(new):
                continue
            if learned:
                rationale = f"cost model predicts {score:.2f} of the best measured"
                chosen.append(Proposal(label, new, rationale, self.label))
                continue
            worst = min(parts, key=parts.get) if parts else "-"
            rationale = f"rules score {before:.2f} -> {score:.2f}" + (
                f"; weakest rule now: {worst} ({parts[worst]:.2f})" if parts else ""
            )
            chosen.append(Proposal(label, new, rationale, self.label))
        return chosen

    def describe(self) -> dict[str, Any]:
        return {"proposer": self.label, "hardware": self.hardware.describe()}
