"""The LLM proposer: asks a language model for transformations of an MCTS node, validates every
answer, and falls back to the built-in rules for whatever is missing or invalid.

The prompt carries the hardware, the node's scheduled TIR (trimmed), its decisions and predicted
score, how its ancestors (``context_depth`` of them, with their scores) differ from it, the
measured history of its lineage (each step's action, proposer and real latency, and its speed-up
over the last measured step before it; the latest 8 steps), the transformations that made a new
best in this search with their speed-ups, and the legal actions with their ranges. The model
reasons briefly and answers JSON:

``{"reasoning": "...", "proposals": [{"action": "set", "decision": "d7", "value": [2, 8, 1, 8],
"why": "..."}, {"action": "mutate_unroll"}, ...]}``

In ``mutators`` mode (the paper's form) only ``mutate_*`` actions are offered and TVM draws the
values. Each proposal is checked: the action is legal, the decision exists, the value is in range,
the trace replays, the postprocessors accept it and no reduction is recomputed over and over
(``DesignSpace.recomputes``). Invalid proposals, failed calls and unparsable answers are counted,
and the built-in proposer fills the gap (the **fallback rate** is reported).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from typing import Any

from torch_rc.platform.hardware import AnyHardware
from torch_rc.tuning.llm_client import LLMClient
from torch_rc.tuning.mcts import Context, Proposal
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.space import MAX_RECOMPUTE, DesignSpace, ScheduleState

__all__ = ["LLMProposer", "parse_answer", "top_up"]

logger = logging.getLogger(__name__)

_SYSTEM = (
    "You are an expert performance engineer tuning one TVM TensorIR kernel with MetaSchedule. "
    "Propose schedule transformations that make it faster on the given hardware. Think about "
    "vectorisation of the innermost loop, register tiles, cache-sized tiles, enough parallel "
    "iterations for the cores, and unrolling. Answer with JSON only, in the format asked."
)


def top_up(
    fallback: Any,
    context: Context[ScheduleState],
    count: int,
    rng: random.Random,
    out: Sequence[Proposal[ScheduleState]],
) -> list[Proposal[ScheduleState]]:
    """The fallback's proposals that are not already in ``out``, as many as ``out`` lacks."""
    have = {p.state for p in out}
    return [p for p in fallback.propose(context, count, rng) if p.state not in have][
        : count - len(out)
    ]


def parse_answer(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text`` (whole text, a fenced block, or the last {...}); None if none."""
    text = text.strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.S)
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start : text.rfind("}") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


class LLMProposer:
    """MCTS proposer backed by an OpenAI-compatible model (see the module docstring).

    Args:
        space: The workload's design space.
        hardware: The machine (described in the prompt).
        client: The chat client.
        fallback: Fills in for invalid or missing proposals (default: the built-in rules).
    """

    def __init__(
        self,
        space: DesignSpace,
        hardware: AnyHardware,
        client: LLMClient,
        fallback: RuleProposer | None = None,
    ) -> None:
        self.space = space
        self.hardware = hardware
        self.client = client
        self.mode = client.config.mode
        self.fallback = fallback or RuleProposer(space, hardware)
        self.label = f"llm:{client.config.model}"
        self.proposed = 0
        self.accepted = 0
        self.invalid = 0
        self.fallbacks = 0
        self.unparsable = 0
        self.failed_calls = 0
        self.rationales: list[str] = []

    # ------------------------------------------------------------------ prompt
    def _actions(self) -> list[str]:
        mutators = [f"mutate_{name}" for name in self.space.actions]
        if self.mode == "mutators":
            return mutators
        actions = ["set"] + mutators
        if len(self.space.sketches) > 1:
            actions.append("switch_sketch")
        return actions

    def schema(self, count: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "type": "object",
            "properties": {"action": {"type": "string", "enum": self._actions()}},
            "required": ["action"],
        }
        if self.mode == "values":
            item["properties"]["decision"] = {"type": "string", "pattern": "^d[0-9]{1,4}$"}
            item["properties"]["value"] = {
                "anyOf": [
                    {"type": "integer"},
                    # bounded: a small model can otherwise loop inside an array until max_tokens
                    {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
                ]
            }
            item["properties"]["why"] = {"type": "string", "maxLength": 160}
        return {
            "type": "object",
            "properties": {
                # Bounded so that a rambling model cannot run out of tokens before the JSON closes.
                "reasoning": {"type": "string", "maxLength": 300},
                "proposals": {"type": "array", "items": item, "minItems": 1, "maxItems": count},
            },
            "required": ["reasoning", "proposals"],
        }

    def prompt(self, context: Context[ScheduleState], count: int) -> list[dict[str, str]]:
        space = self.space
        sch = space.schedule(context.state)
        ir = sch.mod.script() if sch is not None else "(does not replay)"
        limit = self.client.config.ir_chars
        if len(ir) > limit:
            ir = ir[:limit] + "\n# ... (trimmed)"
        lines = [
            f"Hardware: {self.hardware.describe()}.",
            "",
            "Current scheduled kernel (TVMScript):",
            ir,
            "",
            f"Current schedule decisions (predicted score {context.score:.3f}; 1.0 = as fast as the best measured so far, higher is faster):",
            *space.describe_state(context.state),
        ]
        for depth, (state, score) in enumerate(context.ancestors, start=1):
            relation = {1: "parent", 2: "grandparent"}.get(depth, f"ancestor {depth}")
            changed = [
                f"d{i}={list(v) if isinstance(v, tuple) else v}"
                for (i, v) in state.decisions
                if state.sketch != context.state.sketch or context.state.value(i) != v
            ]
            lines.append(
                f"{relation}: sketch {state.sketch}, score {score:.3f}; differs in "
                + (", ".join(changed) if changed else "nothing")
            )
        lines += _history_lines(context)
        lines += [
            "",
            f"Propose {count} different transformations of the current schedule. Actions:",
        ]
        if self.mode == "values":
            lines.append(
                '- "set": give decision "decision" (e.g. "d7") the value "value" (a list of tile factors, or an index).'
            )
        for name in space.actions:
            lines.append(f'- "mutate_{name}": let TVM pick a random new {name.replace("_", " ")}.')
        if self.mode == "values" and len(space.sketches) > 1:
            lines.append(
                f'- "switch_sketch": start from sketch "value" (0..{len(space.sketches) - 1}).'
            )
        lines += [
            "",
            'Answer JSON: {"reasoning": "<one or two sentences>", "proposals": ['
            + (
                '{"action": "set", "decision": "d<N>", "value": [..], "why": ".."}'
                if self.mode == "values"
                else '{"action": "mutate_tile_size"}'
            )
            + ", ...]}",
        ]
        return [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": "\n".join(lines)},
        ]

    # --------------------------------------------------------------- validation
    def _apply(
        self, state: ScheduleState, item: Any, rng: random.Random
    ) -> tuple[str, ScheduleState] | str:
        """(action label, new state) or the reason the proposal is invalid."""
        if not isinstance(item, dict) or not isinstance(item.get("action"), str):
            return "not an object with an action"
        action = item["action"]
        if action not in self._actions():
            return f"unknown action {action!r}"
        space = self.space
        try:
            if action.startswith("mutate_"):
                new = space.mutate(state, action[len("mutate_") :], rng.randrange(1, 2**31 - 1))
                if new is None:
                    return f"{action} changed nothing"
                label = action
            elif action == "switch_sketch":
                value = item.get("value")
                if isinstance(value, list) and len(value) == 1:
                    value = value[0]
                if not isinstance(value, int) or isinstance(value, bool):
                    return "switch_sketch needs an integer value"
                new = space.switch_sketch(value)
                label = f"switch to sketch {value}"
            else:
                decision = str(item.get("decision", "")).strip().lstrip("dD")
                if not decision.isdigit():
                    return f"bad decision {item.get('decision')!r}"
                value = item.get("value")
                new = space.set_decision(state, int(decision), value)
                label = f"set d{decision} = {value}"
        except ValueError as exc:
            return str(exc)
        if new == state:
            return "no change"
        if not space.legal(new):
            return "schedule does not replay or a postprocessor rejects it"
        block, times = space.recomputation(new)
        if times > MAX_RECOMPUTE:
            return (
                f"recomputes reduction {block} {times:.0f} times over (a compute location "
                "inside a loop its result does not depend on)"
            )
        return label, new

    def propose(
        self, context: Context[ScheduleState], count: int, rng: random.Random
    ) -> Sequence[Proposal[ScheduleState]]:
        out, _ = self.ask(context, count, rng)
        return self.fill(context, count, rng, out)

    def ask(
        self,
        context: Context[ScheduleState],
        count: int,
        rng: random.Random,
        messages: list[dict[str, str]] | None = None,
        schema: dict[str, Any] | None = None,
    ) -> tuple[list[Proposal[ScheduleState]], dict[str, Any] | None]:
        """One call: the valid proposals (at most ``count``) and the parsed answer (None if the
        call failed or nothing parsed). Counts everything; does not fall back."""
        reply = self.client.chat(
            messages or self.prompt(context, count), schema or self.schema(count)
        )
        out: list[Proposal[ScheduleState]] = []
        self.proposed += count
        answer: dict[str, Any] | None = None
        if reply.error:
            self.failed_calls += 1
        else:
            answer = parse_answer(reply.text)
            items = answer.get("proposals") if isinstance(answer, dict) else None
            if not isinstance(items, list):
                self.unparsable += 1
                logger.debug("torch_rc: unparsable LLM answer: %.300s", reply.text)
                items = []
            reasoning = str(answer.get("reasoning", ""))[:300] if isinstance(answer, dict) else ""
            seen = {context.state}
            for item in items[: count * 2]:
                if len(out) == count:
                    break
                applied = self._apply(context.state, item, rng)
                if isinstance(applied, str) or applied[1] in seen:
                    self.invalid += 1
                    why = applied if isinstance(applied, str) else "a duplicate"
                    logger.debug("torch_rc: invalid LLM proposal %.200s: %s", item, why)
                    continue
                label, new = applied
                seen.add(new)
                why = str(item.get("why", "")).strip()[:200] if isinstance(item, dict) else ""
                rationale = why or reasoning
                self.rationales.append(rationale)
                out.append(Proposal(label, new, rationale, self.label))
        self.accepted += len(out)
        return out, answer

    def fill(
        self,
        context: Context[ScheduleState],
        count: int,
        rng: random.Random,
        out: list[Proposal[ScheduleState]],
    ) -> list[Proposal[ScheduleState]]:
        """``out`` topped up to ``count`` by the fallback proposer (counted as fallbacks)."""
        missing = count - len(out)
        if missing <= 0:
            return list(out)
        self.fallbacks += missing
        return list(out) + top_up(self.fallback, context, count, rng, out)

    def set_deadline(self, deadline: float | None) -> None:
        """No LLM call runs past ``deadline`` (``time.monotonic()``; the tuning time limit)."""
        self.client.deadline = deadline

    def stats(self) -> dict[str, Any]:
        stats = self.client.stats()
        stats.update(
            proposer=self.label,
            mode=self.mode,
            proposals_asked=self.proposed,
            accepted=self.accepted,
            invalid=self.invalid,
            unparsable_answers=self.unparsable,
            failed_calls=self.failed_calls,
            fallbacks=self.fallbacks,
            fallback_rate=round(self.fallbacks / self.proposed, 3) if self.proposed else 0.0,
        )
        return stats


_LINEAGE_STEPS = 8  # the latest steps of a node's lineage shown in the prompt


def _history_lines(context: Context[ScheduleState]) -> list[str]:
    """The measured history: the node's lineage (root first) with real latencies and each
    measured step's speed-up over the last measured one before it, and the transformations that
    made a new best in this search. Empty when the search passed no history."""
    lines: list[str] = []
    if context.lineage:
        shown = context.lineage[-_LINEAGE_STEPS:]
        hidden = len(context.lineage) - len(shown)
        lines += [
            "",
            "Measured history of this schedule's lineage (root first, this schedule last; real timings):",
        ]
        if hidden:
            lines.append(f"  ... {hidden} earlier step(s)")
        previous = next(
            (
                s.latency
                for s in reversed(context.lineage[:hidden])
                if s.latency is not None and not s.failed
            ),
            None,
        )
        for step in shown:
            who = "" if step.source in ("", "root", step.action) else f" ({step.source})"
            if step.failed:
                outcome = "failed (did not build, or gave a wrong result)"
            elif step.latency is None:
                outcome = "not measured yet"
            else:
                outcome = f"{step.latency * 1e3:.4g} ms"
                if previous is not None:
                    outcome += f", {previous / step.latency:.2f}x the speed of the last measured step before it"
                previous = step.latency
            lines.append(f"  {step.action}{who}: {outcome}")
    if context.lineage or context.helped:
        lines.append("")
        if context.helped:
            lines.append(
                "Transformations that made a new best schedule in this search (oldest first):"
            )
            lines += [
                f"  {action}: {speedup:.2f}x faster than the best before it"
                for action, speedup in context.helped
            ]
        else:
            lines.append("No transformation has improved on the first measured schedule yet.")
    return lines
