"""Choose, per partition and on its first real call, between the TVM kernel and PyTorch.

On the first call a partition runs its PyTorch twin and its TVM kernel on the same real inputs,
checks the TVM result against PyTorch (the correctness gate), times both, and from then on runs the
faster one. The choice, the timings and any mismatch are recorded in its :class:`PartitionReport`,
so a model is never silently slower than eager and never silently wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from torch_rc.backends.first_call import FirstCallDispatch
from torch_rc.backends.runtime import TVMKernel
from torch_rc.backends.timing import median_ms
from torch_rc.errors import InputMismatchError, VerificationError
from torch_rc.options import Options

__all__ = ["PartitionReport", "SelectingPartition", "tolerances"]

logger = logging.getLogger(__name__)

# Stop timing a side once this much time has been spent on it (slow partitions get fewer runs).
_TIMING_BUDGET_S = 1.0


@dataclass
class PartitionReport:
    """What happened to one TVM partition.

    Attributes:
        name: Submodule name in the partitioned graph.
        num_ops: Compute ops in the partition.
        ops: Op counts by name.
        status: ``"pending"`` (not called yet), ``"tvm"``, ``"torch"`` or ``"failed"``.
        reason: Why the status is what it is (for torch/failed).
        tvm_ms: Median TVM time on the first call, when measured.
        torch_ms: Median PyTorch time on the first call, when measured.
        max_abs_error: Largest difference between TVM and PyTorch in the verification.
    """

    name: str
    num_ops: int
    ops: dict[str, int] = field(default_factory=dict)
    status: str = "pending"
    reason: str = ""
    tvm_ms: float | None = None
    torch_ms: float | None = None
    max_abs_error: float | None = None


def tolerances(dtype: torch.dtype, options: Options) -> tuple[float, float]:
    """(rtol, atol) for comparing TVM with PyTorch; fp32 defaults to 1e-4 / 1e-4."""
    defaults = {
        torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float32: (1e-4, 1e-4),
        torch.float64: (1e-7, 1e-7),
    }
    rtol, atol = defaults.get(dtype, (0.0, 0.0))
    return (options.rtol or rtol, options.atol or atol)


class SelectingPartition(torch.nn.Module):
    """Stands in a partitioned graph for one TVM partition and runs the chosen implementation."""

    def __init__(
        self,
        eager: torch.fx.GraphModule,
        kernel: TVMKernel | None,
        report: PartitionReport,
        options: Options,
        preset: str | None = None,
    ) -> None:
        """``preset="tvm"`` is an earlier run's choice (from the cache): the first call still
        verifies the kernel but skips timing. (A cached PyTorch choice gets no kernel at all.)"""
        super().__init__()
        self.eager = eager
        self.kernel = kernel
        self.report = report
        self.options = options
        self.preset = preset
        self._dispatch = FirstCallDispatch(eager if kernel is None else None)

    def forward(self, *args: torch.Tensor) -> object:
        return self._dispatch.dispatch(args, self._first_call)

    def _first_call(self, args: tuple[torch.Tensor, ...]) -> object:
        """Verify, time and choose; return the chosen side's result for this call."""
        assert_kernel = self.kernel
        if assert_kernel is None:  # pragma: no cover - guarded in forward
            self._dispatch.choose(self.eager)
            return self.eager(*args)
        expected = self.eager(*args)
        try:
            actual = assert_kernel(*args)
        except InputMismatchError:
            raise
        except Exception as exc:  # e.g. a CUDA kernel whose (lazy) compile or launch fails
            if self.options.strict:
                raise
            self.report.status = "failed"
            self.report.reason = f"TVM kernel failed on its first call: {type(exc).__name__}: {str(exc).strip()[-300:]}"
            logger.warning("torch_rc: %s runs in PyTorch: %s", self.report.name, self.report.reason)
            self._dispatch.choose(self.eager)
            return expected
        if self.options.verify:
            problem = self._compare(expected, actual)
            if problem:
                self.report.status = "failed"
                self.report.reason = f"TVM result differs from PyTorch: {problem}"
                if self.options.strict:
                    raise VerificationError(f"{self.report.name}: {self.report.reason}")
                self._dispatch.choose(self.eager)
                return expected
        if self.options.select == "torch":
            self._decide(self.eager, "torch", "option select='torch'")
            return expected
        if self.preset == "tvm":
            self._decide(
                assert_kernel, "tvm", "cached decision from an earlier run (verified again)"
            )
            return actual
        if self.options.select == "tvm":
            self._decide(assert_kernel, "tvm", "option select='tvm'")
            return actual
        torch_ms, tvm_ms = self._time(args)
        self.report.torch_ms, self.report.tvm_ms = torch_ms, tvm_ms
        if tvm_ms < torch_ms:
            self._decide(assert_kernel, "tvm", f"TVM {tvm_ms:.3f} ms < PyTorch {torch_ms:.3f} ms")
            return actual
        self._decide(
            self.eager,
            "torch",
            f"PyTorch {torch_ms:.3f} ms <= TVM {tvm_ms:.3f} ms (untuned TVM is slower)",
        )
        return expected

    def _decide(self, chosen: Callable[..., object], status: str, reason: str) -> None:
        self.report.status = status
        self.report.reason = reason
        self._dispatch.choose(chosen)

    def _compare(self, expected: object, actual: object) -> str:
        exp = _flat(expected)
        act = _flat(actual)
        if len(exp) != len(act):
            return f"{len(act)} outputs instead of {len(exp)}"
        worst = 0.0
        for index, (want, got) in enumerate(zip(exp, act, strict=True)):
            if want.shape != got.shape or want.dtype != got.dtype:
                return f"output {index} is {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} {want.dtype}"
            rtol, atol = tolerances(want.dtype, self.options)
            try:
                torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
            except AssertionError as exc:
                return f"output {index}: {str(exc).splitlines()[0]} ({_mismatch_summary(exc)})"
            if want.is_floating_point() and want.numel():
                worst = max(worst, float((got.double() - want.double()).abs().max()))
        self.report.max_abs_error = worst
        return ""

    def _time(self, args: tuple[torch.Tensor, ...]) -> tuple[float, float]:
        ms = median_ms(
            {"torch": self.eager, "tvm": self.kernel},  # type: ignore[dict-item]
            args,
            self.options.measure_repeats,
            _TIMING_BUDGET_S,
        )
        return ms["torch"], ms["tvm"]


def _flat(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


def _mismatch_summary(exc: AssertionError) -> str:
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if "Greatest absolute" in line or "Mismatched" in line
    ]
    return "; ".join(lines[:2])
