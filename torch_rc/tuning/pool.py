"""Several LLMs in one MCTS tree: small models first, escalation to the largest (the COLT design).

**Pool.** Models ordered by cost, each an OpenAI-compatible endpoint with a price per 1k prompt and
completion tokens and a size ``θ``. Configured as a JSON list (options ``llm_models``, the
``TORCH_RC_LLM_MODELS`` variable, or ``@path/to/file.json``)::

    [{"name": "small", "base_url": "http://127.0.0.1:8080/v1", "model": "gemma-3-270m", "size": 0.27},
     {"name": "large", "model": "gpt-4o", "price_in": 2.5, "price_out": 10, "size": 200,
      "api_key_env": "OPENAI_API_KEY"}]

**Cost.** A model's cost θ is its ``size`` if given, else its price (input + output per 1k tokens),
else its position in the list. We use price when known because that is what the user pays; size
is the COLT paper's proxy. φ_small(m) = (log θ_max − log θ_m) / (log θ_max − log θ_min + ε): 1 for
the cheapest model, 0 for the most expensive.

**Shared tree and joint action.** Every expansion is done by one model; it answers
``{"reasoning", "proposals": [...], "next_model": "<name>"}``; the children remember who made them
and whom their maker wants to expand them next. The prompt shows per-model hit rates (accepted /
asked), calls and errors, and which models expanded the node's ancestors. An unknown or missing
``next_model`` falls back to the model with the best hit rate (cheapest on ties).

**Tree policy** (:func:`model_aware_select`): score = (1 − λ)·W/N + λ·φ_small(child's model) +
c·√(ln N_parent / N_child); λ is ignored when all siblings come from one model; unvisited children
are tried cheapest model first. Defaults λ = 0.5, c = √2.

**Course alteration.** After an expansion by a model other than the largest, if its child is
predicted worse than its parent (the cost model's score), a regression is counted; consecutive
regressions are tracked per pool and on every ``escalate_every``-th (default 2, as in COLT's code)
the largest model gets a correction prompt with the small model's proposal and scores; its child
replaces the small model's only if predicted no worse. A small-model child that is not a
regression resets the count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch_rc.llm_config import PoolModel, parse_pool
from torch_rc.platform.hardware import AnyHardware
from torch_rc.tuning.llm_client import LLMClient
from torch_rc.tuning.llm_proposer import LLMProposer, top_up
from torch_rc.tuning.mcts import Context, Node, Proposal
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.space import DesignSpace, ScheduleState

__all__ = ["PoolModel", "PoolProposer", "parse_pool", "phi_small", "model_aware_select"]

_EPS = 1e-9


def _theta(models: Sequence[PoolModel]) -> dict[str, float]:
    if all(m.size > 0 for m in models):
        return {m.name: m.size for m in models}
    if all(m.price_in + m.price_out > 0 for m in models):
        return {m.name: m.price_in + m.price_out for m in models}
    return {m.name: float(i + 1) for i, m in enumerate(models)}


def phi_small(theta: dict[str, float], name: str) -> float:
    """1 for the cheapest model, 0 for the most expensive (log scale); 0 for unknown sources."""
    if name not in theta:
        return 0.0
    high, low = math.log(max(theta.values())), math.log(min(theta.values()))
    return (high - math.log(theta[name])) / (high - low + _EPS)


def model_aware_select(
    theta: dict[str, float], lam: float = 0.5, exploration: float = math.sqrt(2.0)
) -> Callable[[list[Node[Any]], int], Node[Any]]:
    """The pool's tree policy (module docstring)."""

    def select(children: list[Node[Any]], parent_visits: int) -> Node[Any]:
        def model(node: Node[Any]) -> str:
            return (
                node.source.removeprefix("llm:") if node.source.startswith("llm:") else node.source
            )

        unvisited = [c for c in children if c.visits == 0]
        if unvisited:
            return max(unvisited, key=lambda c: phi_small(theta, model(c)))
        weight = lam if len({model(c) for c in children}) > 1 else 0.0

        def score(c: Node[Any]) -> float:
            return (
                (1 - weight) * c.value
                + weight * phi_small(theta, model(c))
                + exploration * math.sqrt(math.log(parent_visits) / c.visits)
            )

        return max(children, key=score)

    return select


@dataclass
class _ModelStats:
    calls: int = 0
    asked: int = 0
    accepted: int = 0
    errors: int = 0
    escalations: int = 0
    kept_escalations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    next_model_invalid: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.accepted / self.asked if self.asked else 0.0


class PoolProposer:
    """MCTS proposer backed by a pool of models sharing one tree (module docstring).

    Args:
        space, hardware: As for :class:`LLMProposer`.
        models: The pool, any order (sorted by cost here).
        clients: Optional prepared clients by model name (tests pass ones with fake sleeps).
        escalate_every: Regressions that trigger an escalation to the largest model.
        lam: λ of the tree policy.
    """

    label = "pool"

    def __init__(
        self,
        space: DesignSpace,
        hardware: AnyHardware,
        models: Sequence[PoolModel],
        *,
        clients: dict[str, LLMClient] | None = None,
        escalate_every: int = 2,
        lam: float = 0.5,
        exploration: float = math.sqrt(2.0),
    ) -> None:
        self.theta = _theta(models)
        self.models = sorted(models, key=lambda m: self.theta[m.name])
        self.by_name = {m.name: m for m in self.models}
        self.fallback = RuleProposer(space, hardware)
        self.proposers = {
            m.name: LLMProposer(
                space, hardware, (clients or {}).get(m.name) or LLMClient(m.config), self.fallback
            )
            for m in self.models
        }
        for name, proposer in self.proposers.items():
            proposer.label = f"llm:{name}"
        self.stats_by_model = {m.name: _ModelStats() for m in self.models}
        self.escalate_every = escalate_every
        self.regressions = 0
        self.fallbacks = 0
        self.proposed = 0
        self.model: Any = None  # the search's cost model (set by the tuner), for regressions
        self.select = model_aware_select(self.theta, lam, exploration)
        self.log: list[dict[str, Any]] = []

    def set_deadline(self, deadline: float | None) -> None:
        """No LLM call of the pool runs past ``deadline`` (the tuning time limit)."""
        for proposer in self.proposers.values():
            proposer.set_deadline(deadline)

    @property
    def smallest(self) -> str:
        return self.models[0].name

    @property
    def largest(self) -> str:
        return self.models[-1].name

    def _best_hit_rate(self) -> str:
        return max(
            self.models, key=lambda m: (self.stats_by_model[m.name].hit_rate, -self.theta[m.name])
        ).name

    def _who(self, context: Context[ScheduleState]) -> str:
        if context.next_model in self.by_name:
            return context.next_model
        if context.next_model:
            return self._best_hit_rate()
        return self.smallest

    def _pool_lines(self, context: Context[ScheduleState]) -> list[str]:
        lines = ["", "Model pool (you share this search tree with these models, cheapest first):"]
        for m in self.models:
            st = self.stats_by_model[m.name]
            lines.append(
                f"- {m.name}: hit rate {st.hit_rate:.0%}, {st.calls} calls, {st.errors} errors"
            )
        expanded = ", ".join(s.removeprefix("llm:") for s in context.ancestor_sources) or "none"
        lines.append(f"Ancestors (nearest first) were proposed by: {expanded}.")
        lines.append(
            'Also answer "next_model": which model should expand your proposals next (a cheap one when the step is routine).'
        )
        return lines

    def _schema(self, proposer: LLMProposer, count: int) -> dict[str, Any]:
        schema = proposer.schema(count)
        schema["properties"]["next_model"] = {
            "type": "string",
            "enum": [m.name for m in self.models],
        }
        return schema

    def _call(
        self,
        name: str,
        context: Context[ScheduleState],
        count: int,
        rng: random.Random,
        extra: list[str],
    ) -> tuple[list[Proposal[ScheduleState]], str]:
        proposer = self.proposers[name]
        client = proposer.client
        before = (
            client.prompt_tokens,
            client.completion_tokens,
            client.seconds,
            proposer.failed_calls,
        )
        messages = proposer.prompt(context, count)
        messages[1]["content"] += "\n" + "\n".join(self._pool_lines(context) + extra)
        out, answer = proposer.ask(context, count, rng, messages, self._schema(proposer, count))
        st = self.stats_by_model[name]
        st.calls += 1
        st.asked += count
        st.accepted += len(out)
        st.errors += proposer.failed_calls - before[3]
        prompt, completion = client.prompt_tokens - before[0], client.completion_tokens - before[1]
        st.prompt_tokens += prompt
        st.completion_tokens += completion
        st.cost += self.by_name[name].cost(prompt, completion)
        st.seconds += client.seconds - before[2]
        wanted = answer.get("next_model") if isinstance(answer, dict) else None
        if wanted not in self.by_name:
            if wanted is not None:
                st.next_model_invalid += 1
            wanted = self._best_hit_rate()
        return out, str(wanted)

    def _predict(self, states: list[ScheduleState]) -> list[float] | None:
        if self.model is None:
            return None
        return [float(v) for v in self.model.predict(states)]

    def propose(
        self, context: Context[ScheduleState], count: int, rng: random.Random
    ) -> Sequence[Proposal[ScheduleState]]:
        name = self._who(context)
        out, next_model = self._call(name, context, count, rng, [])
        self.proposed += count
        entry: dict[str, Any] = {"model": name, "accepted": len(out), "next_model": next_model}
        if out and name != self.largest:
            scores = self._predict([p.state for p in out])
            if scores is not None:
                best = max(range(len(out)), key=lambda i: scores[i])
                if scores[best] < context.score:
                    self.regressions += 1
                    entry["regression"] = self.regressions
                    if self.regressions % self.escalate_every == 0:
                        out = self._escalate(context, count, rng, out, scores, entry)
                else:
                    self.regressions = 0
        out = [Proposal(p.action, p.state, p.rationale, p.source, next_model) for p in out]
        if len(out) < count:
            extra = top_up(self.fallback, context, count, rng, out)
            self.fallbacks += count - len(out)
            out += [
                Proposal(p.action, p.state, p.rationale, p.source, self._best_hit_rate())
                for p in extra
            ]
        self.log.append(entry)
        return out

    def _escalate(
        self,
        context: Context[ScheduleState],
        count: int,
        rng: random.Random,
        small: list[Proposal[ScheduleState]],
        scores: list[float],
        entry: dict[str, Any],
    ) -> list[Proposal[ScheduleState]]:
        big = self.largest
        st = self.stats_by_model[big]
        st.escalations += 1
        lines = [
            "",
            f"Correction request: the cheaper model {entry['model']} proposed these, and the cost model predicts them worse than the current schedule ({context.score:.3f}):",
        ]
        lines += [f"- {p.action}: predicted {s:.3f}" for p, s in zip(small, scores, strict=True)]
        lines.append("Propose better transformations.")
        corrected, _ = self._call(big, context, count, rng, lines)
        entry["escalated_to"] = big
        if not corrected:
            return small
        new_scores = self._predict([p.state for p in corrected]) or [0.0] * len(corrected)
        # Keep the large model's children only where predicted no worse than the small model's best.
        kept = [p for p, s in zip(corrected, new_scores, strict=True) if s >= max(scores)]
        entry["kept"] = len(kept)
        if kept:
            st.kept_escalations += 1
            self.regressions = 0
            return (kept + [p for p in small if p.state not in {k.state for k in kept}])[:count]
        return small

    def stats(self) -> dict[str, Any]:
        per_model = {}
        for m in self.models:
            st = self.stats_by_model[m.name]
            per_model[m.name] = {
                "model": m.config.model,
                "calls": st.calls,
                "accepted": st.accepted,
                "hit_rate": round(st.hit_rate, 3),
                "errors": st.errors,
                "prompt_tokens": st.prompt_tokens,
                "completion_tokens": st.completion_tokens,
                "cost": round(st.cost, 6),
                "llm_seconds": round(st.seconds, 3),
                "escalations": st.escalations,
                "kept_escalations": st.kept_escalations,
                "next_model_invalid": st.next_model_invalid,
            }
        calls = sum(st.calls for st in self.stats_by_model.values())
        return {
            "proposer": "pool",
            "models": per_model,
            "calls": calls,
            "prompt_tokens": sum(st.prompt_tokens for st in self.stats_by_model.values()),
            "completion_tokens": sum(st.completion_tokens for st in self.stats_by_model.values()),
            "cost": round(sum(st.cost for st in self.stats_by_model.values()), 6),
            "fallbacks": self.fallbacks,
            "fallback_rate": round(self.fallbacks / self.proposed, 3) if self.proposed else 0.0,
            "largest_share": round(self.stats_by_model[self.largest].calls / calls, 3)
            if calls
            else 0.0,
        }
