"""What every store promises, checked on SQLite and on a real Redis server."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from torch_rc.cache.keys import KeyDetails
from torch_rc.cache.location import make_store
from torch_rc.cache.records import Check, TuningRecord
from torch_rc.errors import CacheError

CHECK = Check("pytorch", 1e-4, 1e-4, 1e-6, True)


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return str(tmp_path / "store.sqlite")


def test_k_best_and_unverified_refused(location):
    from torch_rc.cache.interface import TuningStore

    store = make_store(location)
    assert isinstance(store, TuningStore)
    store.keep_best = 2
    for latency in (3.0, 1.0, 2.0):
        store.put_record(TuningRecord("w", "t", "[]", latency, CHECK, method="mcts"))
    assert [r.latency_s for r in store.best_records("w", "t", k=5)] == [1.0, 2.0]
    with pytest.raises(CacheError, match="unverified"):
        store.put_record(
            TuningRecord("w", "t", "[]", 0.1, Check("pytorch", 1e-4, 1e-4, 1.0, False))
        )
    assert [r.method for r in store.all_records()] == ["mcts", "mcts"]


def test_artifacts_lru_decisions_misses_stats(location):
    store = make_store(location)
    store.artifact_cap = 250
    keys = [KeyDetails("artifact", {"graph": "g", "options": str(i)}) for i in range(3)]
    for details in keys:
        store.put_artifact(details, b"y" * 100, {})
        time.sleep(0.01)
    store.update_decisions(keys[2], {"graph": "eager"})
    assert store.get_artifact(keys[0]) is None
    assert store.get_artifact(keys[2]) == (b"y" * 100, {"graph": "eager"})
    assert store.get_artifact(KeyDetails("artifact", {"graph": "g", "options": "7"})) is None
    assert store.recent_misses(1)[0]["differing"] == ["options"]
    stats = store.stats()
    assert (stats["artifacts"], stats["artifact_bytes"], stats["artifact_evictions"]) == (2, 200, 1)
    assert (stats["artifact_hits"], stats["artifact_misses"]) == (1, 2)
    assert store.import_artifact(keys[1].key, keys[1].to_json(), b"z", {}, 0.0) is False
    assert store.integrity() == "ok"


def test_prune_by_target(location):
    store = make_store(location)
    store.put_record(TuningRecord("w", "a", "[]", 1.0, CHECK))
    store.put_record(TuningRecord("w", "b", "[]", 1.0, CHECK))
    assert store.prune(target_key="a", dry_run=True) == {"records": 1, "artifacts": 0}
    store.prune(target_key="a")
    assert [r.target_key for r in store.all_records()] == ["b"]


def test_prune_by_age_and_tvm_version_and_artifacts_only_by_age(location):
    store = make_store(location)
    old = TuningRecord("w", "t", "[]", 1.0, CHECK, created=time.time() - 3600)
    store.put_record(old)
    store.put_record(TuningRecord("w", "t", "[]", 2.0, CHECK, tvm_version="0.1"))
    store.put_artifact(KeyDetails("artifact", {"graph": "g"}), b"x", {})
    with pytest.raises(CacheError, match="prune needs at least one"):
        store.prune()
    # A TVM-version filter leaves artifacts alone (their keys hold the version already).
    assert store.prune(tvm_version=old.tvm_version, dry_run=True) == {"records": 1, "artifacts": 0}
    assert store.prune(older_than_s=60) == {"records": 1, "artifacts": 0}
    assert [r.latency_s for r in store.all_records()] == [2.0]
    assert store.prune(older_than_s=-60) == {"records": 1, "artifacts": 1}
    assert store.stats()["records"] == 0 and store.artifacts() == []


def test_a_miss_names_the_options_that_differ(location):
    store = make_store(location)
    options = {"select": "measure", "trials": 0, "rtol": 0.0}
    store.put_artifact(
        KeyDetails("artifact", {"graph": "g", "options": json.dumps(options)}), b"x", {}
    )
    other = json.dumps({**options, "select": "tvm", "trials": 8})
    assert store.get_artifact(KeyDetails("artifact", {"graph": "g", "options": other})) is None
    assert store.recent_misses(1)[0]["differing"] == ["options (select, trials)"]


def test_a_miss_names_its_nearest_entry_in_the_log(location, caplog):
    store = make_store(location)
    store.put_artifact(KeyDetails("artifact", {"graph": "g", "options": "1"}), b"x", {})
    with caplog.at_level("INFO", logger="torch_rc.cache"):
        assert store.get_artifact(KeyDetails("artifact", {"graph": "g", "options": "2"})) is None
    assert "nearest entry differs in ['options']" in caplog.text


FLEET_WRITER = textwrap.dedent(
    """
    import sys
    from torch_rc.cache.records import Check, TuningRecord
    from torch_rc.cache.location import make_store
    store = make_store(sys.argv[1])
    me = int(sys.argv[2])
    for i in range(30):
        store.put_record(TuningRecord("shared", "t", "[]", i + 1 + me / 10, Check("pytorch", 1e-4, 1e-4, 0.0, True)))
    """
)


def test_machines_sharing_a_redis_server_lose_nothing(redis_url, tmp_path):
    script = tmp_path / "w.py"
    script.write_text(FLEET_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), redis_url, str(n)]) for n in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    best = make_store(redis_url).best_records("shared", "t", k=5)
    assert [r.latency_s for r in best] == [1.0, 1.1, 1.2]


COMPILE = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    from torch_rc.backends.dynamo import compile_graph
    from torch_rc.options import Options
    from torch_rc.testing import assert_outputs_match
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)).eval()
    x = torch.randn(4, 16)
    sink = []
    options = Options.resolve({"select": "tvm"})
    with torch.no_grad():
        out = torch.compile(model, backend=lambda gm, ex: compile_graph(gm, ex, options, sink)[0])(x)
        assert_outputs_match(out, model(x))
    print(json.dumps({"cache": sink[0].cache}))
    """
)


def _compile_in_process(tmp_path, url):
    script = tmp_path / "c.py"
    script.write_text(COMPILE)
    env = dict(os.environ, TORCH_RC_CACHE_URL=url)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_backend_shares_compiled_artifacts_through_redis(redis_url, tmp_path):
    assert _compile_in_process(tmp_path, redis_url)[0]["cache"] == "miss"
    assert _compile_in_process(tmp_path, redis_url)[0]["cache"] == "hit"


def test_unreachable_cache_server_means_compiling_without_cache(tmp_path):
    from tests.cache.redis_server import free_port

    out, err = _compile_in_process(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert out["cache"] == "off"
    assert "cannot reach the cache server" in err and "compiling without the cache" in err
