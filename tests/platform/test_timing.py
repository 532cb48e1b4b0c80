"""The robust comparison behind every first-call choice: paired rounds, an interval, a noise
verdict. Fake callables with known costs stand in for kernels (timings are behaviour here: which
side wins and whether the verdict is final), never wall-clock thresholds on real code."""

import random
import time

import pytest
import torch

from torch_rc.platform.timing import NOISY_SPREAD, compare, cuda_devices, median_interval, spread


def busy(seconds):
    def run(*_args):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return run


def test_a_clear_quiet_win_is_decided_for_the_candidate():
    result = compare(busy(4e-4), busy(1e-4), (), min_rounds=8, budget_s=2.0)
    assert result.verdict == "candidate" and result.decided
    assert result.high < 0.95 and result.ratio < 0.5


def test_a_clear_loss_is_decided_for_the_baseline():
    result = compare(busy(1e-4), busy(4e-4), (), min_rounds=8, budget_s=2.0)
    assert result.verdict == "baseline" and result.decided and result.ratio > 2


def test_equal_sides_never_pick_the_candidate():
    fn = busy(2e-4)
    result = compare(fn, fn, (), min_rounds=8, budget_s=1.0)
    assert result.verdict != "candidate"


def test_a_baseline_slowed_down_on_most_rounds_is_not_a_final_win():
    # The scenario: eager measured while the machine was busy. Here the baseline is
    # slowed 20x on a random 60% of its runs while both sides really cost the same: the median
    # ratio alone would call the candidate 20x faster; the ratios' spread marks it noisy.
    rng = random.Random(0)
    fast = busy(5e-4)  # long enough that call overheads stay well under the 5% margin
    slow = busy(1e-2)

    def sometimes_slow(*args):
        (slow if rng.random() < 0.6 else fast)(*args)

    for _ in range(5):  # whatever share of the rounds the slowdown lands on
        result = compare(sometimes_slow, fast, (), min_rounds=10, max_rounds=40, budget_s=3.0)
        assert not (result.verdict == "candidate" and result.decided)
        assert result.noisy
        assert result.spread > NOISY_SPREAD or result.min_ratio > 0.95


def test_sampling_stops_at_the_budget():
    calls = []

    def slow(*_args):
        calls.append(1)
        time.sleep(0.02)

    compare(slow, slow, (), min_rounds=50, max_rounds=50, budget_s=0.05)
    assert 2 * 3 <= len(calls) <= 2 * 6  # warm-up pairs plus the minimum of 3 rounds


def test_a_tiny_kernel_is_timed_past_max_rounds_until_the_load_window_has_passed():
    # 10 rounds of a ~10 us call take well under a millisecond: far too short a window to see
    # other processes' CPU time (counted in 10 ms ticks), so rounds go on past max_rounds.
    fn = busy(1e-5)
    result = compare(fn, fn, (), min_rounds=3, max_rounds=10, budget_s=1.0)
    assert result.rounds > 10


def test_median_interval_is_distribution_free_order_statistics():
    samples = list(range(1, 101))  # median 50.5
    low, high = median_interval(samples)
    assert low < 50.5 < high and (low, high) == (41, 60)
    assert median_interval([1, 2, 3]) == (1, 3)  # too few rounds: the whole range


def test_spread_is_the_relative_interquartile_range():
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread([1, 2, 3, 4, 5]) == pytest.approx(2 / 3)


def test_a_busy_neighbour_makes_any_verdict_provisional():
    import os
    import subprocess
    import sys
    import time

    import torch

    from torch_rc.platform.timing import CONTENDED_CORES, compare

    x = torch.randn(128, 128)
    quiet_fast = compare(lambda a: a @ a @ a, lambda a: a @ a, [x])
    spin = "print('spinning', flush=True)\nwhile True: pass"
    spinners = [
        subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        for spinner in spinners:  # each one is past its start-up and spinning
            assert spinner.stdout.readline().strip() == "spinning"
        time.sleep(0.1)
        contended = compare(lambda a: a @ a @ a, lambda a: a @ a, [x])
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    # Neighbours spinning every core are seen, and nothing decided meanwhile is final.
    assert contended.others_cores > CONTENDED_CORES and contended.noisy
    assert not contended.decided and "other processes busy" in contended.describe("a", "b")
    assert quiet_fast.others_cores >= 0.0


def test_cpu_inputs_have_no_cuda_devices_to_synchronise():
    assert cuda_devices([torch.ones(1), 3, "x"]) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_inputs_are_synchronised():
    x = torch.ones(1, device="cuda")
    assert cuda_devices([x, x, torch.ones(1)]) == [x.device]
