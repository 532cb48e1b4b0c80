"""The SQLite store under concurrency and faults, with real processes and real files."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from torch_rc.cache.keys import KeyDetails
from torch_rc.cache.records import Check, TuningRecord
from torch_rc.cache.store import SQLiteStore
from torch_rc.errors import CacheError

CHECK = Check(reference="pytorch", rtol=1e-4, atol=1e-4, max_abs_error=1e-6, passed=True)


def record(workload="w", target="t", latency=1.0, trace="[]", **kw):
    return TuningRecord(
        workload_key=workload, target_key=target, trace=trace, latency_s=latency, check=CHECK, **kw
    )


def test_keeps_k_best_per_workload_and_target(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite", keep_best=3)
    for latency in (5.0, 1.0, 4.0, 2.0, 3.0):
        store.put_record(record(latency=latency, samples=int(latency)))
    store.put_record(record(target="other", latency=9.0))
    best = store.best_records("w", "t", k=10)
    assert [r.latency_s for r in best] == [1.0, 2.0, 3.0]
    assert best[0].samples == 1 and best[0].check == CHECK
    assert [r.latency_s for r in store.best_records("w", "other", k=10)] == [9.0]


def test_unverified_record_is_refused(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    bad = Check(reference="pytorch", rtol=1e-4, atol=1e-4, max_abs_error=0.5, passed=False)
    with pytest.raises(CacheError, match="unverified"):
        store.put_record(TuningRecord("w", "t", "[]", 1.0, bad))
    assert store.all_records() == []


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match="schema version 999"):
        SQLiteStore(path)


def test_artifacts_lru_eviction_and_miss_explanation(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite", artifact_cap=250)
    keys = [KeyDetails("artifact", {"graph": "g", "options": str(i)}) for i in range(3)]
    for details in keys:
        store.put_artifact(details, b"x" * 100, {"graph": "compiled"})
        time.sleep(0.01)
    assert store.get_artifact(keys[0]) is None  # evicted: least recently used
    assert store.get_artifact(keys[2]) == (b"x" * 100, {"graph": "compiled"})
    missing = KeyDetails("artifact", {"graph": "g", "options": "9"})
    assert store.get_artifact(missing) is None
    assert store.recent_misses(1)[0]["differing"] == ["options"]
    stats = store.stats()
    assert stats["artifacts"] == 2 and stats["artifact_evictions"] == 1
    assert stats["artifact_hits"] == 1 and stats["artifact_misses"] == 2


WRITER = textwrap.dedent(
    """
    import sys
    from torch_rc.cache.records import Check, TuningRecord
    from torch_rc.cache.store import SQLiteStore
    path, me, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    check = Check("pytorch", 1e-4, 1e-4, 0.0, True)
    store = SQLiteStore(path, keep_best=3)
    for i in range(count):
        store.put_record(TuningRecord(f"own-{me}", "t", "[]", float(i + 1), check))
        store.put_record(TuningRecord("shared", "t", "[]", float(i + 1) + int(me) / 100, check))
        if count > 1000:
            print(i, flush=True)
    """
)


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path = tmp_path / "s.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(n), "40"], stderr=subprocess.PIPE
        )
        for n in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    store = SQLiteStore(path, keep_best=3)
    assert store.integrity() == "ok"
    for n in range(4):
        assert [r.latency_s for r in store.best_records(f"own-{n}", "t", k=5)] == [1.0, 2.0, 3.0]
    assert [r.latency_s for r in store.best_records("shared", "t", k=5)] == [1.0, 1.01, 1.02]
    assert store.errors == 0


def test_kill_9_during_writes_leaves_a_consistent_store(tmp_path):
    path = tmp_path / "s.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), "0", "100000"], stdout=subprocess.PIPE, text=True
    )
    written = -1
    for line in proc.stdout:
        written = int(line)
        if written >= 200:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = SQLiteStore(path, keep_best=3)
    assert store.integrity() == "ok"
    assert [r.latency_s for r in store.best_records("own-0", "t", k=5)] == [1.0, 2.0, 3.0]
    assert all(r.check.passed for r in store.all_records())


def test_corrupted_file_is_moved_aside_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    store.put_record(record())
    store.close()
    with open(path, "r+b") as handle:  # clobber the header and the first pages
        handle.write(b"this is not a database" * 200)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    with caplog.at_level("WARNING"):
        rebuilt = SQLiteStore(path)
    assert "corrupted" in caplog.text
    aside = [p for p in os.listdir(tmp_path) if ".corrupt-" in p]
    assert aside, os.listdir(tmp_path)
    assert rebuilt.all_records() == []
    rebuilt.put_record(record())
    assert len(rebuilt.all_records()) == 1


def test_truncated_file_is_moved_aside(tmp_path):
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    for i in range(50):
        store.put_record(record(workload=f"w{i}", trace="x" * 2000))
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    reopened = SQLiteStore(path)
    assert [p for p in os.listdir(tmp_path) if ".corrupt-" in p]
    assert reopened.integrity() == "ok"


READ_ONLY = textwrap.dedent(
    """
    import os, sys, json
    from torch_rc.cache.records import Check, TuningRecord
    from torch_rc.cache.store import SQLiteStore
    store = SQLiteStore(sys.argv[1])
    store.put_record(TuningRecord("new", "t", "[]", 1.0, Check("pytorch", 1e-4, 1e-4, 0.0, True)))
    print(json.dumps({"degraded": store.degraded,
                      "records": sorted(r.workload_key for r in store.all_records())}))
    """
)


def _can_mount_read_only(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && ! touch {probe}/x"
    try:
        return (
            subprocess.run(
                ["unshare", "-rm", "sh", "-c", cmd], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def test_read_only_location_degrades_to_memory_with_its_contents(tmp_path):
    # Root ignores file modes, so the location is made truly read-only: a read-only bind mount
    # in a private user+mount namespace (unshare), which only the child process sees.
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs unshare -rm and a read-only bind mount to make a read-only location")
    cache = tmp_path / "ro"
    cache.mkdir()
    path = cache / "s.sqlite"
    store = SQLiteStore(path)
    store.put_record(record(workload="old"))
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    script = tmp_path / "ro.py"
    script.write_text(READ_ONLY)
    shell = (
        f"mount --bind {cache} {cache} && mount -o remount,bind,ro {cache} && "
        f"exec {sys.executable} {script} {path}"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "not writable" in out["degraded"] and "copied into memory" in out["degraded"]
    assert out["records"] == ["new", "old"]
    assert [r.workload_key for r in SQLiteStore(path).all_records()] == ["old"]  # file untouched
