"""Helpers shared by torch_rc's tests, examples and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch_rc.numerics import compare_outputs, flatten_outputs

__all__ = ["assert_matches_eager", "assert_outputs_match", "flatten_outputs", "STRICT_TVM"]

# Options the numerics tests compile with: errors raise instead of falling back, and every
# partition runs on TVM (so a test cannot pass because PyTorch quietly did the work).
STRICT_TVM: dict[str, Any] = {"strict": True, "select": "tvm"}


def assert_outputs_match(
    actual: Any, expected: Any, *, rtol: float | None = None, atol: float | None = None
) -> None:
    """Assert that ``actual`` equals ``expected`` the way the runtime's verification decides it
    (:func:`torch_rc.numerics.compare_outputs`): count, shapes, dtypes, values within the dtype's
    tolerance (:func:`torch_rc.numerics.tolerances`: 1e-4 for fp32, 1e-7 for fp64, 1e-2 for fp16,
    2e-2 for bf16, exact for integers), NaN exactly where the reference has NaN."""
    match = compare_outputs(expected, actual, rtol=rtol or 0.0, atol=atol or 0.0)
    if not match.ok:
        raise AssertionError(match.problem)


def assert_matches_eager(
    compiled: Callable[..., Any],
    eager: Callable[..., Any],
    *inputs: Any,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert that ``compiled(*inputs)`` equals ``eager(*inputs)`` (see :func:`assert_outputs_match`).
    Use random, non-zero inputs: zero-filled inputs hide most bugs."""
    assert_outputs_match(compiled(*inputs), eager(*inputs), rtol=rtol, atol=atol)
