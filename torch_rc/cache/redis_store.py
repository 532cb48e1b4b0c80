"""A shared store on a Redis server, so a fleet of machines shares one tuning cache.

Same interface and guarantees as :class:`~torch_rc.cache.store.SQLiteStore`: k best records per
(workload, target), unverified records refused, LRU-capped artifacts (put-and-evict is one atomic
Lua script), per-key locks (``SET NX`` with an expiry, so a killed holder cannot block others
forever; released by a compare-and-delete script). A connection failure during use is logged,
counted and read as a miss; a server that cannot be reached at start raises CacheError, and the
backend then compiles without a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from torch_rc.cache.keys import SCHEMA_VERSION, KeyDetails
from torch_rc.cache.policy import (
    DEFAULT_ARTIFACT_CAP,
    DEFAULT_KEEP_BEST,
    MISSES_KEPT,
    NEAREST_SCAN,
    Prune,
    nearest_miss,
    record_rank,
    refuse_unverified,
    stats,
)
from torch_rc.cache.records import ArtifactEntry, TuningRecord
from torch_rc.errors import CacheError

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_LOCK_TTL_MS = 30 * 60 * 1000

_PUT_ARTIFACT = """
local old = redis.call('HGET', KEYS[1], 'size')
if old then redis.call('DECRBY', KEYS[3], old) end
redis.call('HSET', KEYS[1], 'parts', ARGV[2], 'payload', ARGV[3], 'size', ARGV[4],
           'decisions', ARGV[5], 'created', ARGV[6], 'last_used', ARGV[6], 'hits', 0)
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
local total = redis.call('INCRBY', KEYS[3], ARGV[4])
while total > tonumber(ARGV[7]) do
  local victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not victim then break end
  local vkey = ARGV[8] .. 'art:' .. victim
  local vsize = redis.call('HGET', vkey, 'size') or 0
  redis.call('DEL', vkey)
  redis.call('ZREM', KEYS[2], victim)
  total = redis.call('DECRBY', KEYS[3], vsize)
  redis.call('HINCRBY', KEYS[4], 'artifact_evictions', 1)
end
return total
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Added to an imported record's score: no kernel takes 11 days, so it ranks after local ones.
_IMPORTED_RANK = 1e6


class RedisStore:
    """Tuning records and artifacts on a Redis server (``redis://host:port/db``)."""

    def __init__(
        self,
        url: str,
        *,
        keep_best: int = DEFAULT_KEEP_BEST,
        artifact_cap: int = DEFAULT_ARTIFACT_CAP,
        namespace: str = "torch_rc",
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # an extra: the core install has no redis client
            raise CacheError(
                "a redis:// cache_url needs the redis client: pip install 'torch_rc[redis]'"
            ) from exc
        self.url = url
        self.path = None
        self.degraded: str | None = None
        self.errors = 0
        self.keep_best = keep_best
        self.artifact_cap = artifact_cap
        self.prefix = f"{namespace}:v{SCHEMA_VERSION}:"
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._db = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        try:
            self._db.ping()
            stored = self._db.hget(self._k("meta"), "schema_version")
        except redis.exceptions.RedisError as exc:
            raise CacheError(f"cannot reach the cache server {_redact(url)}: {exc}") from exc
        if stored is None:
            self._db.hsetnx(self._k("meta"), "schema_version", SCHEMA_VERSION)
        elif int(stored) > SCHEMA_VERSION:
            raise CacheError(
                f"cache server {_redact(url)} holds schema {int(stored)}, newer than {SCHEMA_VERSION}"
            )
        self._put_artifact = self._db.register_script(_PUT_ARTIFACT)
        self._release = self._db.register_script(_RELEASE)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _guarded(self, what: str, fn: Callable[[], _T], default: _T) -> _T:
        try:
            return fn()
        except self._errors as exc:
            self.errors += 1
            logger.warning(
                "torch_rc: cache server %s failed (%s); continuing without it", what, exc
            )
            return default

    @contextlib.contextmanager
    def lock(self, key: str, timeout_s: float | None = None) -> Iterator[bool]:
        """A lock shared by every machine using this server; it expires if its holder dies.

        Yields whether it is held (False after ``timeout_s``, or the lock's TTL, of waiting).
        """
        name, token = self._k("lock", key), uuid.uuid4().hex
        acquired = False
        wait = _LOCK_TTL_MS / 1000 if timeout_s is None else min(timeout_s, _LOCK_TTL_MS / 1000)
        deadline = time.monotonic() + wait
        while True:
            acquired = bool(
                self._guarded(
                    "lock", lambda: self._db.set(name, token, nx=True, px=_LOCK_TTL_MS), True
                )
            )
            if acquired or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        try:
            yield acquired
        finally:
            if acquired:
                self._guarded("unlock", lambda: self._release(keys=[name], args=[token]), 0)

    # ----------------------------------------------------------------- tuning records
    def _record_set(self, workload_key: str, target_key: str) -> str:
        digest = hashlib.sha256(f"{workload_key}\n{target_key}".encode()).hexdigest()[:32]
        return self._k("rec", digest)

    def put_record(self, record: TuningRecord) -> int:
        refuse_unverified(record)

        def insert() -> int:
            rid = int(self._db.incr(self._k("record_id")))
            member = json.dumps({"id": rid, "body": record.to_json()})
            key = self._record_set(record.workload_key, record.target_key)
            pipe = self._db.pipeline(transaction=True)
            # Imported records rank after every record verified here (see TuningRecord).
            score = record.latency_s + (_IMPORTED_RANK if record.imported_from else 0.0)
            pipe.zadd(key, {member: score})
            pipe.zremrangebyrank(key, self.keep_best, -1)
            pipe.sadd(self._k("records"), key)
            pipe.execute()
            return rid

        return self._guarded("write", insert, -1)

    def _decode(self, member: bytes) -> TuningRecord:
        data = json.loads(member)
        return TuningRecord.from_json(data["body"], id=data["id"])

    def best_records(self, workload_key: str, target_key: str, k: int = 1) -> list[TuningRecord]:
        def query() -> list[TuningRecord]:
            members = self._db.zrange(self._record_set(workload_key, target_key), 0, k - 1)
            return sorted((self._decode(m) for m in members), key=record_rank)

        return self._guarded("read", query, [])

    def all_records(self) -> list[TuningRecord]:
        def query() -> list[TuningRecord]:
            records = [
                self._decode(m)
                for key in self._db.smembers(self._k("records"))
                for m in self._db.zrange(key, 0, -1)
            ]
            return sorted(records, key=lambda r: (r.workload_key, r.target_key, r.latency_s))

        return self._guarded("read", query, [])

    # ----------------------------------------------------------------- artifacts
    def get_artifact(self, details: KeyDetails) -> tuple[bytes, dict[str, str]] | None:
        def query() -> tuple[bytes, dict[str, str]] | None:
            name = self._k("art", details.key)
            payload, decisions = self._db.hmget(name, "payload", "decisions")
            if payload is None:
                self._db.hincrby(self._k("meta"), "artifact_misses", 1)
                self._record_miss(details)
                return None
            now = time.time()
            pipe = self._db.pipeline(transaction=True)
            pipe.hincrby(self._k("meta"), "artifact_hits", 1)
            pipe.hset(name, mapping={"last_used": now})
            pipe.hincrby(name, "hits", 1)
            pipe.zadd(self._k("lru"), {details.key: now})
            pipe.execute()
            return bytes(payload), json.loads(decisions)

        return self._guarded("read", query, None)

    def _record_miss(self, details: KeyDetails) -> None:
        def stored() -> Iterator[tuple[str, str]]:
            for key in self._db.zrevrange(self._k("lru"), 0, NEAREST_SCAN - 1):
                parts = self._db.hget(self._k("art", key.decode()), "parts")
                if parts is not None:
                    yield key.decode(), parts

        self._db.lpush(self._k("misses"), json.dumps(nearest_miss(details, stored())))
        self._db.ltrim(self._k("misses"), 0, MISSES_KEPT - 1)

    def put_artifact(self, details: KeyDetails, payload: bytes, decisions: dict[str, str]) -> None:
        self._store_artifact(details.key, details.to_json(), payload, decisions, time.time())

    def _store_artifact(
        self, key: str, parts: str, payload: bytes, decisions: dict[str, str], created: float
    ) -> None:
        self._guarded(
            "write",
            lambda: self._put_artifact(
                keys=[
                    self._k("art", key),
                    self._k("lru"),
                    self._k("artifact_bytes"),
                    self._k("meta"),
                ],
                args=[
                    key,
                    parts,
                    payload,
                    len(payload),
                    json.dumps(decisions),
                    created,
                    self.artifact_cap,
                    self.prefix,
                ],
            ),
            None,
        )

    def update_decisions(self, details: KeyDetails, decisions: dict[str, Any]) -> None:
        self.set_decisions(details.key, decisions)

    def set_decisions(self, key: str, decisions: dict[str, Any]) -> bool:
        """Replace the decision record of the artifact ``key``; True if it exists."""
        name = self._k("art", key)
        return bool(
            self._guarded(
                "write",
                lambda: (
                    self._db.exists(name)
                    and self._db.hset(name, "decisions", json.dumps(decisions)) is not None
                ),
                False,
            )
        )

    def artifacts(self) -> list[ArtifactEntry]:
        def query() -> list[ArtifactEntry]:
            entries = []
            for key in self._db.zrevrange(self._k("lru"), 0, -1):
                fields = self._db.hmget(
                    self._k("art", key.decode()),
                    "parts",
                    "size",
                    "created",
                    "last_used",
                    "hits",
                    "decisions",
                )
                if fields[0] is None:
                    continue
                parts, size, created, last_used, hits, decisions = fields
                entries.append(
                    ArtifactEntry(
                        key.decode(),
                        KeyDetails.from_json(parts).parts,
                        int(size),
                        float(created),
                        float(last_used),
                        int(hits),
                        json.loads(decisions),
                    )
                )
            return entries

        return self._guarded("read", query, [])

    def artifact_payload(self, key: str) -> bytes | None:
        value = self._guarded("read", lambda: self._db.hget(self._k("art", key), "payload"), None)
        return bytes(value) if value is not None else None

    def import_artifact(
        self, key: str, parts_json: str, payload: bytes, decisions: dict[str, str], created: float
    ) -> bool:
        if self._guarded("read", lambda: self._db.exists(self._k("art", key)), 1):
            return False
        self._store_artifact(key, parts_json, payload, decisions, created)
        return True

    def recent_misses(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._guarded("read", lambda: self._db.lrange(self._k("misses"), 0, limit - 1), [])
        return [json.loads(row) for row in rows]

    # ----------------------------------------------------------------- maintenance
    def stats(self) -> dict[str, Any]:
        def query() -> dict[str, Any]:
            meta = {k.decode(): v.decode() for k, v in self._db.hgetall(self._k("meta")).items()}
            return stats(
                path=_redact(self.url),
                degraded=None,
                schema_version=meta.get("schema_version", SCHEMA_VERSION),
                records=[(r.workload_key, r.target_key) for r in self.all_records()],
                artifacts=self._db.zcard(self._k("lru")),
                artifact_bytes=int(self._db.get(self._k("artifact_bytes")) or 0),
                counters=meta,
                errors=self.errors,
            )

        return self._guarded("read", query, {"path": _redact(self.url), "errors": self.errors})

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        target_key: str | None = None,
        tvm_version: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, int]:
        rule = Prune(older_than_s, target_key, tvm_version)

        def run() -> dict[str, int]:
            counts = {"records": 0, "artifacts": 0}
            for key in self._db.smembers(self._k("records")):
                for member in self._db.zrange(key, 0, -1):
                    if rule.drops_record(self._decode(member)):
                        counts["records"] += 1
                        if not dry_run:
                            self._db.zrem(key, member)
            for entry in self.artifacts() if rule.prunes_artifacts else []:
                if rule.drops_artifact(entry.last_used):
                    counts["artifacts"] += 1
                    if not dry_run:
                        self._store_delete(entry)
            return counts

        return self._guarded("prune", run, {"records": 0, "artifacts": 0})

    def _store_delete(self, entry: ArtifactEntry) -> None:
        pipe = self._db.pipeline(transaction=True)
        pipe.delete(self._k("art", entry.key))
        pipe.zrem(self._k("lru"), entry.key)
        pipe.decrby(self._k("artifact_bytes"), entry.size)
        pipe.execute()

    def integrity(self) -> str:
        def check() -> str:
            self._db.ping()
            self.all_records()
            self.artifacts()
            return "ok"

        return self._guarded("integrity check", check, "error: server unreachable")

    def close(self) -> None:
        self._db.close()


def _redact(url: str) -> str:
    """The URL without its password (never logged or stored)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
