"""The one definition of "matches PyTorch": flatten-and-compare, the reported error, the test helper."""

from dataclasses import dataclass

import pytest
import torch

from torch_rc.numerics import compare_outputs, flatten_outputs, max_abs_error
from torch_rc.testing import assert_outputs_match


@dataclass
class Out:
    logits: torch.Tensor
    extra: tuple


def test_outputs_flatten_through_containers_and_dataclasses():
    a, b, c = torch.ones(1), torch.zeros(2), torch.full((3,), 2.0)
    assert [t.numel() for t in flatten_outputs(Out(a, (b, {"c": c})))] == [1, 2, 3]


def test_reported_error_sees_non_finite_values_in_different_places():
    want = torch.tensor([1.0, float("nan"), 3.0])
    assert max_abs_error(want, want.clone()) == 0.0
    assert max_abs_error(want, torch.tensor([1.5, float("nan"), 3.0])) == pytest.approx(0.5)
    assert max_abs_error(want, torch.tensor([1.0, 2.0, 3.0])) == float("inf")
    assert max_abs_error("no tensors", "here") is None


def test_the_test_helper_decides_as_the_runtime_does():
    want = torch.tensor([1.0, float("nan")])
    assert_outputs_match(want.clone(), want)  # NaN where the reference has NaN
    with pytest.raises(AssertionError, match="output 0"):
        assert_outputs_match(torch.tensor([1.01, float("nan")]), want)
    assert compare_outputs(want, torch.tensor([1.01, float("nan")]), rtol=0.1).ok
    assert_outputs_match(torch.tensor([1.01, float("nan")]), want, rtol=0.1)
    with pytest.raises(AssertionError, match="1 outputs instead of 2"):
        assert_outputs_match((want,), (want, want))
