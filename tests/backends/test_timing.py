"""Timing helpers shared by the partition and whole-graph choices."""

import time

import pytest
import torch

from torch_rc.backends.timing import cuda_devices, median_ms


def test_median_ms_times_each_side_on_the_same_inputs():
    calls = {"fast": 0, "slow": 0}

    def fast(x):
        calls["fast"] += 1
        return x

    def slow(x):
        calls["slow"] += 1
        time.sleep(0.01)
        return x

    ms = median_ms({"fast": fast, "slow": slow}, (torch.ones(2),), repeats=3)
    assert calls == {"fast": 3, "slow": 3}
    assert ms["slow"] >= 10.0 > ms["fast"]


def test_budget_stops_timing_a_slow_side_after_one_run():
    calls = []
    median_ms({"slow": lambda: calls.append(time.sleep(0.02))}, (), repeats=5, budget_s=0.01)
    assert len(calls) == 1


def test_cpu_inputs_have_no_cuda_devices_to_synchronise():
    assert cuda_devices([torch.ones(1), 3, "x"]) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_inputs_are_synchronised():
    x = torch.ones(1, device="cuda")
    assert cuda_devices([x, x, torch.ones(1)]) == [x.device]
