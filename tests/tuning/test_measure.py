"""The in-process measurer on real TIR: correct candidates are timed, wrong or broken ones fail
as values and never get a latency."""

import pytest
import torch

from torch_rc.numerics import tolerances
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.measure import Measurer
from torch_rc.tuning.verify import check_schedule

FP32_ATOL = tolerances(torch.float32)[1]  # the runtime's own fp32 tolerance


def _matmul(n=64, transpose_b=False):
    te = tvm_api().tvm.te
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    if transpose_b:
        c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[j, k], axis=k), name="C")
    else:
        c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm_api().tvm.IRModule({"main": te.create_prim_func([a, b, c])})


def _tiled(mod):
    sch = tvm_api().s_tir.Schedule(mod)
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 8])
    sch.reorder(i, jo, k, ji)
    sch.vectorize(ji)
    sch.parallel(i)
    return sch.mod


@pytest.fixture(scope="module")
def measurer():
    return Measurer(tvm_api().cpu_target(2), repeats=3, min_repeat_ms=5)


def test_correct_candidate_is_verified_and_timed(measurer):
    mod = _matmul()
    before = measurer.count
    result = measurer.measure(mod, _tiled(mod))
    assert result.ok and result.check.passed and result.check.max_abs_error < FP32_ATOL
    assert result.latency_s > 0 and len(result.runs) == 3
    assert measurer.count == before + 1


def test_wrong_candidate_fails_as_a_value(measurer):
    result = measurer.measure(_matmul(), _matmul(transpose_b=True))
    assert not result.ok and result.error == "wrong result" and result.latency_s is None
    assert result.check is not None and not result.check.passed


def test_unbuildable_candidate_fails_as_a_value(measurer):
    result = measurer.measure(_matmul(), "not a module")
    assert not result.ok and result.error.startswith("build failed") and result.latency_s is None


def test_check_schedule_agrees_with_the_measurer(measurer):
    mod = _matmul()
    assert check_schedule(mod, _tiled(mod), measurer.target).passed
    assert not check_schedule(mod, _matmul(transpose_b=True), measurer.target).passed
