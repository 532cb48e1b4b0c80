"""Graphs with symbolic shapes: compile once per concrete input signature, at call time.

Dynamo marks a dimension dynamic after it sees two sizes for it (for example two
``nn.Sequential`` models of different widths share one ``forward`` code object). TVM partitions are
built for static shapes, so such a graph is specialised: each distinct signature of its inputs
(tensor shapes and dtypes, integer values) is compiled on first use and cached; past
``MAX_SPECIALIZATIONS`` signatures the graph runs in PyTorch and the misses are counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

__all__ = ["SpecializingGraph", "has_symbolic_shapes", "MAX_SPECIALIZATIONS"]

logger = logging.getLogger(__name__)

MAX_SPECIALIZATIONS = 8


def has_symbolic_shapes(example_inputs: Sequence[object]) -> bool:
    """True if any input is a SymInt or a tensor with a symbolic dimension."""
    for value in example_inputs:
        if isinstance(value, torch.SymInt | torch.SymFloat):
            return True
        if isinstance(value, torch.Tensor) and any(
            isinstance(d, torch.SymInt) for d in value.shape
        ):
            return True
    return False


def _signature(args: Sequence[object]) -> tuple[object, ...]:
    key: list[object] = []
    for value in args:
        if isinstance(value, torch.Tensor):
            key.append((tuple(value.shape), value.dtype, value.device.type, value.requires_grad))
        else:
            key.append(value)
    return tuple(key)


class SpecializingGraph:
    """Callable that compiles ``gm`` for each concrete input signature it is called with.

    Args:
        gm: The Dynamo graph (with symbolic shapes).
        compile_static: Compiles ``gm`` for concrete example inputs and returns a callable.
        max_specializations: Signatures to compile before running the rest in PyTorch.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        compile_static: Callable[[torch.fx.GraphModule, list[object]], Callable[..., Any]],
        max_specializations: int = MAX_SPECIALIZATIONS,
    ) -> None:
        self.gm = gm
        self.compile_static = compile_static
        self.max_specializations = max_specializations
        self.compiled: dict[tuple[object, ...], Callable[..., Any]] = {}
        self.eager_calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: object) -> Any:
        key = _signature(args)
        fn = self.compiled.get(key)
        if fn is None:
            with self._lock:
                fn = self.compiled.get(key)
                if fn is None:
                    if len(self.compiled) >= self.max_specializations:
                        self.eager_calls += 1
                        if self.eager_calls == 1:
                            logger.warning(
                                "torch_rc: more than %d input signatures for one graph; "
                                "new ones run in PyTorch",
                                self.max_specializations,
                            )
                        return self.gm(*args)
                    fn = self.compile_static(self.gm, list(args))
                    self.compiled[key] = fn
        return fn(*args)
