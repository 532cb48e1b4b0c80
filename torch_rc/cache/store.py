"""The persistent store: tuning records and compiled-graph artifacts in SQLite.

Why not MetaSchedule's JSONDatabase: its writes are unlocked appends, its records point at
workloads by line numbers that only hold in the writing process, and its ``QueryTuningRecord``
ignores the target (apache/tvm #15549). This store keys everything by content, writes in
transactions (WAL, busy timeout, ``BEGIN IMMEDIATE``), keeps the k best records per
(workload, target), caps the artifact table with LRU eviction, and never stops a compile:

- a corrupted or truncated file is moved aside (``*.corrupt-<time>``) with a warning and rebuilt;
- a read-only location degrades to an in-memory copy of what it holds, with a warning;
- a schema newer than this code is refused with a clear error (the caller then runs uncached);
- a database error during use is logged and counted, and reads as a miss.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from torch_rc.cache.keys import SCHEMA_VERSION, KeyDetails
from torch_rc.cache.policy import (
    DEFAULT_ARTIFACT_CAP,
    DEFAULT_KEEP_BEST,
    MISSES_KEPT,
    NEAREST_SCAN,
    Prune,
    nearest_miss,
    refuse_unverified,
    stats,
)
from torch_rc.cache.records import ArtifactEntry, TuningRecord
from torch_rc.errors import CacheError

__all__ = ["SQLiteStore", "DEFAULT_KEEP_BEST", "DEFAULT_ARTIFACT_CAP"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workload_key TEXT NOT NULL,
    target_key TEXT NOT NULL,
    latency_s REAL NOT NULL,
    tvm_version TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_best ON records (workload_key, target_key, latency_s);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY,
    parts TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    decisions TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS artifacts_lru ON artifacts (last_used);
CREATE TABLE IF NOT EXISTS misses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    nearest TEXT,
    differing TEXT NOT NULL,
    at REAL NOT NULL
);
"""


# Records verified on this machine first, then imported ones (TuningRecord.imported_from); each
# fastest first. An imported record never evicts, nor outranks, a record verified here.
_RANK = "COALESCE(json_extract(body, '$.imported_from'), '') != '', latency_s, id"


def _flock(handle: Any, deadline: float | None) -> bool:
    """Take an exclusive flock on ``handle``, polling until ``deadline`` (None: wait forever)."""
    if deadline is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


class SQLiteStore:
    """Tuning records and artifacts in one SQLite file (or in memory when it cannot be written).

    Args:
        path: Database file; None keeps everything in memory.
        keep_best: Records kept per (workload, target).
        artifact_cap: Total artifact bytes kept; least recently used artifacts go first.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        keep_best: int = DEFAULT_KEEP_BEST,
        artifact_cap: int = DEFAULT_ARTIFACT_CAP,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.keep_best = keep_best
        self.artifact_cap = artifact_cap
        self.degraded: str | None = None  # why the store runs in memory, if it does
        self.errors = 0
        self._mutex = threading.RLock()
        self._thread_locks: dict[str, threading.Lock] = {}
        self._conn = self._open()

    # ----------------------------------------------------------------- opening and recovery
    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._init(_connect(":memory:"))
        _refuse_shared_dir(self.path.parent)
        if not _writable(self.path):
            return self._degrade_to_memory(f"cache location {self.path.parent} is not writable")
        try:
            conn = self._init(_connect(str(self.path)))
            _private_files(self.path)
            return conn
        except CacheError:
            raise
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "unable to open" in str(exc):
                return self._degrade_to_memory(f"cannot write {self.path}: {exc}")
            raise CacheError(f"cannot open tuning cache {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            aside = self._move_aside()
            logger.warning(
                "torch_rc: tuning cache %s is corrupted (%s); moved it to %s and started a new one",
                self.path,
                exc,
                aside,
            )
            return self._init(_connect(str(self.path)))

    def _init(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            conn.close()
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise CacheError(
                f"tuning cache {self.path} has schema version {row[0]}, newer than this torch_rc "
                f"({SCHEMA_VERSION}); upgrade torch_rc or point TORCH_RC_CACHE_DIR elsewhere"
            )
        return conn

    def _move_aside(self) -> Path:
        assert self.path is not None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{aside}{suffix}"))
        return aside

    def _degrade_to_memory(self, reason: str) -> sqlite3.Connection:
        memory = _connect(":memory:")
        assert self.path is not None
        if self.path.exists():
            try:
                source = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True)
                source.backup(memory)
                source.close()
                reason += " (its contents were copied into memory)"
            except sqlite3.DatabaseError:
                reason += " (its contents could not be read)"
        self.degraded = reason
        logger.warning("torch_rc: %s; the cache runs in memory and nothing will persist", reason)
        return self._init(memory)

    # ----------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _guarded(self, what: str, fn: Callable[[], _T], default: _T) -> _T:
        """Run ``fn``; a database error is logged and counted and ``default`` returned."""
        try:
            with self._mutex:
                return fn()
        except sqlite3.DatabaseError as exc:
            self.errors += 1
            logger.warning(
                "torch_rc: tuning cache %s failed (%s); continuing without it", what, exc
            )
            return default

    def _bump(self, conn: sqlite3.Connection, counter: str) -> None:
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, '1') "
            "ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (counter,),
        )

    @contextlib.contextmanager
    def lock(self, key: str, timeout_s: float | None = None) -> Iterator[bool]:
        """Hold a lock named ``key`` across processes (a file lock; released even on kill -9).

        Yields whether it is held: False when ``timeout_s`` passed while another holder kept it
        (the caller then goes on without it).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.path is None or self.degraded:
            lock = self._thread_locks.setdefault(key, threading.Lock())
            held = lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
            try:
                yield held
            finally:
                if held:
                    lock.release()
            return
        lock_dir = self.path.parent / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(lock_dir / f"{key[:64]}.lock", "a+") as handle:
            held = _flock(handle, deadline)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    # ----------------------------------------------------------------- tuning records
    def put_record(self, record: TuningRecord) -> int:
        """Store a record that passed its correctness check; keep the k best per key pair.

        Raises:
            CacheError: the record did not pass its check (nothing unverified enters the store).
        """
        refuse_unverified(record)

        def insert() -> int:
            with self._write() as conn:
                cursor = conn.execute(
                    "INSERT INTO records (workload_key, target_key, latency_s, tvm_version, created, body)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        record.workload_key,
                        record.target_key,
                        record.latency_s,
                        record.tvm_version,
                        record.created,
                        record.to_json(),
                    ),
                )
                conn.execute(
                    "DELETE FROM records WHERE workload_key = ? AND target_key = ? AND id NOT IN ("
                    " SELECT id FROM records WHERE workload_key = ? AND target_key = ?"
                    f" ORDER BY {_RANK} LIMIT ?)",
                    (record.workload_key, record.target_key) * 2 + (self.keep_best,),
                )
                return int(cursor.lastrowid or 0)

        return self._guarded("write", insert, -1)

    def best_records(self, workload_key: str, target_key: str, k: int = 1) -> list[TuningRecord]:
        """The ``k`` fastest records for a workload on a target, fastest first."""

        def query() -> list[TuningRecord]:
            rows = self._conn.execute(
                "SELECT id, body FROM records WHERE workload_key = ? AND target_key = ?"
                f" ORDER BY {_RANK} LIMIT ?",
                (workload_key, target_key, k),
            ).fetchall()
            return [TuningRecord.from_json(body, id=rid) for rid, body in rows]

        return self._guarded("read", query, [])

    def all_records(self) -> list[TuningRecord]:
        def query() -> list[TuningRecord]:
            rows = self._conn.execute(
                "SELECT id, body FROM records ORDER BY workload_key, target_key, latency_s"
            ).fetchall()
            return [TuningRecord.from_json(body, id=rid) for rid, body in rows]

        return self._guarded("read", query, [])

    # ----------------------------------------------------------------- artifacts
    def get_artifact(self, details: KeyDetails) -> tuple[bytes, dict[str, str]] | None:
        """The payload and first-call decisions stored under ``details``, or None (a counted miss)."""
        key = details.key

        def query() -> tuple[bytes, dict[str, str]] | None:
            row = self._conn.execute(
                "SELECT payload, decisions FROM artifacts WHERE key = ?", (key,)
            ).fetchone()
            with self._write() as conn:
                if row is None:
                    self._bump(conn, "artifact_misses")
                    self._record_miss(conn, details)
                    return None
                self._bump(conn, "artifact_hits")
                conn.execute(
                    "UPDATE artifacts SET last_used = ?, hits = hits + 1 WHERE key = ?",
                    (time.time(), key),
                )
            return bytes(row[0]), json.loads(row[1])

        return self._guarded("read", query, None)

    def _record_miss(self, conn: sqlite3.Connection, details: KeyDetails) -> None:
        miss = nearest_miss(
            details,
            conn.execute(
                "SELECT key, parts FROM artifacts ORDER BY last_used DESC LIMIT ?", (NEAREST_SCAN,)
            ).fetchall(),
        )
        conn.execute(
            "INSERT INTO misses (key, nearest, differing, at) VALUES (?, ?, ?, ?)",
            (miss["key"], miss["nearest"], json.dumps(miss["differing"]), miss["at"]),
        )
        conn.execute(
            "DELETE FROM misses WHERE id NOT IN (SELECT id FROM misses ORDER BY id DESC LIMIT ?)",
            (MISSES_KEPT,),
        )

    def put_artifact(self, details: KeyDetails, payload: bytes, decisions: dict[str, str]) -> None:
        """Store (or replace) an artifact, then evict least recently used ones over the cap."""

        def insert() -> None:
            now = time.time()
            with self._write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO artifacts"
                    " (key, parts, payload, size, decisions, created, last_used, hits)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        details.key,
                        details.to_json(),
                        payload,
                        len(payload),
                        json.dumps(decisions),
                        now,
                        now,
                    ),
                )
                self._evict(conn)

        self._guarded("write", insert, None)

    def update_decisions(self, details: KeyDetails, decisions: dict[str, Any]) -> None:
        """Record the first-call decisions of an artifact stored before its first call."""
        self.set_decisions(details.key, decisions)

    def set_decisions(self, key: str, decisions: dict[str, Any]) -> bool:
        """Replace the decision record of the artifact ``key``; True if it exists."""

        def update() -> bool:
            with self._write() as conn:
                cursor = conn.execute(
                    "UPDATE artifacts SET decisions = ? WHERE key = ?",
                    (json.dumps(decisions), key),
                )
                return cursor.rowcount == 1

        return self._guarded("write", update, False)

    def _evict(self, conn: sqlite3.Connection) -> None:
        total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM artifacts").fetchone()[0]
        for key, size in conn.execute(
            "SELECT key, size FROM artifacts ORDER BY last_used"
        ).fetchall():
            if total <= self.artifact_cap:
                break
            conn.execute("DELETE FROM artifacts WHERE key = ?", (key,))
            total -= size
            self._bump(conn, "artifact_evictions")

    def artifacts(self) -> list[ArtifactEntry]:
        def query() -> list[ArtifactEntry]:
            rows = self._conn.execute(
                "SELECT key, parts, size, created, last_used, hits, decisions FROM artifacts"
                " ORDER BY last_used DESC"
            ).fetchall()
            return [
                ArtifactEntry(k, KeyDetails.from_json(p).parts, s, c, lu, h, json.loads(d))
                for k, p, s, c, lu, h, d in rows
            ]

        return self._guarded("read", query, [])

    def artifact_payload(self, key: str) -> bytes | None:
        row = self._guarded(
            "read",
            lambda: self._conn.execute(
                "SELECT payload FROM artifacts WHERE key = ?", (key,)
            ).fetchone(),
            None,
        )
        return bytes(row[0]) if row else None

    def import_artifact(
        self, key: str, parts_json: str, payload: bytes, decisions: dict[str, str], created: float
    ) -> bool:
        """Insert an artifact from a bundle unless one with the same key exists; True if added."""

        def insert() -> bool:
            with self._write() as conn:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO artifacts (key, parts, payload, size, decisions, created, last_used, hits)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        key,
                        parts_json,
                        payload,
                        len(payload),
                        json.dumps(decisions),
                        created,
                        time.time(),
                    ),
                )
                self._evict(conn)
                return cursor.rowcount == 1

        return self._guarded("write", insert, False)

    def recent_misses(self, limit: int = 20) -> list[dict[str, Any]]:
        def query() -> list[dict[str, Any]]:
            rows = self._conn.execute(
                "SELECT key, nearest, differing, at FROM misses ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [
                {"key": k, "nearest": n, "differing": json.loads(d), "at": a} for k, n, d, a in rows
            ]

        return self._guarded("read", query, [])

    # ----------------------------------------------------------------- maintenance
    def stats(self) -> dict[str, Any]:
        def query() -> dict[str, Any]:
            conn = self._conn
            counters = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            return stats(
                path=str(self.path) if self.path else ":memory:",
                degraded=self.degraded,
                schema_version=counters.pop("schema_version", SCHEMA_VERSION),
                records=conn.execute("SELECT workload_key, target_key FROM records").fetchall(),
                artifacts=conn.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0],
                artifact_bytes=conn.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM artifacts"
                ).fetchone()[0],
                counters=counters,
                errors=self.errors,
            )

        return self._guarded("read", query, {"path": str(self.path), "errors": self.errors})

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        target_key: str | None = None,
        tvm_version: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Delete what :class:`~torch_rc.cache.policy.Prune` says. Returns counts (of what would
        go, with dry_run)."""
        rule = Prune(older_than_s, target_key, tvm_version)

        def run() -> dict[str, int]:
            with self._write() as conn:
                doomed = [
                    rid
                    for rid, body in conn.execute("SELECT id, body FROM records").fetchall()
                    if rule.drops_record(TuningRecord.from_json(body, id=rid))
                ]
                gone = [
                    key
                    for key, last_used in conn.execute(
                        "SELECT key, last_used FROM artifacts"
                    ).fetchall()
                    if rule.drops_artifact(last_used)
                ]
                if not dry_run:
                    conn.executemany("DELETE FROM records WHERE id = ?", [(r,) for r in doomed])
                    conn.executemany("DELETE FROM artifacts WHERE key = ?", [(k,) for k in gone])
                return {"records": len(doomed), "artifacts": len(gone)}

        return self._guarded("prune", run, {"records": 0, "artifacts": 0})

    def integrity(self) -> str:
        """SQLite's full integrity check ("ok" when sound)."""
        return self._guarded(
            "integrity check",
            lambda: self._conn.execute("PRAGMA integrity_check").fetchone()[0],
            "error",
        )

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


def _connect(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 60000")
    if target != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _refuse_shared_dir(directory: Path) -> None:
    """A cache directory others can write is code execution for them (artifacts hold libraries
    this process loads; signatures stop swapped entries, but not a swapped database or key)."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return  # made below, 0700
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"cache directory {directory} is writable by other users (mode {mode & 0o777:o}): "
            f"refusing to use it (run chmod go-w {directory}, or set TORCH_RC_CACHE_DIR to a "
            "private directory)"
        )


def _private_files(path: Path) -> None:
    """The database and its WAL files readable and writable by their owner only."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(f"{path}{suffix}", 0o600)
        except OSError:
            pass  # not there yet, or not ours: SQLite makes -wal/-shm with the database's mode


def _writable(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    if not os.access(path.parent, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)
