"""Remote measurement through a real TVM RPC tracker and real RPC servers on 127.0.0.1.

Every process is started by the test (``torch_rc.tuning.fleet.LocalFleet``) and stopped by it; the
faults are real (a server SIGKILLed or SIGSTOPped mid-run, the tracker killed)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

import torch_rc
from torch_rc.options import Options
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning import session as tuning_session
from torch_rc.tuning.fleet import LocalFleet
from torch_rc.tuning.remote import RemoteMeasurer, TrackerGone, expected_device
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.verify import check_schedule

from .workloads import matmul

pytest.importorskip("cloudpickle")
pytest.importorskip("tornado")


def _target():
    from torch_rc.platform.target import detect_target

    return tvm_api().tvm.target.Target(detect_target(Options()).target)


def _candidates(mod, count, seed=0):
    """``count`` distinct legal schedules of ``mod`` (TVM's own sampling)."""
    space = DesignSpace(mod, _target(), seed=seed)
    import random

    rng = random.Random(seed)
    found = {}
    states = space.initial_states()
    while len(found) < count:
        state = states[rng.randrange(len(states))]
        for action in list(space.mutator_probs)[:2]:
            state = space.mutate(state, action, rng.randrange(1, 2**31 - 1)) or state
        sch = space.schedule(state)
        if sch is not None:
            found.setdefault(str(sch.trace), sch.mod)
    return list(found.values())


@pytest.fixture(scope="module")
def fleet():
    with LocalFleet(servers=2, key="test-cpu") as local:
        yield local


def test_tuning_through_the_tracker_uses_every_server_and_verifies(fleet, tmp_path):
    mod = matmul(64, 128, 128, relu=True)
    options = {
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
        "rpc_tracker": fleet.tracker,
        "rpc_key": fleet.key,
    }
    run = torch_rc.tune_tir(mod, trials=8, options=options)
    (task,) = run.tasks
    assert task.status == "tuned", task.error
    remote = run.measuring
    assert remote["servers_at_start"] == 2
    # Every measurement (8 samples + the default schedule's baseline) ran on one of the two
    # servers, and both took part.
    assert sum(remote["by_server"].values()) == remote["measured"] == 9
    assert set(remote["by_server"]) == set(fleet.servers)
    best = task.result.best_measurement
    assert best.ok and best.where in fleet.servers
    assert best.check.passed and best.check.rtol == 1e-4  # the local tuner's fp32 tolerance
    # The stored winner passes the same check when built and run here.
    space = DesignSpace(mod, _target())
    sch = tvm_api().s_tir.Schedule(mod)
    task.result.best_trace.apply_to_schedule(sch, remove_postproc=False)
    assert check_schedule(space.mod, sch.mod, _target()).passed
    stored = [r for r in _store(options).all_records() if r.workload_key == task.key]
    assert len(stored) == 1 and stored[0].check.passed and stored[0].samples == 8


def _store(options):
    from torch_rc.cache.location import store_for

    return store_for(Options.resolve(options).store_location())


def test_measurements_run_in_parallel_over_the_servers(fleet):
    measurer = RemoteMeasurer(
        _target(), tracker=fleet.tracker, key=fleet.key, repeats=2, min_repeat_ms=400
    )
    try:
        assert measurer.parallelism == 2
        mod = matmul(32, 64, 64)
        results = measurer.measure_many(mod, _candidates(mod, 4))
        assert all(r.ok for r in results), [r.error for r in results]
        assert measurer.stats["measured"] == 4 and measurer.count == 4
        assert len({r.where for r in results}) == 2
        # Measurements on the two servers overlapped in time (each session lasts >= 0.8 s of
        # timing): they ran at once, not one after another.
        spans = measurer.intervals
        assert len(spans) == 4
        assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans), (
            spans
        )
    finally:
        measurer.close()


def test_a_wrong_kernel_is_caught_before_its_time_is_believed(fleet):
    measurer = RemoteMeasurer(_target(), tracker=fleet.tracker, key=fleet.key)
    try:
        mod = matmul(32, 64, 64)
        wrong = matmul(32, 64, 64, relu=True)  # same signature, different result
        (result,) = measurer.measure_many(mod, [wrong])
        assert not result.ok and result.error == "wrong result" and result.latency_s is None
        assert measurer.stats["retries"] == 0  # the candidate's fault, not the fleet's
    finally:
        measurer.close()


def test_a_server_of_another_device_is_refused(fleet):
    target = _target()
    with pytest.raises(torch_rc.TorchRCError, match="wants"):
        other = tvm_api().tvm.target.Target(
            {**_target_dict(target), "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu"}
        )
        RemoteMeasurer(other, tracker=fleet.tracker, key=fleet.key)
    # A server that changes under a running measurer (a mixed fleet): each of its samples is
    # refused on the server, retried elsewhere, and counted as a failure when nowhere matches.
    measurer = RemoteMeasurer(target, tracker=fleet.tracker, key=fleet.key, retries=1)
    try:
        measurer.expected = {**expected_device(target), "cpu": "not-" + measurer.expected["cpu"]}
        measurer._runner = measurer._make_runner()
        mod = matmul(32, 64, 64)
        (result,) = measurer.measure_many(mod, _candidates(mod, 1))
        assert not result.ok and "refused server" in result.error
        assert measurer.stats["refused"] == 2 and measurer.stats["fleet_failures"] == 1
    finally:
        measurer.close()


def _target_dict(target):
    return {"kind": "llvm", "num-cores": int(target.attrs["num-cores"])}


def test_unknown_key_and_dead_tracker_are_clear_errors(fleet):
    with pytest.raises(torch_rc.TorchRCError, match="no RPC server .* key 'gpu-farm'"):
        RemoteMeasurer(_target(), tracker=fleet.tracker, key="gpu-farm")
    from torch_rc.tuning.fleet import free_port

    with pytest.raises(TrackerGone, match="does not answer"):
        RemoteMeasurer(_target(), tracker=f"127.0.0.1:{free_port()}", key=fleet.key)


def _session_busy(proc) -> bool:
    """Whether a server is inside a session: TVM's server listens in a child process and forks
    a grandchild per session."""
    try:
        return len(psutil.Process(proc.pid).children(recursive=True)) >= 2
    except psutil.NoSuchProcess:
        return False


def test_a_server_killed_mid_measurement_costs_a_retry_not_the_run():
    with LocalFleet(servers=2, key="kill") as fleet:
        measurer = RemoteMeasurer(
            _target(), tracker=fleet.tracker, key=fleet.key, repeats=3, min_repeat_ms=1000
        )
        try:
            mod = matmul(32, 64, 64)
            candidates = _candidates(mod, 4)
            victim = next(iter(fleet.servers))
            proc = fleet.servers[victim]

            def kill_when_busy() -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not _session_busy(proc):
                    time.sleep(0.05)
                time.sleep(0.5)  # inside the session: uploaded, checking or timing
                fleet.kill_server(victim)

            killer = threading.Thread(target=kill_when_busy)
            killer.start()
            results = measurer.measure_many(mod, candidates)
            killer.join()
            assert all(r.ok for r in results), [r.error for r in results]
            assert measurer.stats["retries"] >= 1
            survivor = next(iter(fleet.servers))
            assert measurer.stats["by_server"][survivor] >= 3
        finally:
            measurer.close()


def test_a_hanging_server_is_timed_out_and_its_sample_retried():
    with LocalFleet(servers=2, key="hang") as fleet:
        measurer = RemoteMeasurer(_target(), tracker=fleet.tracker, key=fleet.key, timeout_s=20)
        try:
            mod = matmul(32, 64, 64)
            # Warm both workers of the pool (their first job imports TVM) before the fault.
            assert all(r.ok for r in measurer.measure_many(mod, _candidates(mod, 2, seed=1)))
            fleet.wait_free(2)  # both back with the tracker: the next requests get both
            hung = next(iter(fleet.servers))
            fleet.hang_server(hung)
            results = measurer.measure_many(mod, _candidates(mod, 4, seed=2))
            assert all(r.ok for r in results), [r.error for r in results]
            assert measurer.stats["timeouts"] >= 1 and measurer.stats["retries"] >= 1
            assert all(r.where != hung for r in results)
        finally:
            measurer.close()


def test_the_tracker_going_away_ends_the_run_and_keeps_what_was_tuned(tmp_path, monkeypatch):
    with LocalFleet(servers=1, key="gone") as fleet:
        calls = []

        class KillsTrackerLater(RemoteMeasurer):
            def measure_many(self, reference_mod, candidate_mods, *, count=True):
                calls.append(len(candidate_mods))
                if len(calls) == 4:
                    fleet.kill_tracker()
                return super().measure_many(reference_mod, candidate_mods, count=count)

        monkeypatch.setattr(tuning_session, "RemoteMeasurer", KillsTrackerLater)
        options = {
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
            "rpc_tracker": fleet.tracker,
            "rpc_key": fleet.key,
            "rpc_timeout_s": 20,
        }
        run = torch_rc.tune_tir(matmul(64, 128, 128), trials=32, options=options)
    (task,) = run.tasks
    assert run.interrupted and "tracker" in run.stopped
    assert 1 <= task.trials < 32
    assert task.result.best_latency_s is not None
    assert task.status in ("interrupted", "kept-default")
    if task.status == "interrupted":  # it beat the default schedule: stored
        assert any(r.workload_key == task.key for r in _store(options).all_records())
