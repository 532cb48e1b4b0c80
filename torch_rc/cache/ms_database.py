"""torch_rc's store as a MetaSchedule database (``PyDatabase``), for where TVM needs one.

MetaSchedule commits every *measured* candidate to its database; none of them has passed a
correctness check yet, so they stay in this object's memory (``pending``) and serve the search.
Only :meth:`StoreDatabase.promote`, called with a passing :class:`~torch_rc.cache.records.Check`,
writes a record to the persistent store. Queries see both: stored (verified) records for this
target and this run's pending ones, best first. Workloads are keyed by structural hash, so a
record is found whatever the function or its variables are named, and always for the target this
database was made for (unlike JSONDatabase, apache/tvm #15549).
"""

from __future__ import annotations

import json
import logging
import statistics
from typing import Any

from torch_rc.cache.interface import TuningStore
from torch_rc.cache.keys import workload_key
from torch_rc.cache.records import Check, TuningRecord
from torch_rc.platform.tvm_shim import tvm_api

__all__ = ["make_database"]

logger = logging.getLogger(__name__)


def _seconds(record: Any) -> float:
    run_secs = [float(s) for s in (record.run_secs or [])]
    return statistics.mean(run_secs) if run_secs else float("inf")


def make_database(store: TuningStore, target_key: str) -> Any:
    """A MetaSchedule ``Database`` backed by ``store`` for the target ``target_key``.

    The returned object also has ``promote(record, check, **provenance)`` and ``pending``.
    """
    api = tvm_api()
    ms = api.s_tir.meta_schedule
    from tvm.ir.utils import derived_object

    @derived_object
    class StoreDatabase(ms.database.PyDatabase):
        def __init__(self) -> None:
            super().__init__()
            self.workloads: dict[str, Any] = {}
            self.pending: dict[str, list[Any]] = {}
            self.served: set[str] = set()  # workloads a build took a stored record for

        def _key(self, mod: Any) -> str:
            return workload_key(mod["main"] if hasattr(mod, "functions_items") else mod)

        def has_workload(self, mod: Any) -> bool:
            key = self._key(mod)
            return key in self.workloads or bool(store.best_records(key, target_key, 1))

        def commit_workload(self, mod: Any) -> Any:
            key = self._key(mod)
            if key not in self.workloads:
                self.workloads[key] = ms.database.Workload(mod)
            return self.workloads[key]

        def commit_tuning_record(self, record: Any) -> None:
            key = self._key(record.workload.mod)
            self.workloads.setdefault(key, record.workload)
            self.pending.setdefault(key, []).append(record)

        def _stored(self, key: str, workload: Any, k: int) -> list[Any]:
            records = []
            for stored in store.best_records(key, target_key, k):
                try:
                    records.append(
                        ms.database.TuningRecord.from_json(json.loads(stored.trace), workload)
                    )
                except Exception as exc:  # noqa: BLE001 - a record TVM cannot read is skipped
                    logger.warning(
                        "torch_rc: stored record %s for %s cannot be read (%s); skipped",
                        stored.id,
                        key[:12],
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    )
            return records

        def get_top_k(self, workload: Any, top_k: int) -> list[Any]:
            key = self._key(workload.mod)
            stored = self._stored(key, workload, top_k)
            if stored:
                self.served.add(key)
            candidates = stored + [r for r in self.pending.get(key, []) if r.run_secs]
            return sorted(candidates, key=_seconds)[:top_k]

        def get_all_tuning_records(self) -> list[Any]:
            everything = [r for records in self.pending.values() for r in records]
            for key, workload in self.workloads.items():
                everything += self._stored(key, workload, 1_000)
            return everything

        def __len__(self) -> int:
            return len(self.get_all_tuning_records())

        def transfer_traces(self, limit: int = 256) -> list[tuple[str, str]]:
            """(workload key, trace) of the newest stored records for this target: what a search
            can start from (torch_rc.tuning.transfer). One read of the store per call."""
            records = [r for r in store.all_records() if r.target_key == target_key]
            records.sort(key=lambda r: r.created, reverse=True)
            return [(r.workload_key, r.trace) for r in records[:limit]]

        def promote(self, record: Any, check: Check, *, key: str = "", **provenance: Any) -> int:
            """Persist a measured record that passed ``check`` (CacheError if it did not);
            ``key`` overrides the workload key computed from the record's module."""
            run_secs = [float(s) for s in (record.run_secs or [])]
            return store.put_record(
                TuningRecord(
                    workload_key=key or self._key(record.workload.mod),
                    target_key=target_key,
                    trace=json.dumps(record.as_json()),
                    latency_s=_seconds(record),
                    latency_std_s=statistics.pstdev(run_secs) if len(run_secs) > 1 else 0.0,
                    repeats=len(run_secs),
                    workload=json.dumps(record.workload.as_json()),
                    check=check,
                    tvm_version=api.version,
                    **provenance,
                )
            )

    return StoreDatabase()
