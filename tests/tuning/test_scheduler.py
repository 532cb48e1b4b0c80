"""The model-level budget: which kernel tunes next, in rounds, and when tuning stops (pure logic,
exact choices)."""

import pytest

from torch_rc.tuning.scheduler import Slot, TaskScheduler


def test_untried_tasks_go_heaviest_first_and_tiny_ones_never():
    slots = [Slot(1, 1e-3), Slot(4, 1e-3), Slot(1, 3e-3), Slot(1, 1e-6)]
    scheduler = TaskScheduler(slots)
    assert slots[3].done  # under 1% of the time
    assert scheduler.next_task() == 1  # 4 ms per inference
    scheduler.record(1, 1e-3, spent=8)  # no gain
    assert scheduler.next_task() == 2  # 3 ms, untried, beats task 1's decayed prior


def test_rounds_follow_remaining_time_and_are_deterministic():
    def run():
        scheduler = TaskScheduler([Slot(1, 10e-3), Slot(1, 5e-3)], patience=100)
        order, best = [], 10e-3
        for _ in range(12):
            index = scheduler.next_task()
            order.append(index)
            best = best * 0.6 if index == 0 else best
            scheduler.record(index, best if index == 0 else 5e-3, spent=8)
        return order, scheduler

    order, scheduler = run()
    assert order == run()[0]  # no randomness: the same budget goes the same way
    # Task 0 improves until its remaining time is small; the flat 5 ms task then gets the
    # rounds (its time per round, b/n, is what is left to win).
    assert order[:3] == [0, 1, 0] and order[-4:].count(1) >= 2
    assert scheduler.projections == sorted(scheduler.projections, reverse=True)


def test_matches_tvm_gradient_formula():
    slot = Slot(2, 8e-3, history=[8e-3, 6e-3, 5e-3, 4e-3])
    scheduler = TaskScheduler([slot, Slot(1, 8e-3)], alpha=0.2, window=3)
    # g = w * (alpha * (b[n-1-W] - b[n-1]) / W + (1 - alpha) * b[n-1] / n)
    expected = 2 * (0.2 * (8e-3 - 4e-3) / 3 + 0.8 * 4e-3 / 4)
    assert scheduler.gradient(0) == pytest.approx(expected)


def test_stops_when_gains_flatten_and_when_a_search_is_used_up():
    slots = [Slot(1, 1e-3), Slot(1, 1e-3)]
    scheduler = TaskScheduler(slots, patience=3, min_gain=0.01)
    for _ in range(3):
        scheduler.record(scheduler.next_task(), 0.999e-3, spent=4)
    assert not scheduler.flattened() or scheduler.next_task() is None
    scheduler.record(0, 0.999e-3, spent=4)
    assert scheduler.flattened() and scheduler.next_task() is None
    used_up = TaskScheduler([Slot(1, 1e-3)])
    used_up.record(0, None, spent=0)  # nothing left to measure
    assert used_up.next_task() is None


def test_projection_is_weight_times_best():
    scheduler = TaskScheduler([Slot(3, 2e-3), Slot(1, 4e-3)])
    assert scheduler.projected_s() == pytest.approx(10e-3)
    scheduler.record(0, 1e-3, spent=8)
    assert scheduler.projected_s() == pytest.approx(7e-3)
