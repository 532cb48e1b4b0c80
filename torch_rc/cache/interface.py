"""The store interface the backend, the CLI and bundles use; SQLiteStore and RedisStore implement it."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, runtime_checkable

from torch_rc.cache.keys import KeyDetails
from torch_rc.cache.records import ArtifactEntry, TuningRecord

__all__ = ["TuningStore"]


@runtime_checkable
class TuningStore(Protocol):
    """Tuning records and compiled-graph artifacts, safe to share between processes.

    Failures inside a store are values: a read that fails is a miss, a write that fails is
    logged and counted in ``errors``; only unverified records raise (CacheError).
    """

    degraded: str | None
    errors: int

    def lock(
        self, key: str, timeout_s: float | None = None
    ) -> contextlib.AbstractContextManager[bool]: ...
    def put_record(self, record: TuningRecord) -> int: ...
    def best_records(
        self, workload_key: str, target_key: str, k: int = 1
    ) -> list[TuningRecord]: ...
    def all_records(self) -> list[TuningRecord]: ...
    def get_artifact(self, details: KeyDetails) -> tuple[bytes, dict[str, str]] | None: ...
    def put_artifact(
        self, details: KeyDetails, payload: bytes, decisions: dict[str, str]
    ) -> None: ...
    def update_decisions(self, details: KeyDetails, decisions: dict[str, Any]) -> None: ...
    def set_decisions(self, key: str, decisions: dict[str, Any]) -> bool: ...
    def artifacts(self) -> list[ArtifactEntry]: ...
    def artifact_payload(self, key: str) -> bytes | None: ...
    def import_artifact(
        self, key: str, parts_json: str, payload: bytes, decisions: dict[str, str], created: float
    ) -> bool: ...
    def recent_misses(self, limit: int = 20) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, Any]: ...
    def prune(
        self,
        *,
        older_than_s: float | None = None,
        target_key: str | None = None,
        tvm_version: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, int]: ...
    def integrity(self) -> str: ...
    def close(self) -> None: ...
