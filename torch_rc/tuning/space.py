"""The MetaSchedule design space of one TIR workload, as hashable states and named actions.

A state is a sketch (one of the design spaces ``PostOrderApply`` generates with the target's
schedule rules) plus concrete values for its sampling decisions (tile sizes, unroll depth, compute
locations). Two kinds of action change a state:

* **mutators** (the paper's actions): MetaSchedule's own mutators, named ``tile_size``,
  ``compute_location``, ``unroll`` and ``parallel``; TVM picks the new values at random from a seed,
  so applying one with a seed is deterministic;
* **concrete settings**: :meth:`DesignSpace.set_decision` gives one decision an explicit value
  (e.g. the tile factors ``[2, 4, 4, 8]`` of loop ``C.j``), validated against the decision's
  range; :attr:`DesignSpace.decisions` describes every decision (block, loop, extent, levels,
  candidates) so a proposer (an LLM or the built-in rules) can choose values, not only types.

A state becomes a schedule by replaying its trace on the workload and running the target's
postprocessors; a state whose replay or postprocessing fails is illegal (``schedule()`` returns
None) — failures are values here, as everywhere in tuning.

Some legal states redo work: a compute location that puts a reduction under a loop of its
consumer that the reduction's result does not depend on recomputes the whole reduction at every
step of that loop (a layer norm's variance under the column loop: 768 times per row, one
measurement here 175x slower than the unscheduled kernel). :meth:`DesignSpace.recomputation`
says how many times the worst reduction of a state runs over its domain; proposers skip states
above :data:`MAX_RECOMPUTE`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch_rc.platform.tvm_shim import prepare_meta_schedule, tvm_api

__all__ = ["MAX_RECOMPUTE", "MUTATORS", "Decision", "DesignSpace", "ScheduleState"]

# Action names -> MetaSchedule mutator classes (the paper's mutator types).
MUTATORS = {
    "tile_size": "MutateTileSize",
    "compute_location": "MutateComputeLocation",
    "unroll": "MutateUnroll",
    "parallel": "MutateParallel",
}
_SCHEDULE_CACHE = 256
_COMM_REDUCE = 2  # IterVar.iter_type of a reduction axis (tirx IterVar.CommReduce)
# A reduction run more than this many times over its iteration domain is wasted work that no
# loop order pays back; proposers do not offer such states (see the module docstring).
MAX_RECOMPUTE = 2.0


@dataclass(frozen=True)
class ScheduleState:
    """A sketch index and the values of its sampling decisions, by instruction index."""

    sketch: int
    decisions: tuple[tuple[int, Any], ...]

    def value(self, index: int) -> Any:
        for i, value in self.decisions:
            if i == index:
                return value
        raise KeyError(index)


@dataclass(frozen=True)
class Decision:
    """One sampling decision of a sketch, described for a proposer.

    Attributes:
        index: Instruction index in the sketch's trace (the key in ``ScheduleState.decisions``).
        kind: ``"tile"``, ``"unroll"``, ``"categorical"`` or ``"compute_location"``.
        block: The block it concerns (None when unknown).
        loop: The loop it splits (tiles), e.g. ``"j"``.
        spatial: True for a spatial loop, False for a reduction loop, None when unknown.
        extent: The loop's extent (tiles).
        levels: Number of tile factors (tiles).
        max_innermost: Largest allowed innermost factor (tiles).
        candidates: The values a categorical decision chooses between (unroll: max steps).
    """

    index: int
    kind: str
    block: str | None = None
    loop: str | None = None
    spatial: bool | None = None
    extent: int | None = None
    levels: int = 0
    max_innermost: int = 0
    candidates: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == "tile":
            return f"tile {self.block}.{self.loop}"
        if self.kind == "compute_location":
            return f"compute_location {self.block}"
        return self.kind

    def describe(self) -> str:
        if self.kind == "tile":
            role = {True: "spatial", False: "reduction", None: "loop"}[self.spatial]
            return (
                f"d{self.index}: tile sizes of {role} loop {self.block}.{self.loop} (extent "
                f"{self.extent}): {self.levels} factors, outermost first, product = {self.extent}, "
                f"innermost <= {self.max_innermost}"
            )
        if self.kind == "unroll":
            return f"d{self.index}: max auto-unroll steps, index into {list(self.candidates)}"
        if self.kind == "categorical":
            return f"d{self.index}: categorical choice, index into {list(self.candidates)}"
        return (
            f"d{self.index}: compute location of block {self.block} "
            "(-2 inline, -1 root, k = under its consumer's k-th loop)"
        )


def _plain(value: Any) -> Any:
    """A TVM decision (IntImm, Array) as plain, hashable Python."""
    if hasattr(value, "value"):
        return int(value.value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return tuple(_plain(v) for v in value)
    return int(value)


def _literal(value: Any) -> Any:
    if hasattr(value, "value"):
        return value.value
    return value


class DesignSpace:
    """Sketches, states and transformations of one workload (``mod`` with a ``main`` PrimFunc).

    Args:
        mod: The workload.
        target: The ``tvm.target.Target`` whose schedule rules make the sketches.
        seed: Seed of the sketch sampling.
    """

    def __init__(self, mod: Any, target: Any, *, seed: int = 0) -> None:
        api = tvm_api()
        prepare_meta_schedule(str(target.kind.name))
        ms = api.s_tir.meta_schedule
        self.mod = mod
        self.target = target
        self.context = ms.TuneContext(
            mod=mod,
            target=target,
            space_generator="post-order-apply",
            search_strategy="evolutionary",
            task_name="workload",
            rand_state=seed,
            num_threads=1,
        )
        generator = self.context.space_generator
        self.sketch_schedules = list(generator.generate_design_space(mod))
        self.sketches = [schedule.trace for schedule in self.sketch_schedules]
        self.postprocs = list(generator.postprocs)
        for postproc in self.postprocs:
            postproc._initialize_with_tune_context(self.context)
        self.mutator_probs: dict[str, float] = {}
        self._mutators: dict[str, Any] = {}
        by_class = {name: action for action, name in MUTATORS.items()}
        for mutator, probability in generator.mutator_probs.items():
            action = by_class.get(type(mutator).__name__)
            # MutateParallel rewrites an annotation, not a sampling decision, so it cannot change a
            # state as defined here; it is left out (the postprocessor still parallelises).
            if action is not None and action != "parallel":
                # Uninitialised mutators misbehave (docs/tvm-facts.md): bind each to the context.
                mutator._initialize_with_tune_context(self.context)
                self._mutators[action] = mutator
                self.mutator_probs[action] = float(probability)
        total = sum(self.mutator_probs.values()) or 1.0
        self.mutator_probs = {a: p / total for a, p in self.mutator_probs.items()}
        self.decisions = [self._describe(trace) for trace in self.sketches]
        self._schedules: OrderedDict[ScheduleState, Any] = OrderedDict()
        self._recomputation: dict[ScheduleState, tuple[str, float]] = {}

    # ----------------------------------------------------------------- description
    def _describe(self, trace: Any) -> list[Decision]:
        api = tvm_api()
        insts = list(trace.insts)
        produced: dict[int, tuple[Any, int]] = {}  # id of an RV -> (producing inst, output pos)
        for inst in insts:
            for pos, out in enumerate(inst.outputs):
                produced[out.__hash__()] = (inst, pos)
        consumers: dict[int, Any] = {}
        for inst in insts:
            for rv in inst.inputs:
                if hasattr(rv, "__hash__") and type(rv).__name__ in ("Var", "SizeVar"):
                    consumers.setdefault(rv.__hash__(), inst)
        unscheduled = api.s_tir.Schedule(self.mod)

        def block_name(block_rv: Any) -> str | None:
            source = produced.get(block_rv.__hash__())
            if source and source[0].kind.name == "GetSBlock":
                return str(source[0].attrs[0])
            return None

        out = []
        for index, inst in enumerate(insts):
            kind = inst.kind.name
            if kind == "SamplePerfectTile":
                levels, max_inner = int(_literal(inst.attrs[0])), int(_literal(inst.attrs[1]))
                block = loop = spatial = extent = None
                source = produced.get(inst.inputs[0].__hash__())
                if source and source[0].kind.name == "GetLoops":
                    block = block_name(source[0].inputs[0])
                    if block is not None:
                        try:
                            rv = unscheduled.get_sblock(block)
                            loops = unscheduled.get_loops(rv)
                            stmt = unscheduled.get(loops[source[1]])
                            loop = str(stmt.loop_var.name)
                            extent = int(_literal(stmt.extent))
                            iter_vars = unscheduled.get(rv).iter_vars
                            if len(iter_vars) == len(loops):
                                spatial = int(iter_vars[source[1]].iter_type) == 0
                        except Exception:  # a renamed or rewritten block: describe what we know
                            pass
                if extent is None:
                    extent = math.prod(_plain(trace.decisions[inst]))
                out.append(Decision(index, "tile", block, loop, spatial, extent, levels, max_inner))
            elif kind == "SampleCategorical":
                candidates = tuple(_literal(c) for c in inst.attrs[0])
                user = consumers.get(inst.outputs[0].__hash__())
                unroll = user is not None and "unroll" in " ".join(str(a) for a in user.attrs)
                out.append(
                    Decision(index, "unroll" if unroll else "categorical", candidates=candidates)
                )
            elif kind == "SampleComputeLocation":
                out.append(Decision(index, "compute_location", block_name(inst.inputs[0])))
        return out

    @property
    def actions(self) -> tuple[str, ...]:
        """The mutator actions legal for this workload (only mutators its rules produced)."""
        return tuple(self._mutators)

    def describe_state(self, state: ScheduleState) -> list[str]:
        """One line per decision: what it is and its value in ``state``."""
        lines = [f"sketch {state.sketch} of {len(self.sketches)}"]
        for decision in self.decisions[state.sketch]:
            value = state.value(decision.index)
            shown = list(value) if isinstance(value, tuple) else value
            if decision.kind in ("unroll", "categorical"):
                shown = f"{value} (= {decision.candidates[value]})"
            lines.append(f"{decision.describe()} = {shown}")
        return lines

    # ----------------------------------------------------------------------- states
    def _state_of(self, sketch: int, trace: Any) -> ScheduleState:
        insts = list(trace.insts)
        decisions = tuple(
            (d.index, _plain(trace.decisions[insts[d.index]]))
            for d in self.decisions[sketch]
            if d.index < len(insts) and insts[d.index] in trace.decisions
        )
        return ScheduleState(sketch, decisions)

    def initial_states(self) -> list[ScheduleState]:
        """One state per sketch, with the decisions sampled when the sketch was generated."""
        return [self._state_of(i, trace) for i, trace in enumerate(self.sketches)]

    def trace(self, state: ScheduleState) -> Any:
        """The sketch's trace with ``state``'s decisions."""
        trace = self.sketches[state.sketch]
        insts = list(trace.insts)
        for index, decision in state.decisions:
            trace = trace.with_decision(insts[index], decision, True)
        return trace

    def schedule(self, state: ScheduleState) -> Any | None:
        """Replay the state on the workload and postprocess it; None if that fails (illegal)."""
        if state in self._schedules:
            self._schedules.move_to_end(state)
            return self._schedules[state]
        api = tvm_api()
        sch: Any = None
        try:
            candidate = api.s_tir.Schedule(self.mod)
            self.trace(state).apply_to_schedule(candidate, remove_postproc=True)
            if all(postproc.apply(candidate) for postproc in self.postprocs):
                sch = candidate
        except Exception:  # TVM raises TVMError/ScheduleError for decisions that do not replay
            sch = None
        self._schedules[state] = sch
        if len(self._schedules) > _SCHEDULE_CACHE:
            self._schedules.popitem(last=False)
        return sch

    def legal(self, state: ScheduleState) -> bool:
        return self.schedule(state) is not None

    def recomputation(self, state: ScheduleState) -> tuple[str, float]:
        """The reduction block that ``state``'s schedule runs most often relative to its
        iteration domain, and that ratio: ``("", 1.0)`` when no reduction is redone (or the
        kernel has none), ``("", inf)`` for an illegal state. Executions are counted as the
        product of the extents of the loops around the block (MetaSchedule's tiles are perfect,
        so no predicate hides a tail)."""
        if state in self._recomputation:
            return self._recomputation[state]
        sch = self.schedule(state)
        worst: tuple[str, float] = ("", math.inf) if sch is None else ("", 1.0)
        if sch is not None:
            worst = _worst_recomputed(tvm_api().s_tir.Schedule(sch.mod))
        self._recomputation[state] = worst
        return worst

    def recomputes(self, state: ScheduleState) -> bool:
        """True if ``state`` redoes a reduction more than :data:`MAX_RECOMPUTE` times (or is
        illegal)."""
        return self.recomputation(state)[1] > MAX_RECOMPUTE

    # ---------------------------------------------------------------------- actions
    def mutate(self, state: ScheduleState, action: str, seed: int) -> ScheduleState | None:
        """Apply the named mutator with ``seed`` (deterministic); None if it found nothing to change.

        Raises:
            ValueError: ``action`` is not one of :attr:`actions`.
        """
        if action not in self._mutators:
            raise ValueError(
                f"unknown action {action!r} for this workload; legal: {', '.join(self.actions)}"
            )
        from tvm.s_tir.meta_schedule import _ffi_api

        # Mutator.apply() passes rand_state=-1 (unseeded); the FFI call takes the seed. TVM's
        # random engine is a Park-Miller LCG: seed 0 is a fixed point, and a mutator drawing from
        # it loops forever (docs/tvm-facts.md), so seeds are mapped into 1 .. 2**31 - 2.
        rand_state = 1 + int(seed) % (2**31 - 2)
        mutated = _ffi_api.MutatorApply(self._mutators[action], self.trace(state), rand_state)
        if mutated is None:
            return None
        new = self._state_of(state.sketch, mutated)
        if new == state:
            # MutateParallel changes an annotation, not a decision: such states are not tracked.
            return None
        return new

    def decision(self, state: ScheduleState, index: int) -> Decision:
        for decision in self.decisions[state.sketch]:
            if decision.index == index:
                return decision
        raise ValueError(
            f"d{index} is not a decision of sketch {state.sketch}; decisions: "
            + ", ".join(f"d{d.index}" for d in self.decisions[state.sketch])
        )

    def set_decision(self, state: ScheduleState, index: int, value: Any) -> ScheduleState:
        """``state`` with decision ``index`` set to ``value`` (validated against its range).

        Raises:
            ValueError: The decision does not exist or ``value`` is out of its range (the message
                says what the range is). Legality of the whole schedule is checked by
                :meth:`schedule`, not here.
        """
        decision = self.decision(state, index)
        if decision.kind == "tile":
            try:
                factors = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"d{index} needs a list of {decision.levels} integers, got {value!r}"
                ) from None
            if len(factors) != decision.levels or any(f < 1 for f in factors):
                raise ValueError(
                    f"d{index} needs {decision.levels} positive factors, got {list(factors)}"
                )
            if math.prod(factors) != decision.extent:
                raise ValueError(
                    f"d{index}: factors {list(factors)} multiply to {math.prod(factors)}, "
                    f"not the loop extent {decision.extent}"
                )
            if factors[-1] > decision.max_innermost:
                raise ValueError(
                    f"d{index}: innermost factor {factors[-1]} > {decision.max_innermost}"
                )
            new_value: Any = factors
        elif decision.kind in ("unroll", "categorical"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value < len(decision.candidates)
            ):
                raise ValueError(
                    f"d{index} needs an index 0..{len(decision.candidates) - 1} into "
                    f"{list(decision.candidates)}, got {value!r}"
                )
            new_value = value
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < -2:
                raise ValueError(f"d{index} needs an integer >= -2, got {value!r}")
            new_value = value
        decisions = tuple((i, new_value if i == index else v) for i, v in state.decisions)
        return ScheduleState(state.sketch, decisions)

    def switch_sketch(self, sketch: int) -> ScheduleState:
        """The initial state of another sketch.

        Raises:
            ValueError: No such sketch.
        """
        if not 0 <= sketch < len(self.sketches):
            raise ValueError(f"sketch {sketch} does not exist; there are {len(self.sketches)}")
        return self.initial_states()[sketch]


def _worst_recomputed(sch: Any) -> tuple[str, float]:
    worst = ("", 1.0)
    pending = [sch.get_sblock("root")]
    while pending:
        for child in sch.get_child_blocks(pending.pop()):
            pending.append(child)
            block = sch.get(child)
            if not any(int(iv.iter_type) == _COMM_REDUCE for iv in block.iter_vars):
                continue
            try:
                domain = math.prod(int(_literal(iv.dom.extent)) for iv in block.iter_vars)
                runs = math.prod(
                    int(_literal(sch.get(loop).extent)) for loop in sch.get_loops(child)
                )
            except (TypeError, ValueError):  # a symbolic extent: cannot count, do not judge
                continue
            ratio = runs / max(1, domain)
            if ratio > worst[1]:
                worst = (str(block.name_hint), ratio)
    return worst
