"""A chat client for any OpenAI-compatible endpoint, built on the ``openai`` package.

Endpoints disagree on structured output (docs/llm-facts.md): OpenAI and vLLM take
``response_format={"type": "json_schema", ...}``, llama.cpp's server rejects that with an HTTP 500
and takes ``{"type": "json_object", "schema": ...}``, others only ``{"type": "json_object"}`` or
nothing. The client negotiates: it tries those dialects in that order on the first call, remembers
the first one that works, and the caller always parses JSON out of the text as well.

Faults never raise to the tuner: a timeout, a dead endpoint, a 4xx, or a 429/5xx that persists
after ``retries`` backoffs returns a :class:`Reply` with ``error`` set. Tokens and wall time are
accounted per call.

Every call has a **total deadline**: ``timeout_s`` for the whole call (HTTP timeouts are per read,
so an endpoint that drips a byte a second would never time out by itself), and never past
:attr:`LLMClient.deadline` (the tuning time limit). The request runs on a worker thread; at the
deadline it is abandoned and the connection closed. A **circuit breaker** opens after
``breaker_after`` failed calls in a row, or when an endpoint asks to wait (Retry-After) longer than
the client ever backs off: every later call returns an error at once, and the proposer falls back
to the built-in rules for the rest of the run. The API key is held by the ``openai`` client only and never logged, printed or
stored (``LLMConfig``'s repr masks it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from torch_rc.llm_config import LLMConfig

__all__ = ["LLMConfig", "LLMClient", "Reply", "DIALECTS"]

logger = logging.getLogger(__name__)

DIALECTS = ("json_schema", "json_object_schema", "json_object", "text")
_MAX_BACKOFF_S = 20.0


@dataclass
class Reply:
    """One chat call's outcome."""

    text: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    dialect: str = ""


class LLMClient:
    """Chat completions with dialect negotiation, backoff and accounting.

    Args:
        config: The endpoint and model.
        client: An ``openai.OpenAI`` instance (made from ``config`` when None).
        sleep: The backoff sleeper (tests pass a recorder).
    """

    def __init__(self, config: LLMConfig, client: Any = None, sleep: Any = time.sleep) -> None:
        import openai

        self.config = config
        self._openai = openai
        self._own_client = client is None
        self.client = client or self._make_client()
        self.sleep = sleep
        # The tuning time limit (time.monotonic()); no call runs past it.
        self.deadline: float | None = None
        # Why the circuit breaker is open (every call then fails at once), or None.
        self.open_reason: str | None = None
        self._failures_in_a_row = 0
        self._warned_open = False
        self.dialect: str | None = None
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seconds = 0.0

    def _make_client(self) -> Any:
        return self._openai.OpenAI(
            base_url=self.config.base_url or None,
            api_key=self.config.api_key or "not-needed",
            # Per read; the call's total deadline (timeout_s) is ours, enforced in _create.
            timeout=self.config.timeout_s + 5.0,
            max_retries=0,  # backoff is ours, so it is counted and bounded
        )

    def _create(self, kwargs: dict[str, Any], seconds: float) -> Any:
        """``chat.completions.create(**kwargs)`` within ``seconds`` in all, or :class:`_Late`."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["response"] = self.client.chat.completions.create(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="torch_rc-llm-call", daemon=True)
        worker.start()
        worker.join(max(seconds, 0.0))
        if worker.is_alive():
            if self._own_client:
                # Closing the connection pool ends the abandoned read; later calls use a new one.
                stale, self.client = self.client, self._make_client()
                threading.Thread(target=stale.close, daemon=True).start()
            raise _Late
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _format(self, dialect: str, schema: dict[str, Any]) -> dict[str, Any] | None:
        if dialect == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        if dialect == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        if dialect == "json_object":
            return {"type": "json_object"}
        return None

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def chat(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Reply:
        """Ask once (negotiating and retrying as the module docstring says); never raises."""
        openai = self._openai
        self.calls += 1
        start = time.monotonic()
        deadline = start + self.config.timeout_s
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        dialects = [self.dialect] if self.dialect else list(DIALECTS)
        attempt = 0
        reply = Reply(error="no dialect accepted")
        if self.open_reason is not None:
            self._count("circuit_open")
            dialects, reply = [], Reply(error=f"not called: {self.open_reason}")
        while dialects:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._count("deadline")
                reply = Reply(error="out of time (the call's deadline or the tuning time limit)")
                break
            dialect = dialects[0]
            kwargs: dict[str, Any] = {
                "model": self.config.model,
                "messages": messages,
                "max_tokens": self.config.max_tokens,
                "temperature": self.config.temperature,
            }
            response_format = self._format(dialect, schema)
            if response_format is not None:
                kwargs["response_format"] = response_format
            try:
                response = self._create(kwargs, remaining)
            except _Late:
                self._count("timeout")
                reply = Reply(error=f"no complete answer within {remaining:.3g} s (abandoned)")
                break
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                status = getattr(exc, "status_code", 0)
                if self.dialect is None and status >= 500 and len(dialects) > 1:
                    dialects.pop(0)  # llama.cpp answers an unknown response_format with a 500
                    continue
                self._count("rate_limited" if status == 429 else "server_error")
                if attempt >= self.config.retries:
                    reply = Reply(error=f"HTTP {status} after {attempt + 1} tries")
                    break
                asked = _retry_after(exc)
                if asked is not None and asked > _MAX_BACKOFF_S:
                    self.open_reason = f"the endpoint asked to wait {asked:g} s (HTTP {status})"
                    reply = Reply(error=self.open_reason)
                    break
                delay = self._backoff(exc, attempt)
                if time.monotonic() + delay >= deadline:
                    self._count("deadline")
                    reply = Reply(error=f"HTTP {status}; no time left to back off")
                    break
                self.sleep(delay)
                attempt += 1
                continue
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if self.dialect is None and len(dialects) > 1:
                    dialects.pop(0)
                    continue
                self._count("rejected")
                reply = Reply(error=f"request rejected: HTTP {getattr(exc, 'status_code', '?')}")
                break
            except openai.APITimeoutError:
                self._count("timeout")
                reply = Reply(error=f"timed out after {self.config.timeout_s:g} s")
                break
            except openai.APIConnectionError as exc:
                self._count("unreachable")
                reply = Reply(error=f"endpoint unreachable: {type(exc).__name__}")
                break
            except openai.APIStatusError as exc:  # 401, 403, 404, ...: not worth retrying
                self._count(f"http_{exc.status_code}")
                reply = Reply(error=f"HTTP {exc.status_code}")
                break
            except Exception as exc:  # a malformed response body and other client-side surprises
                self._count("bad_response")
                reply = Reply(error=f"bad response: {type(exc).__name__}")
                break
            self.dialect = dialect
            usage = getattr(response, "usage", None)
            choices = getattr(response, "choices", None) or []
            text = (choices[0].message.content or "") if choices else ""
            reply = Reply(
                text=text,
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                dialect=dialect,
                error=None if choices else "empty response",
            )
            break
        reply.seconds = time.monotonic() - start
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.seconds += reply.seconds
        if reply.error:
            logger.info("torch_rc: LLM call to %s failed: %s", self.config.model, reply.error)
            self._failures_in_a_row += 1
            if self.open_reason is None and self._failures_in_a_row >= self.config.breaker_after:
                self.open_reason = f"{self._failures_in_a_row} failed calls in a row"
        else:
            self._failures_in_a_row = 0
        if self.open_reason is not None and not self._warned_open:
            self._warned_open = True
            logger.warning(
                "torch_rc: LLM %s is not called again in this run (%s); the built-in proposer "
                "takes over",
                self.config.model,
                self.open_reason,
            )
        return reply

    def _backoff(self, exc: Any, attempt: int) -> float:
        retry_after = _retry_after(exc)
        delay = retry_after if retry_after is not None else 0.5 * 2**attempt
        return min(max(delay, 0.0), _MAX_BACKOFF_S)

    def stats(self) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "circuit_open": self.open_reason,
            "calls": self.calls,
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "llm_seconds": round(self.seconds, 3),
            "dialect": self.dialect,
        }


class _Late(Exception):
    """A call abandoned at its deadline."""


def _retry_after(exc: Any) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None
