"""The LLM client's dialect negotiation, backoff and fault handling, on a scripted endpoint."""

import logging

from tests.tuning.scripted_endpoint import scripted_endpoint
from torch_rc.tuning.llm_client import LLMClient, LLMConfig

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
MESSAGES = [{"role": "user", "content": "hi"}]


def _client(url, **kw):
    sleeps = []
    config = LLMConfig(base_url=url, model="m", api_key="sk-secret-123", **kw)
    return LLMClient(config, sleep=sleeps.append), sleeps


def test_negotiates_the_dialect_once_and_accounts_tokens():
    script = [("status", 500, {}), ("ok", '{"a": 1}'), ("ok", '{"a": 2}')]
    with scripted_endpoint(script) as (url, requests):
        client, _ = _client(url)
        first = client.chat(MESSAGES, SCHEMA)
        second = client.chat(MESSAGES, SCHEMA)
    assert first.error is None and first.text == '{"a": 1}' and second.text == '{"a": 2}'
    assert requests[0]["response_format"]["type"] == "json_schema"
    assert requests[1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert requests[2]["response_format"] == requests[1]["response_format"]  # remembered
    stats = client.stats()
    assert (
        stats["calls"] == 2 and stats["prompt_tokens"] == 200 and stats["completion_tokens"] == 40
    )
    assert stats["dialect"] == "json_object_schema"


def test_429_backs_off_honouring_retry_after_then_succeeds():
    script = [
        ("ok", "{}"),
        ("status", 429, {"Retry-After": "3"}),
        ("status", 429, {}),
        ("ok", '{"a": 3}'),
    ]
    with scripted_endpoint(script) as (url, _):
        client, sleeps = _client(url, retries=2)
        client.chat(MESSAGES, SCHEMA)
        reply = client.chat(MESSAGES, SCHEMA)
    assert reply.error is None and reply.text == '{"a": 3}'
    assert sleeps == [3.0, 1.0]
    assert client.errors == {"rate_limited": 2}


def test_persistent_errors_timeouts_and_dead_endpoints_return_errors_not_exceptions(caplog):
    caplog.set_level(logging.DEBUG)
    with scripted_endpoint([("ok", "{}")] + [("status", 503, {})] * 3) as (url, _):
        client, sleeps = _client(url, retries=2)
        client.chat(MESSAGES, SCHEMA)
        reply = client.chat(MESSAGES, SCHEMA)
    assert reply.error == "HTTP 503 after 3 tries" and len(sleeps) == 2
    with scripted_endpoint([("sleep", 2.0)]) as (url, _):
        client, _ = _client(url, timeout_s=0.5)
        client.dialect = "text"
        assert client.chat(MESSAGES, SCHEMA).error.startswith("no complete answer within 0.5")
    with scripted_endpoint([("raw", "this is not json")]) as (url, _):
        client, _ = _client(url)
        client.dialect = "text"
        assert client.chat(MESSAGES, SCHEMA).error.startswith("bad response")
    client, _ = _client("http://127.0.0.1:9/v1")
    assert client.chat(MESSAGES, SCHEMA).error.startswith("endpoint unreachable")
    assert "sk-secret-123" not in caplog.text
    assert "sk-secret-123" not in repr(client.config) and "sk-secret-123" not in str(client.stats())


def test_a_dripping_endpoint_is_abandoned_at_the_calls_deadline():
    import time

    with scripted_endpoint([("drip", 0.1)] * 2) as (url, _):
        client, _ = _client(url, timeout_s=1.0)
        client.dialect = "text"
        start = time.monotonic()
        reply = client.chat(MESSAGES, SCHEMA)
        took = time.monotonic() - start
        assert reply.error.startswith("no complete answer") and took < 3.0
        # The tuning time limit holds inside a call too, whatever timeout_s says.
        client = _client(url, timeout_s=600)[0]
        client.dialect, client.deadline = "text", time.monotonic() + 0.5
        start = time.monotonic()
        assert client.chat(MESSAGES, SCHEMA).error and time.monotonic() - start < 3.0


def test_a_long_retry_after_opens_the_circuit_breaker(caplog):
    with scripted_endpoint([("status", 429, {"Retry-After": "3600"}), ("ok", "{}")]) as (
        url,
        requests,
    ):
        client, sleeps = _client(url, retries=5)
        client.dialect = "text"
        first = client.chat(MESSAGES, SCHEMA)
        second = client.chat(MESSAGES, SCHEMA)
    assert "asked to wait 3600 s" in first.error and sleeps == []
    assert second.error.startswith("not called") and len(requests) == 1
    assert client.stats()["circuit_open"] and "built-in proposer takes over" in caplog.text


def test_repeated_failures_open_the_circuit_breaker():
    client, _ = _client("http://127.0.0.1:9/v1", breaker_after=3)
    errors = [client.chat(MESSAGES, SCHEMA).error for _ in range(5)]
    assert all(e.startswith("endpoint unreachable") for e in errors[:3])
    assert all(e.startswith("not called: 3 failed calls in a row") for e in errors[3:])
    assert client.errors["circuit_open"] == 2
