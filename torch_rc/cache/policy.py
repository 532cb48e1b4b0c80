"""What a store guarantees, written once; :mod:`.store` (SQLite) and :mod:`.redis_store` are the
storage under it.

- **Verified only**: a record whose correctness check failed is refused (:func:`refuse_unverified`).
- **Ranking**: records verified on this machine first, then imported ones; each fastest first
  (:func:`record_rank`). An imported record never evicts, nor outranks, a record verified here.
- **Nearest miss**: a lookup that misses names the stored entry whose key differs in the fewest
  parts, and which parts (:func:`nearest_miss`; logged, and kept for ``torch-rc cache explain``).
- **Stats**: one shape for every store (:func:`stats`).
- **Prune**: records older than a cutoff, for a target, or from another TVM version; artifacts
  only by age (:class:`Prune`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch_rc.cache.keys import KeyDetails
from torch_rc.cache.records import TuningRecord
from torch_rc.errors import CacheError

__all__ = [
    "DEFAULT_ARTIFACT_CAP",
    "DEFAULT_KEEP_BEST",
    "MISSES_KEPT",
    "NEAREST_SCAN",
    "Prune",
    "nearest_miss",
    "record_rank",
    "refuse_unverified",
    "stats",
]

logger = logging.getLogger("torch_rc.cache")

DEFAULT_KEEP_BEST = 3  # records kept per (workload, target)
DEFAULT_ARTIFACT_CAP = 2 * 1024**3  # bytes of artifacts before least recently used ones go
NEAREST_SCAN = 200  # most recently used artifacts a miss is compared with
MISSES_KEPT = 100  # recent misses kept for `torch-rc cache explain`


def refuse_unverified(record: TuningRecord) -> None:
    """Raise unless ``record`` passed its correctness check.

    Raises:
        CacheError: nothing unverified enters a store.
    """
    if not record.check.passed:
        raise CacheError(
            f"refusing to store an unverified record for workload {record.workload_key}: "
            f"max error {record.check.max_abs_error} vs {record.check.reference}"
        )


def record_rank(record: TuningRecord) -> tuple[bool, float, int]:
    """Sort key of records of one (workload, target): local before imported, fastest first."""
    return (bool(record.imported_from), record.latency_s, record.id or 0)


def nearest_miss(details: KeyDetails, stored: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The miss entry for ``details`` against ``stored`` (key, parts JSON) pairs: the nearest key
    and the parts it differs in (every part when nothing is stored). Logged when there is one."""
    nearest, differing, nearest_parts = None, sorted(details.parts), None
    for key, parts in stored:
        other = KeyDetails.from_json(parts)
        diff = details.differences(other)
        if len(diff) < len(differing):
            nearest, differing, nearest_parts = key, diff, other
    if nearest_parts is not None and "options" in differing:
        named = _option_differences(details.parts["options"], nearest_parts.parts.get("options"))
        if named:
            differing = [
                f"options ({', '.join(named)})" if d == "options" else d for d in differing
            ]
    if nearest is not None:
        logger.info(
            "torch_rc: cache miss %s: nearest entry differs in %s", details.key[:12], differing
        )
    return {"key": details.key, "nearest": nearest, "differing": differing, "at": time.time()}


def _option_differences(mine: str, theirs: str | None) -> list[str]:
    """The option names that differ between two keys' ``options`` parts (JSON objects)."""
    try:
        a, b = json.loads(mine), json.loads(theirs or "")
    except (TypeError, ValueError):
        return []
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def stats(
    *,
    path: str,
    degraded: str | None,
    schema_version: int,
    records: Iterable[tuple[str, str]],
    artifacts: int,
    artifact_bytes: int,
    counters: dict[str, Any],
    errors: int,
) -> dict[str, Any]:
    """A store's stats; ``records`` are the (workload, target) pairs of its records."""
    pairs = list(records)
    return {
        "path": path,
        "degraded": degraded,
        "schema_version": int(schema_version),
        "records": len(pairs),
        "workloads": len(set(pairs)),
        "artifacts": int(artifacts),
        "artifact_bytes": int(artifact_bytes),
        "artifact_hits": int(counters.get("artifact_hits", 0)),
        "artifact_misses": int(counters.get("artifact_misses", 0)),
        "artifact_evictions": int(counters.get("artifact_evictions", 0)),
        "errors": errors,
    }


@dataclass(frozen=True)
class Prune:
    """What a prune deletes.

    Raises:
        CacheError: none of ``older_than_s``, ``target_key``, ``tvm_version`` is given.
    """

    older_than_s: float | None = None
    target_key: str | None = None
    tvm_version: str | None = None  # records made with another TVM version go

    def __post_init__(self) -> None:
        if self.older_than_s is None and self.target_key is None and self.tvm_version is None:
            raise CacheError("prune needs at least one of: older_than, target, other TVM version")
        object.__setattr__(
            self,
            "_cutoff",
            time.time() - self.older_than_s if self.older_than_s is not None else None,
        )

    @property
    def cutoff(self) -> float | None:
        """Entries last used (artifacts) or created (records) before this time go."""
        return self._cutoff  # type: ignore[attr-defined]

    def drops_record(self, record: TuningRecord) -> bool:
        return (
            (self.cutoff is None or record.created < self.cutoff)
            and (self.target_key is None or record.target_key == self.target_key)
            and (self.tvm_version is None or record.tvm_version != self.tvm_version)
        )

    @property
    def prunes_artifacts(self) -> bool:
        """Artifacts are pruned by age only: a target or TVM version filter keeps them (their
        keys already hold both, so they are never used in the wrong place)."""
        return self.cutoff is not None and self.target_key is None and self.tvm_version is None

    def drops_artifact(self, last_used: float) -> bool:
        return self.prunes_artifacts and last_used < (self.cutoff or 0.0)
