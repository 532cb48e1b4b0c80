"""Helpers shared by torch_rc's tests, examples and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torch_rc.numerics import flatten_outputs, tolerances

__all__ = ["assert_matches_eager", "flatten_outputs", "STRICT_TVM"]

# Options the numerics tests compile with: errors raise instead of falling back, and every
# partition runs on TVM (so a test cannot pass because PyTorch quietly did the work).
STRICT_TVM: dict[str, Any] = {"strict": True, "select": "tvm"}


def assert_matches_eager(
    compiled: Callable[..., Any],
    eager: Callable[..., Any],
    *inputs: Any,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert that ``compiled(*inputs)`` equals ``eager(*inputs)``: count, shapes, dtypes, values.

    Tolerances default to the table the runtime's verification uses
    (:func:`torch_rc.numerics.tolerances`: 1e-4 for fp32, 1e-7 for fp64, 1e-2 for fp16,
    2e-2 for bf16, exact for integers). Use random, non-zero inputs: zero-filled inputs hide most
    bugs.
    """
    got = flatten_outputs(compiled(*inputs))
    want = flatten_outputs(eager(*inputs))
    if len(got) != len(want):
        raise AssertionError(f"compiled returned {len(got)} tensors, eager {len(want)}")
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape or g.dtype != w.dtype:
            raise AssertionError(
                f"output {index}: {tuple(g.shape)} {g.dtype} vs eager {tuple(w.shape)} {w.dtype}"
            )
        default_rtol, default_atol = tolerances(w.dtype)
        tol_r = default_rtol if rtol is None else rtol
        tol_a = default_atol if atol is None else atol
        torch.testing.assert_close(
            g, w, rtol=tol_r, atol=tol_a, msg=lambda m, i=index: f"output {i}: {m}"
        )
