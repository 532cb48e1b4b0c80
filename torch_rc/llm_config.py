"""The LLM endpoints a tuning run may ask: one endpoint (:class:`LLMConfig`) or a pool of them
(:func:`parse_pool`, the JSON form described in :mod:`torch_rc.tuning.pool`).

This is configuration, next to :mod:`torch_rc.options`, so options can be validated without
importing the tuning engine. An entry's ``api_key_env`` names the environment variable holding its
key; the key is read here, when the pool is parsed, and held only by the ``openai`` client.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LLMConfig", "PoolModel", "parse_pool"]


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask a model.

    Attributes:
        base_url: The endpoint, e.g. ``http://127.0.0.1:8080/v1`` (empty: OpenAI's).
        model: Model name sent with each request.
        api_key: Secret; masked in repr, never logged or stored.
        timeout_s: Per-request timeout.
        retries: Backoff retries on 429 and 5xx.
        max_tokens: Completion budget per call.
        temperature: Sampling temperature.
        mode: ``"values"`` (the model picks actions and concrete values) or ``"mutators"`` (only
            mutator types; TVM draws the values, as in the paper's code).
        ir_chars: The scheduled TIR in the prompt is trimmed to this many characters.
        breaker_after: Failed calls in a row that open the circuit breaker.
    """

    base_url: str = ""
    model: str = "gpt-4o-mini"
    api_key: str = field(default="", repr=False)
    timeout_s: float = 60.0
    retries: int = 2
    max_tokens: int = 512
    temperature: float = 0.7
    mode: str = "values"
    ir_chars: int = 2500
    breaker_after: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("values", "mutators"):
            raise ValueError(f"llm mode must be 'values' or 'mutators'; got {self.mode!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"llm timeout_s must be positive; got {self.timeout_s}")


@dataclass(frozen=True)
class PoolModel:
    """One pool entry (see the module docstring for the JSON form)."""

    name: str
    config: LLMConfig
    price_in: float = 0.0  # per 1k prompt tokens
    price_out: float = 0.0  # per 1k completion tokens
    size: float = 0.0
    max_concurrency: int = 1

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_in + completion_tokens / 1000 * self.price_out


def parse_pool(
    spec: Any,
    *,
    environ: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    mode: str = "values",
) -> list[PoolModel]:
    """Pool entries from a JSON string, ``@file.json``, or a list of dicts.

    Raises:
        ValueError: Malformed JSON, a missing ``model``, duplicate names (the message says which).
    """
    env = os.environ if environ is None else environ
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("@"):
            try:
                text = open(text[1:]).read()
            except OSError as exc:
                raise ValueError(f"cannot read the LLM pool file {text[1:]}: {exc}") from None
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the LLM pool is not valid JSON: {exc}") from None
    if not isinstance(spec, list) or not spec:
        raise ValueError("the LLM pool must be a non-empty JSON list of models")
    out: list[PoolModel] = []
    for index, entry in enumerate(spec):
        if not isinstance(entry, dict) or not entry.get("model"):
            raise ValueError(f"LLM pool entry {index} needs at least a 'model'")
        unknown = set(entry) - {
            "name",
            "model",
            "base_url",
            "api_key_env",
            "price_in",
            "price_out",
            "size",
            "max_concurrency",
            "temperature",
            "max_tokens",
        }
        if unknown:
            raise ValueError(f"LLM pool entry {index} has unknown keys {sorted(unknown)}")
        config = LLMConfig(
            base_url=str(entry.get("base_url", "")),
            model=str(entry["model"]),
            api_key=env.get(str(entry.get("api_key_env", "")), "")
            if entry.get("api_key_env")
            else "",
            timeout_s=timeout_s,
            mode=mode,
            temperature=float(entry.get("temperature", 0.7)),
            max_tokens=int(entry.get("max_tokens", 512)),
        )
        out.append(
            PoolModel(
                name=str(entry.get("name") or entry["model"]),
                config=config,
                price_in=float(entry.get("price_in", 0.0)),
                price_out=float(entry.get("price_out", 0.0)),
                size=float(entry.get("size", 0.0)),
                max_concurrency=int(entry.get("max_concurrency", 1)),
            )
        )
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"LLM pool model names must be unique; got {names}")
    return out
