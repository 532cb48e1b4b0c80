"""Whole-graph "never slower than eager" gate.

Partition-level choices compare a TVM kernel with its PyTorch twin, but that twin runs decomposed
ATen ops (attention split into matmuls and softmax), which can be slower than eager's fused
kernels. So on the first call the compiled graph is also timed against the original Dynamo graph
run eagerly, and the faster one is kept. Graphs that mutate inputs or draw random numbers are never
re-run for timing (that would change the user's state): they keep the compiled version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch_rc.backends.compiler import GraphReport
from torch_rc.backends.first_call import FirstCallDispatch
from torch_rc.backends.timing import median_ms
from torch_rc.options import Options

__all__ = ["GraphGate"]


class GraphGate:
    """Runs the compiled graph or the eager graph, whichever was faster on the first call."""

    def __init__(
        self,
        compiled: Callable[..., Any],
        eager: Callable[..., Any],
        report: GraphReport,
        options: Options,
        preset: str | None = None,
    ) -> None:
        """``preset`` (``"compiled"``/``"eager"``) is an earlier run's choice, from the cache:
        the first call then runs that side without timing both."""
        self.compiled = compiled
        self.eager = eager
        self.report = report
        self.options = options
        self.preset = preset
        self._dispatch = FirstCallDispatch()

    def __call__(self, *args: Any) -> Any:
        return self._dispatch.dispatch(args, self._first_call)

    def _first_call(self, args: tuple[Any, ...]) -> Any:
        result = self.compiled(*args)  # partitions make their own choices here
        if self.preset in ("compiled", "eager"):
            chosen = self.compiled if self.preset == "compiled" else self.eager
            self._choose(chosen, self.preset, "cached decision from an earlier run")
            return result
        if not self.report.rerun_safe:
            self._choose(
                self.compiled,
                "compiled",
                "graph mutates inputs or draws random numbers; not re-run for timing",
            )
            return result
        if self.report.executed_ops == 0:
            self._choose(
                self.eager,
                "eager",
                "no partition runs on TVM; the original graph skips decomposition overhead",
            )
            return result
        ms = median_ms(
            {"eager": self.eager, "compiled": self.compiled}, args, self.options.measure_repeats
        )
        eager_ms, compiled_ms = ms["eager"], ms["compiled"]
        self.report.eager_ms, self.report.compiled_ms = eager_ms, compiled_ms
        if compiled_ms < eager_ms:
            self._choose(
                self.compiled,
                "compiled",
                f"compiled {compiled_ms:.3f} ms < eager {eager_ms:.3f} ms",
            )
        else:
            self._choose(
                self.eager, "eager", f"eager {eager_ms:.3f} ms <= compiled {compiled_ms:.3f} ms"
            )
        return result

    def _choose(self, fn: Callable[..., Any], choice: str, reason: str) -> None:
        self.report.choice = choice
        self.report.choice_reason = reason
        self._dispatch.choose(fn)
