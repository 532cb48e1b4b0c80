"""``exp``, ``sigmoid``, ``tanh`` and ``erf`` for LLVM CPU targets as plain, vectorisable TIR arithmetic.

TVM lowers ``T.exp`` on a CPU to LLVM's ``llvm.exp`` intrinsic, and LLVM scalarises a vector
``llvm.exp.v16f32`` into one libm call per lane (``sigmoid`` and ``tanh`` are legalised to
``exp``): softmax, SiLU and tanh-GELU kernels were bound by scalar ``expf`` however they were
scheduled; ``erf`` became a call of libm's scalar ``erff`` per element (exact GELU)
(docs/tvm-facts.md, "Vector math on CPUs"). :func:`rewrite_exp` replaces each float32
call with arithmetic that vectorises with the loop around it:

* ``exp(x)``: Cody-Waite range reduction ``x = n ln2 + r`` (``|r| <= ln2/2``, ``ln2`` split in a
  9-bit high part, so ``n * ln2_hi`` is exact) and Cephes' degree-7 polynomial for ``exp(r)``; the
  scale ``2^n`` is applied as two normal powers of two, so results that overflow become ``inf``
  and results in the subnormal range round like any product. ``x`` is clamped to [-104, 89]
  first (beyond it the result is 0 or ``inf`` either way) and NaN passes through.
* ``sigmoid(x) = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below, with ``e = exp(-|x|)``
  (TVM's own ``1 / (1 + exp(-x))`` overflows to 0 where the result is still a subnormal).
* ``tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1))``, and Cephes' odd polynomial for ``|x| < 0.625``
  (where the subtraction would cancel); NaN passes through.
* ``erf(x) = x P(x^2) / Q(x^2)`` on [-4, 4], +-1 beyond (Eigen's and XLA's float erf); NaN
  passes through.

Measured against float64 results rounded to float32 on every 97th float32 bit pattern (44 million
finite results, scalar and 16-lane loops alike): ``exp`` and ``tanh`` at most 1 ulp apart (99.6% and
99.1% exact), ``sigmoid`` at most 3 ulp (96% exact), ``erf`` at most 5 ulp (67% exact, absolute
error under 3e-7; every 1009th pattern); ``inf``, ``-inf``, NaN, signed zeros, overflow
and underflow exact (tests/platform/test_vector_math.py). Only float32 is rewritten; other types keep TVM's lowering.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REWRITTEN_OPS", "dtype_of", "rewrite_exp"]

# The ops this module rewrites (TVM 0.27 op names).
REWRITTEN_OPS = ("tirx.exp", "tirx.sigmoid", "tirx.tanh", "tirx.erf")

_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375  # 355/512: 9 significant bits, so n * _LN2_HI is exact for |n| < 2^15
_LN2_LO = -2.12194440e-4  # ln 2 - _LN2_HI
# Cephes expf: exp(r) ~ 1 + r + r^2 (c0 r^5 + c1 r^4 + ... + c5), |r| <= ln2/2.
_EXP_POLY = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)
# exp(89) > FLT_MAX and exp(-104) < half the smallest subnormal: clamping there changes nothing.
_X_MAX = 89.0
_X_MIN = -104.0
# Cephes tanhf: tanh(x) ~ x + x^3 P(x^2) for |x| < 0.625; 1 - 2 / (exp(2|x|) + 1) beyond.
_TANH_SMALL = 0.625
_TANH_POLY = (
    -5.70498872745e-3,
    2.06390887954e-2,
    -5.37397155531e-2,
    1.33314422036e-1,
    -3.33332819422e-1,
)

# erf(x) ~ x P(x^2) / Q(x^2) on [-4, 4] (beyond, erf is +-1 in float32): the rational approximation
# of Eigen's and XLA's float erf (also TVM's topi.fast_erf).
_ERF_CLAMP = 4.0
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def dtype_of(expr: Any) -> str:
    """The dtype string of a TIR expression (``float32``, ``float32x16``)."""
    dtype = getattr(expr, "dtype", None) or getattr(getattr(expr, "ty", None), "dtype", "")
    return str(dtype)


class _Builder:
    """Constants and casts of the right lane count for one expression type."""

    def __init__(self, tirx: Any, dtype: str) -> None:
        self.tirx = tirx
        self.dtype = dtype
        self.lanes = int(dtype.split("x", 1)[1]) if "x" in dtype else 1
        self.int_dtype = "int32" if self.lanes == 1 else f"int32x{self.lanes}"

    def const(self, value: float, dtype: str = "float32") -> Any:
        scalar = self.tirx.const(value, dtype)
        return scalar if self.lanes == 1 else self.tirx.Broadcast(scalar, self.lanes)

    def power_of_two(self, n: Any) -> Any:
        """``2.0 ** n`` for int32 ``n`` in [-126, 127], built from its exponent bits."""
        tirx = self.tirx
        bits = tirx.shift_left(n + self.const(127, "int32"), self.const(23, "int32"))
        return tirx.reinterpret(self.dtype, bits)

    def exp(self, x: Any) -> Any:
        tirx = self.tirx
        c = self.const
        clamped = tirx.Max(tirx.Min(x, c(_X_MAX)), c(_X_MIN))
        n = tirx.floor(clamped * c(_LOG2E) + c(0.5))
        r = clamped - n * c(_LN2_HI) - n * c(_LN2_LO)
        poly = c(_EXP_POLY[0])
        for coefficient in _EXP_POLY[1:]:
            poly = poly * r + c(coefficient)
        poly = poly * (r * r) + r + c(1.0)
        # n is in [-151, 129]: 2^n as 2^(n>>1) * 2^(n - n>>1), both normal.
        whole = tirx.Cast(self.int_dtype, n)
        half = tirx.shift_right(whole, c(1, "int32"))
        scaled = poly * self.power_of_two(half) * self.power_of_two(whole - half)
        return tirx.Select(tirx.isnan(x), x, scaled)

    def sigmoid(self, x: Any) -> Any:
        c = self.const
        e = self.exp(-self.tirx.abs(x))  # in (0, 1]: no overflow for any x
        positive = c(1.0) / (c(1.0) + e)
        return self.tirx.Select(x < c(0.0), e * positive, positive)

    def tanh(self, x: Any) -> Any:
        tirx = self.tirx
        c = self.const
        magnitude = tirx.abs(x)
        large = c(1.0) - c(2.0) / (self.exp(magnitude * c(2.0)) + c(1.0))  # exp: inf -> 1
        square = x * x
        poly = c(_TANH_POLY[0])
        for coefficient in _TANH_POLY[1:]:
            poly = poly * square + c(coefficient)
        small = x * (c(1.0) + square * poly)  # keeps the sign of zero
        signed = tirx.Select(x < c(0.0), -large, large)
        return tirx.Select(magnitude < c(_TANH_SMALL), small, signed)

    def erf(self, x: Any) -> Any:
        tirx = self.tirx
        c = self.const
        clamped = tirx.Max(tirx.Min(x, c(_ERF_CLAMP)), c(-_ERF_CLAMP))
        square = clamped * clamped
        p = c(_ERF_P[0])
        for coefficient in _ERF_P[1:]:
            p = p * square + c(coefficient)
        q = c(_ERF_Q[0])
        for coefficient in _ERF_Q[1:]:
            q = q * square + c(coefficient)
        return tirx.Select(tirx.isnan(x), x, clamped * (p / q))


def rewrite_exp(tirx: Any, call: Any) -> Any:
    """``call`` rewritten as vectorisable arithmetic if it is a float32 ``exp``, ``sigmoid``,
    ``tanh`` or ``erf`` (scalar or vector); otherwise ``call`` itself."""
    name = str(getattr(getattr(call, "op", None), "name", ""))
    if name not in REWRITTEN_OPS:
        return call
    dtype = dtype_of(call)
    if dtype != "float32" and not dtype.startswith("float32x"):
        return call
    builder = _Builder(tirx, dtype)
    (x,) = call.args
    return getattr(builder, name.rsplit(".", 1)[1])(x)
