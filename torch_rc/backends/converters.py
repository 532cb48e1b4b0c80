"""Converters for ATen ops that TVM 0.27's Relax importer lacks, in the importer's own convention.

Each entry maps a converter-table name to ``fn(importer, node) -> relax.Expr``; :mod:`lower` installs
them on the importer and :mod:`support` counts them as supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx

__all__ = ["EXTRA_CONVERTERS", "OVERRIDE_CONVERTERS", "install"]


def _t(importer: Any, node: torch.fx.Node) -> Any:
    from tvm import relax

    x = importer.env[node.args[0]]
    ndim = len(node.args[0].meta["val"].shape)
    if ndim < 2:
        return x
    return importer.block_builder.emit(relax.op.permute_dims(x, [1, 0]))


def _alias(importer: Any, node: torch.fx.Node) -> Any:
    return importer.env[node.args[0]]


def _cat(importer: Any, node: torch.fx.Node) -> Any:
    """``aten.cat`` that, like PyTorch, skips legacy empty 1-D inputs (empty KV caches)."""
    from tvm import relax

    tensors = list(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ndim = len(node.meta["val"].shape)
    kept = [
        t
        for t in tensors
        if not (len(t.meta["val"].shape) == 1 and t.meta["val"].numel() == 0 and ndim != 1)
    ]
    if len(kept) == 1:
        return importer.env[kept[0]]
    axis = dim % ndim if ndim else 0
    return importer.block_builder.emit(relax.op.concat([importer.env[t] for t in kept], axis=axis))


def _addmm(importer: Any, node: torch.fx.Node) -> Any:
    """``aten.addmm`` accumulating like PyTorch: in float64 for float64, in float32 for float32 and
    half types, then cast back (TVM 0.27's converter hard-codes a float32 result)."""
    from tvm import relax

    bias, mat1, mat2 = (importer.env[arg] for arg in node.args[:3])
    beta = node.kwargs.get("beta", 1)
    alpha = node.kwargs.get("alpha", 1)
    dtype = str(node.meta["val"].dtype).replace("torch.", "")
    accumulate = "float64" if dtype == "float64" else "float32" if "float" in dtype else dtype
    emit = importer.block_builder.emit
    product = emit(relax.op.linear_algebra.matmul(mat1, mat2, out_dtype=accumulate))
    if accumulate != dtype:
        product = emit(relax.op.astype(product, dtype))
    if alpha != 1:
        product = emit(relax.op.multiply(product, relax.const(alpha, dtype)))
    if beta == 0:
        return product
    if beta != 1:
        bias = emit(relax.op.multiply(bias, relax.const(beta, dtype)))
    return emit(relax.op.add(bias, product))


EXTRA_CONVERTERS: dict[str, Callable[[Any, torch.fx.Node], Any]] = {
    "t.default": _t,
    "alias.default": _alias,
}

# Converters that replace TVM's own because its version rejects inputs PyTorch accepts.
OVERRIDE_CONVERTERS: dict[str, Callable[[Any, torch.fx.Node], Any]] = {
    "cat.default": _cat,
    "addmm.default": _addmm,
}


def install(importer: Any) -> None:
    """Add the extra converters to ``importer.convert_map`` and apply the overrides."""
    for name, fn in EXTRA_CONVERTERS.items():
        if name not in importer.convert_map:
            importer.convert_map[name] = lambda node, fn=fn: fn(importer, node)
    for name, fn in OVERRIDE_CONVERTERS.items():
        importer.convert_map[name] = lambda node, fn=fn: fn(importer, node)
