"""Converters for ATen ops that TVM 0.27's Relax importer lacks, in the importer's own convention.

Each entry maps a converter-table name to ``fn(importer, node) -> relax.Expr``; :mod:`lower` installs
them on the importer and :mod:`support` counts them as supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx

__all__ = ["EXTRA_CONVERTERS", "install"]


def _t(importer: Any, node: torch.fx.Node) -> Any:
    from tvm import relax

    x = importer.env[node.args[0]]
    ndim = len(node.args[0].meta["val"].shape)
    if ndim < 2:
        return x
    return importer.block_builder.emit(relax.op.permute_dims(x, [1, 0]))


def _alias(importer: Any, node: torch.fx.Node) -> Any:
    return importer.env[node.args[0]]


EXTRA_CONVERTERS: dict[str, Callable[[Any, torch.fx.Node], Any]] = {
    "t.default": _t,
    "alias.default": _alias,
}


def install(importer: Any) -> None:
    """Add the extra converters to ``importer.convert_map`` (TVM's own entries win)."""
    for name, fn in EXTRA_CONVERTERS.items():
        if name not in importer.convert_map:
            importer.convert_map[name] = lambda node, fn=fn: fn(importer, node)
