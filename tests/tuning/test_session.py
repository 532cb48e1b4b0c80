"""Tuning through torch.compile / torch_rc.tune: budgets, the store, reuse, the run log."""

import json

import pytest
import torch

import torch_rc
from torch_rc.backends.compiler import GraphReport
from torch_rc.backends.dynamo import compile_graph
from torch_rc.cache.location import open_store
from torch_rc.numerics import tolerances
from torch_rc.options import Options
from torch_rc.testing import STRICT_TVM, assert_outputs_match

FP32_ATOL = tolerances(torch.float32)[1]  # the runtime's own fp32 tolerance


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(256, 512)
        self.down = torch.nn.Linear(512, 256)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _compile(model, x, options):
    resolved = Options.resolve(options)
    sink: list[GraphReport] = []
    compiled = torch.compile(
        model, backend=lambda gm, inputs: compile_graph(gm, inputs, resolved, sink)[0]
    )
    with torch.no_grad():
        out = compiled(x)
    return out, sink


def test_tune_stores_verified_records_and_later_compiles_use_them(tmp_path):
    model, x = MLP().eval(), torch.randn(32, 256)
    options = {**STRICT_TVM, "cache_dir": str(tmp_path), "progress": False}
    report = torch_rc.tune(model, [x], trials=16, options=options)
    assert report.max_abs_error is not None and report.max_abs_error < FP32_ATOL
    tuned = [t for t in report.tasks if t.status == "tuned"]
    assert len(tuned) == 2  # the two fused matmul kernels; the weight transposes are too small
    assert sum(t.trials for t in tuned) <= 16 and report.samples == sum(
        t.result.samples for t in tuned
    )
    for task in tuned:
        assert task.result.best_measurement.check.passed
        assert task.result.best_latency_s < task.default_s  # stored only because it beats default
    records = open_store(str(tmp_path / "store.sqlite")).all_records()
    assert {r.workload_key for r in records} == {t.key for t in tuned}
    assert all(
        r.check.passed and r.method == "mcts" and r.proposer == "builtin" and r.samples > 0
        for r in records
    )
    log = json.loads(open(report.runs[0].log_path).read())
    assert {t["name"] for t in log["tasks"]} >= {t.name for t in tuned} and log[
        "proposer"
    ] == "builtin"

    # A compile without tuning (another cache key: select_margin differs) builds with the records.
    torch._dynamo.reset()
    out, sink = _compile(model, x, {**options, "select_margin": 0.1})
    assert_outputs_match(out, model(x))
    assert sink[0].tuning is None and sink[0].tuned_kernels == 2

    # Tuning again is a no-op for kernels already tuned.
    again = torch_rc.tune(model, [x], trials=16, options=options)
    assert {t.status for t in again.tasks if t.key in {r.workload_key for r in records}} == {
        "cached"
    }
    assert again.samples == 0


def test_serving_mode_never_tunes(tmp_path):
    model, x = MLP().eval(), torch.randn(8, 256)
    out, sink = _compile(
        model, x, {**STRICT_TVM, "cache_dir": str(tmp_path), "trials": 16, "tune": "never"}
    )
    assert sink[0].tuning is None and sink[0].tuned_kernels == 0
    assert open_store(str(tmp_path / "store.sqlite")).all_records() == []


def test_options_name_bad_tuning_values_and_llm_dict_expands(monkeypatch):
    with pytest.raises(torch_rc.OptionsError, match="'trials' must be >= 0"):
        Options.resolve({"trials": -1})
    with pytest.raises(torch_rc.OptionsError, match="'tune_handoff' must be >= 0"):
        Options.resolve({"tune_handoff": -1})
    with pytest.raises(torch_rc.OptionsError, match="'tune_screen' must be >= 0"):
        Options.resolve({"tune_screen": -1})
    with pytest.raises(torch_rc.OptionsError, match="did you mean 'trials'"):
        Options.resolve({"trails": 5})
    with pytest.raises(torch_rc.OptionsError, match="llm_modle"):
        Options.resolve({"llm": {"modle": "x"}})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    resolved = Options.resolve({"llm": {"base_url": "http://h/v1", "model": "m"}})
    assert resolved.llm_enabled and resolved.llm_api_key == "sk-from-env"
    assert "sk-from-env" not in repr(resolved)
    from torch_rc.backends.artifact import options_dict

    assert "llm_api_key" not in options_dict(resolved)
    assert not Options.resolve({}).tuning and Options.resolve({}, mode="max-autotune").trials == 256


def test_torch_compile_tunes_with_the_real_local_llm(tmp_path, llm_url):
    model, x = MLP().eval(), torch.randn(16, 256)
    options = {
        **STRICT_TVM,
        "cache_dir": str(tmp_path),
        "trials": 4,  # one kernel, a few LLM-guided expansions: the small model is slow on 2 cores
        # The machine-derived starting tiles would take two of the four samples before any
        # expansion; this test is about the LLM's expansions.
        "tune_blocking": False,
        "progress": False,
        "llm": {"base_url": llm_url, "model": "gemma-3-270m", "api_key": "sk-local-test"},
    }
    out, sink = _compile(model, x, options)
    assert_outputs_match(out, model(x))
    run = sink[0].tuning
    assert run.proposer == "llm:gemma-3-270m"
    tuned = [t for t in run.tasks if t.result is not None]
    assert tuned and all(t.result.proposer == "llm:gemma-3-270m" for t in tuned)
    stats = tuned[0].result.stats
    assert stats["calls"] >= 1 and stats["failed_calls"] == 0 and stats["completion_tokens"] > 0
    assert 0.0 <= stats["fallback_rate"] <= 1.0
    records = open_store(str(tmp_path / "store.sqlite")).all_records()
    assert records and all(r.models == ("gemma-3-270m",) and r.tokens > 0 for r in records)
    stored = (tmp_path / "store.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "runs").iterdir()
    )
    assert b"sk-local-test" not in stored  # the API key is never written anywhere


def test_shards_split_every_key_once_and_agree_everywhere():
    from torch_rc.tuning.session import shard_of

    keys = [f"{i:016x}" for i in range(2000)]
    for drivers in (1, 2, 3, 5):
        owners = [shard_of(key, drivers) for key in keys]
        assert set(owners) == set(range(drivers))  # every driver gets work
        assert owners == [shard_of(key, drivers) for key in keys]  # deterministic
    # The split is fixed across processes and machines (a hash of the key, not Python's
    # salted hash()): these values are what every driver computes.
    assert [shard_of(k, 3) for k in ("e09724099ae5174e", "0" * 16, "f" * 16)] == [
        int(__import__("hashlib").sha256(k.encode()).hexdigest()[:12], 16) % 3
        for k in ("e09724099ae5174e", "0" * 16, "f" * 16)
    ]


MODELS = """
import torch

def layers():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(),
        torch.nn.Linear(96, 160), torch.nn.GELU(),
        torch.nn.Linear(160, 48), torch.nn.Tanh(),
        torch.nn.Linear(48, 128), torch.nn.Sigmoid(),
        torch.nn.Linear(128, 32),
    )
"""


def test_two_drivers_split_one_model_over_one_redis_store(tmp_path, redis_url):
    """Two real ``torch-rc tune`` processes at once, one model, one Redis store: each tunes
    the kernels that hash to it, nothing is tuned twice, and the store ends with every one."""
    import os
    import subprocess
    import sys

    (tmp_path / "fleet_models.py").write_text(MODELS)
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "TORCH_RC_CACHE_DIR": str(tmp_path / f"driver{index}"),
            "PYTHONPATH": str(tmp_path),
        }
        command = [sys.executable, "-m", "torch_rc.cli", "tune", "fleet_models:layers"]
        command += ["--input", "8x64", "--trials", "24", "--cache-url", redis_url]
        command += ["--drivers", "2", "--driver-index", str(index), "--no-progress"]
        procs.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    logs = []
    for index in range(2):
        (path,) = (tmp_path / f"driver{index}" / "runs").glob("run-*.json")
        logs.append({t["key"]: t for t in json.loads(path.read_text())["tasks"]})
    assert logs[0].keys() == logs[1].keys()  # both saw the same kernels
    worked = [{k for k, t in log.items() if t.get("samples")} for log in logs]
    assert worked[0] and worked[1], "each driver tuned some kernels"
    assert not worked[0] & worked[1], "no kernel was tuned twice"
    for index, log in enumerate(logs):
        for key, task in log.items():
            if key in worked[1 - index]:
                assert task["status"] in ("other-driver", "cached"), task
    # Every kernel a driver tuned and kept is in the shared store, where any replica (or a
    # warm-up run) reads it.
    kept = {k for log in logs for k, t in log.items() if t["status"] in ("tuned", "interrupted")}
    stored = {r.workload_key for r in open_store(redis_url).all_records()}
    assert kept and kept <= stored


def _relu_exp_relax():
    """A real Relax module (TVM's torch frontend) with one element-wise fused kernel."""
    from tvm.relax.frontend.torch import from_exported_program

    class ReluExp(torch.nn.Module):
        def forward(self, x):
            return torch.exp(torch.relu(x))

    return from_exported_program(torch.export.export(ReluExp(), (torch.randn(64, 256),)))


def _relu_kernel(mod, target, options, database=None):
    """The relu kernel of ``mod`` as the build schedules it: default schedules, or with
    ``database``'s records first."""
    from torch_rc.passes.build import relax_pipeline

    if database is None:
        with target.target:
            lowered = relax_pipeline(target, options)(mod)
    else:
        with target.target, database:
            lowered = relax_pipeline(target, options, tuned=True)(mod)
    (name,) = [g for g in lowered.get_global_vars() if "relu" in g.name_hint]
    return lowered[name]


def test_the_unscheduled_kernel_is_timed_only_when_its_cold_run_says_it_could_win():
    from tests.tuning.workloads import matmul
    from torch_rc.platform.tvm_shim import tvm_api
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.session import _default_latency, _unscheduled

    measurer = Measurer(tvm_api().cpu_target(2), repeats=2, min_repeat_ms=1)
    mod = matmul(64, 128, 128)
    assert _unscheduled(mod, 1.0, measurer) is None  # no reference run yet: nothing known
    default = _default_latency(mod, measurer)  # makes the reference (unscheduled) run
    measured = measurer.measured
    # A cold run far slower than the bar: not timed at all.
    assert _unscheduled(mod, 1e-9, measurer) is None and measurer.measured == measured
    # A slow enough bar: timed, kept, and its check passed (it is the reference itself).
    got = _unscheduled(mod, 10.0, measurer)
    assert measurer.measured == measured + 1 and measurer.count == 0  # not a tuning sample
    assert got is not None and got.ok and got.latency_s < 10.0
    assert default is not None


def test_an_unscheduled_kernel_faster_than_every_schedule_is_stored_and_built(tmp_path):
    """The session's verdict when the plain loops win: a record with an empty trace, which the
    build applies (no default schedule on top) and which computes the same result."""
    from torch_rc.cache.ms_database import make_database
    from torch_rc.cache.store import SQLiteStore
    from torch_rc.platform.target import detect_target
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.session import (
        _conclude,
        _default_latency,
        _unscheduled,
        extract_tasks,
    )
    from torch_rc.tuning.tuner import TuneResult

    options = Options.resolve({})
    target = detect_target(options, torch.device("cpu"))
    mod = _relu_exp_relax()
    (task,) = extract_tasks([mod], target.target)
    measurer = Measurer(target.target, repeats=2, min_repeat_ms=1)
    assert _default_latency(task.mod, measurer) is not None
    task.default_s = 10.0  # a default schedule slower than the plain loops (on demand)
    task.unscheduled = _unscheduled(task.mod, task.default_s, measurer)
    task.result = TuneResult("mcts", "builtin", samples=2)  # every candidate failed
    database = make_database(SQLiteStore(tmp_path / "s.sqlite"), target.key)
    _conclude(task, database, target.target)
    assert task.status == "kept-unscheduled" and "unscheduled kernel" in task.error
    (record,) = database.get_all_tuning_records()
    assert len(record.trace.insts) == 0

    def kernel_script(database=None):
        return _relu_kernel(mod, target, options, database).script()

    assert "T.parallel" in kernel_script()  # the default schedule
    assert "T.parallel" not in kernel_script(database) and "T.vectorized" not in kernel_script(
        database
    )

    # An earlier tuned result that beats both bars is what gets stored instead.
    task.result = TuneResult(
        "mcts",
        "builtin",
        samples=2,
        best_latency_s=task.unscheduled.latency_s / 2,
        best_trace=record.trace,
        best_measurement=task.unscheduled,
    )
    _conclude(task, None, target.target)
    assert task.status == "tuned"


def test_a_default_schedule_that_tuning_could_not_beat_is_stored_and_built(tmp_path):
    """kept-default: the default schedule's trace (checked to replay to the measured module)
    becomes the kernel's record, so a later run finds the kernel tuned instead of tuning it
    again, and the build applies it: the same kernel as with no records. A search cut short
    (Ctrl-C, the time limit) stores nothing."""
    from torch_rc.cache.ms_database import make_database
    from torch_rc.cache.store import SQLiteStore
    from torch_rc.platform.target import detect_target
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.session import _conclude, _measure_default, extract_tasks
    from torch_rc.tuning.tuner import TuneResult

    options = Options.resolve({})
    target = detect_target(options, torch.device("cpu"))
    mod = _relu_exp_relax()
    (task,) = extract_tasks([mod], target.target)
    measurer = Measurer(target.target, repeats=2, min_repeat_ms=1)
    task.default, task.default_trace = _measure_default(task.mod, measurer)
    assert task.default is not None and task.default.ok and task.default.check.passed
    assert task.default_trace is not None and len(task.default_trace.insts) > 0
    task.default_s = task.default.latency_s

    def lost(interrupted):  # a search whose best is slower than the default (on demand)
        return TuneResult(
            "mcts",
            "builtin",
            samples=4,
            best_latency_s=task.default_s * 2,
            best_trace=task.default_trace,
            best_measurement=task.default,
            interrupted=interrupted,
        )

    path = tmp_path / "s.sqlite"
    task.result = lost(interrupted=True)
    _conclude(task, make_database(SQLiteStore(path), target.key), target.target)
    assert task.status == "kept-default"
    assert not make_database(SQLiteStore(path), target.key).has_workload(task.mod)

    task.result = lost(interrupted=False)
    _conclude(task, make_database(SQLiteStore(path), target.key), target.target)
    assert task.status == "kept-default" and "default schedule" in task.error
    database = make_database(SQLiteStore(path), target.key)  # as a later run opens it
    assert database.has_workload(task.mod)
    (record,) = database.get_top_k(database.commit_workload(task.mod), 2)
    assert len(record.trace.insts) == len(task.default_trace.insts)
    (stored,) = SQLiteStore(path).best_records(task.key, target.key, 1)
    assert stored.proposer == "default" and stored.samples == 4

    def kernel(database=None):
        return _relu_kernel(mod, target, options, database)

    import tvm_ffi

    assert tvm_ffi.structural_equal(kernel(database).body, kernel().body)
    assert "T.parallel" in kernel(database).script()


def test_sessions_pass_the_handoff_and_screen_options_to_each_search():
    from types import SimpleNamespace

    from tests.tuning.workloads import matmul
    from torch_rc.platform.hardware import host_hardware
    from torch_rc.platform.tvm_shim import tvm_api
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.session import _start_search

    task = SimpleNamespace(mod=matmul(16, 32, 32), name="matmul")
    measurer = Measurer(tvm_api().cpu_target(2))
    for given, expected in (({}, 0), ({"tune_handoff": 24}, 24)):
        search = _start_search(task, Options.resolve(given), host_hardware(), measurer, [])
        assert search is not None and search.handoff == expected
    for given, expected in (({}, Options().tune_screen), ({"tune_screen": 96}, 96)):
        search = _start_search(task, Options.resolve(given), host_hardware(), measurer, [])
        assert search is not None and search.screen == expected
