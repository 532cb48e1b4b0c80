"""What "matches PyTorch" means, written once: tolerances per dtype, one flatten-and-compare, and
the adversarial inputs every TVM result is also checked on.

Used by the first-call verification of partitions, the tuner's check of every candidate kernel,
warm-up, serving, ``torch_rc.tune`` and the tests, so they cannot drift apart.

Why probes: a check on the first real input alone passed an fp16 ``mean`` that TVM accumulated in
fp16 (inputs near 0 sum without overflow) and then returned 4.0 instead of 10.0 for inputs around
10, and inf around 100. So besides the real input, each floating input is also tried shifted
(+10, +100) and scaled (x100) for dtypes below float32, with a NaN planted, and with +Inf and -Inf
planted, for every floating dtype.

How strictly non-finite values must match depends on the probe: NaN must propagate exactly (NaN
wherever PyTorch has NaN and nowhere else); with infinities planted, both sides must agree on
*which* outputs are finite and on those values, but not on the kind of non-finite value
(PyTorch's exact GELU returns NaN at +inf where the formula, and TVM, give inf).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_TOLERANCES",
    "Match",
    "Probe",
    "compare_outputs",
    "flatten_outputs",
    "max_abs_error",
    "probe_inputs",
    "tolerances",
]

HALF_DTYPES = (torch.float16, torch.bfloat16)

# (rtol, atol) per dtype for TVM vs PyTorch. Integers and booleans must match exactly.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-7, 1e-7),
}


def tolerances(dtype: torch.dtype, rtol: float = 0.0, atol: float = 0.0) -> tuple[float, float]:
    """(rtol, atol) for comparing results of ``dtype``; a non-zero ``rtol``/``atol`` overrides."""
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(dtype, (0.0, 0.0))
    return (rtol or default_rtol, atol or default_atol)


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """Tensors of an output (tensor, tuple/list/dict, dataclass or ``ModelOutput``) in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in flatten_outputs(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    return []


@dataclass(frozen=True)
class Match:
    """The outcome of comparing a result with its reference.

    Attributes:
        ok: Every output matched (count, shapes, dtypes, values within tolerance, NaN where NaN).
        problem: Why not, in one line (empty when ok).
        max_abs_error: Largest finite absolute difference over floating outputs.
    """

    ok: bool
    problem: str = ""
    max_abs_error: float = 0.0


def compare_outputs(
    expected: Any,
    actual: Any,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    label: str = "",
    nonfinite: str = "exact",
) -> Match:
    """Compare ``actual`` with ``expected`` output by output (see :class:`Match`).

    ``rtol``/``atol`` of 0 take the per-dtype defaults. With ``nonfinite="exact"`` NaN must
    appear exactly where the reference has NaN and infinities must match in sign and place; with
    ``"finiteness"`` both must be non-finite in the same places (values compared elsewhere).
    """
    want = flatten_outputs(expected)
    got = flatten_outputs(actual)
    where = f" ({label})" if label else ""
    if len(want) != len(got):
        return Match(False, f"{len(got)} outputs instead of {len(want)}{where}")
    worst = 0.0
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        if w.shape != g.shape or w.dtype != g.dtype:
            return Match(
                False,
                f"output {index} is {tuple(g.shape)} {g.dtype}, expected "
                f"{tuple(w.shape)} {w.dtype}{where}",
            )
        r, a = tolerances(w.dtype, rtol, atol)
        g_cpu, w_cpu = g.detach().cpu(), w.detach().cpu()
        if nonfinite == "finiteness" and w.is_floating_point():
            finite_w, finite_g = torch.isfinite(w_cpu), torch.isfinite(g_cpu)
            if not torch.equal(finite_w, finite_g):
                differ = int((finite_w != finite_g).sum())
                return Match(
                    False,
                    f"output {index}{where}: {differ} element(s) finite on one side only",
                    worst,
                )
            g_cpu, w_cpu = g_cpu[finite_w], w_cpu[finite_w]
        try:
            torch.testing.assert_close(g_cpu, w_cpu, rtol=r, atol=a, equal_nan=True)
        except AssertionError as exc:
            return Match(False, f"output {index}{where}: {_summary(exc)}", worst)
        if w.is_floating_point() and w.numel():
            finite = torch.isfinite(w_cpu) & torch.isfinite(g_cpu)
            if bool(finite.any()):
                diff = (g_cpu.double() - w_cpu.double()).abs()[finite]
                worst = max(worst, float(diff.max()))
    return Match(True, "", worst)


def max_abs_error(expected: Any, actual: Any) -> float | None:
    """Largest absolute difference between the outputs' floating tensors (what reports show;
    :func:`compare_outputs` is the verdict). Non-finite values in the same places count as equal;
    in different places the error is ``inf``. None when there are no tensors to compare."""
    pairs = list(zip(flatten_outputs(expected), flatten_outputs(actual), strict=False))
    if not pairs:
        return None
    worst = 0.0
    for w, g in pairs:
        if w.shape != g.shape or not w.numel():
            continue
        w64, g64 = w.detach().cpu().double(), g.detach().cpu().double()
        finite_w, finite_g = torch.isfinite(w64), torch.isfinite(g64)
        if not torch.equal(finite_w, finite_g):
            return float("inf")
        if bool(finite_w.any()):
            worst = max(worst, float((g64 - w64).abs()[finite_w].max()))
    return worst


def _summary(exc: AssertionError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [
        line
        for line in lines
        if "Greatest absolute" in line or "Mismatched" in line or "NaN" in line
    ]
    return "; ".join([lines[0], *detail[:2]]) if lines else "values differ"


def _shifted(x: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
    return (x.float() * scale + offset).to(x.dtype)


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    out = x.detach().clone()
    out.view(-1)[0] = float("nan")
    return out


def _with_infinities(x: torch.Tensor) -> torch.Tensor:
    out = x.detach().clone()
    flat = out.view(-1)
    flat[flat.numel() // 2] = float("inf")
    flat[-1] = -float("inf")
    return out


@dataclass(frozen=True)
class Probe:
    """One adversarial variant of a call's inputs.

    Attributes:
        label: What was changed, for messages.
        args: The changed inputs.
        nonfinite: How to compare non-finite outputs (see :func:`compare_outputs`).
    """

    label: str
    args: list[Any]
    nonfinite: str = "exact"


def probe_inputs(args: Sequence[Any], skip: Collection[int] = ()) -> Iterable[Probe]:
    """Adversarial variants of ``args`` (see the module docstring).

    Only floating tensors are changed (integer and boolean inputs, e.g. indices and masks, keep
    their values), and not those at the positions in ``skip`` (weights, which the real input
    already exercises). Nothing is yielded when no input may be changed.
    """
    positions = [
        i
        for i, a in enumerate(args)
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel() and i not in skip
    ]
    if not positions:
        return
    half = any(args[i].dtype in HALF_DTYPES for i in positions)

    def variant(change: Any) -> list[Any]:
        return [change(a) if i in positions else a for i, a in enumerate(args)]

    if half:
        yield Probe("inputs shifted by +10", variant(lambda x: _shifted(x, 10.0, 1.0)))
        yield Probe("inputs shifted by +100", variant(lambda x: _shifted(x, 100.0, 1.0)))
        yield Probe("inputs scaled by 100", variant(lambda x: _shifted(x, 0.0, 100.0)))
    yield Probe("a NaN in each input", variant(_with_nan))
    yield Probe("+Inf and -Inf in each input", variant(_with_infinities), "finiteness")
