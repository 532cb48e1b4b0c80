"""Helpers shared by torch_rc's tests, examples and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["assert_matches_eager", "flatten_outputs", "STRICT_TVM"]

# Options the numerics tests compile with: errors raise instead of falling back, and every
# partition runs on TVM (so a test cannot pass because PyTorch quietly did the work).
STRICT_TVM: dict[str, Any] = {"strict": True, "select": "tvm"}


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """Tensors of a model output (tensor, tuple/list/dict, or a ModelOutput) in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict) or hasattr(value, "to_tuple"):
        items = value.to_tuple() if hasattr(value, "to_tuple") else tuple(value.values())
        return [t for item in items for t in flatten_outputs(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    return []


def assert_matches_eager(
    compiled: Callable[..., Any],
    eager: Callable[..., Any],
    *inputs: Any,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert that ``compiled(*inputs)`` equals ``eager(*inputs)``: count, shapes, dtypes, values.

    Tolerances default to 1e-4 for fp32 (dtype-aware through ``torch.testing.assert_close``
    otherwise). Use random, non-zero inputs: zero-filled inputs hide most bugs.
    """
    got = flatten_outputs(compiled(*inputs))
    want = flatten_outputs(eager(*inputs))
    if len(got) != len(want):
        raise AssertionError(f"compiled returned {len(got)} tensors, eager {len(want)}")
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape or g.dtype != w.dtype:
            raise AssertionError(f"output {index}: {tuple(g.shape)} {g.dtype} vs eager {tuple(w.shape)} {w.dtype}")
        tol = {} if w.dtype != torch.float32 else {"rtol": 1e-4, "atol": 1e-4}
        if rtol is not None:
            tol = {"rtol": rtol, "atol": atol if atol is not None else rtol}
        torch.testing.assert_close(g, w, **tol, msg=lambda m, i=index: f"output {i}: {m}")
