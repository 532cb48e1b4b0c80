"""The store as a MetaSchedule database, with a real TIR workload and a real schedule trace."""

import pytest
import torch

from torch_rc.cache.ms_database import make_database
from torch_rc.cache.store import SQLiteStore
from torch_rc.errors import CacheError
from torch_rc.numerics import tolerances
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.verify import check_schedule

FP32_ATOL = tolerances(torch.float32)[1]  # the runtime's own fp32 tolerance


def _matmul(name="main", n=32):
    from tvm.script import tirx as T  # noqa: F401  (used by the TVMScript below)

    api = tvm_api()
    te = api.tvm.te
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", name)
    return api.tvm.IRModule({"main": func})


def _scheduled(mod, factor=8):
    api = tvm_api()
    sch = api.s_tir.Schedule(mod)
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    sch.split(j, [None, factor])
    return sch


def _record(db, mod, seconds, factor=8):
    api = tvm_api()
    ms = api.s_tir.meta_schedule
    sch = _scheduled(mod, factor)
    workload = db.commit_workload(mod)
    target = api.cpu_target(1)
    return ms.database.TuningRecord(
        sch.trace, workload, [seconds], target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    )


def test_pending_records_serve_queries_and_only_verified_ones_persist(tmp_path):
    api = tvm_api()
    store = SQLiteStore(tmp_path / "s.sqlite")
    target = api.cpu_target(1)
    db = make_database(store, "cpu-key")
    mod = _matmul()
    slow, fast = _record(db, mod, 2e-3, factor=4), _record(db, mod, 1e-3, factor=8)
    db.commit_tuning_record(slow)
    db.commit_tuning_record(fast)
    top = db.get_top_k(db.commit_workload(mod), 2)
    assert [float(r.run_secs[0]) for r in top] == pytest.approx([1e-3, 2e-3])
    assert store.all_records() == []  # measured, not verified: nothing persisted

    scheduled = db.query_schedule(mod, target, "main")
    check = check_schedule(mod, scheduled.mod, target)
    assert check.passed and check.max_abs_error < FP32_ATOL
    db.promote(fast, check, method="test", samples=2)
    (stored,) = store.all_records()
    assert (
        stored.latency_s == pytest.approx(1e-3) and stored.method == "test" and stored.check.passed
    )

    # A new database (as in a new process) finds it, under another function name, for this target only.
    fresh = make_database(store, "cpu-key")
    renamed = _matmul(name="other_name")
    assert fresh.has_workload(renamed)
    again = fresh.query_schedule(renamed, target, "main")
    assert str(again.trace) == str(scheduled.trace)
    assert not make_database(store, "another-cpu").has_workload(renamed)


def test_failed_check_is_refused(tmp_path):
    from torch_rc.cache.records import Check

    db = make_database(SQLiteStore(tmp_path / "s.sqlite"), "cpu-key")
    record = _record(db, _matmul(), 1e-3)
    with pytest.raises(CacheError, match="unverified"):
        db.promote(record, Check("untuned-kernel", 1e-4, 1e-4, 3.0, False))


def test_check_schedule_catches_a_wrong_kernel():
    api = tvm_api()
    mod = _matmul()
    wrong = _matmul()
    # A "schedule" computing something else: the same matmul with one operand transposed.
    te = api.tvm.te
    a = te.placeholder((32, 32), name="A")
    b = te.placeholder((32, 32), name="B")
    k = te.reduce_axis((0, 32), name="k")
    c = te.compute((32, 32), lambda i, j: te.sum(a[i, k] * b[j, k], axis=k), name="C")
    wrong = api.tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    check = check_schedule(mod, wrong, api.cpu_target(1))
    assert not check.passed and check.max_abs_error > 0.1
