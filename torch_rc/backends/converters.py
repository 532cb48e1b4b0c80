"""Converters for ATen ops that TVM 0.27's Relax importer lacks or gets wrong, in its convention.

Each entry maps a converter-table name to ``fn(importer, node) -> relax.Expr``; :func:`install`
puts them on the importer (:mod:`lower` calls it) and :mod:`support` counts them as supported.
Two families of TVM's own converters are wrapped to compute what PyTorch computes
(docs/tvm-facts.md, "Numerics"):

* **Accumulation in float32.** PyTorch reduces fp16/bf16 tensors (sums, means, variances,
  softmax, norms, matmuls) in float32 and rounds the result once; TVM's converters reduce in the
  input dtype, so an fp16 mean of 8192 values around 10 came back 4.0 and around 100 inf. Those
  ops get their half-precision inputs cast to float32 and their results cast back.
* **NaN propagation.** TVM lowers ``max``/``min`` to comparisons that drop a NaN operand, so
  relu, clamp, hardtanh, maximum and minimum turned NaN into finite values; PyTorch keeps NaN.
  Their results take NaN wherever an input is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx

__all__ = [
    "ACCUMULATING_OPS",
    "EXTRA_CONVERTERS",
    "NAN_PROPAGATING_OPS",
    "OVERRIDE_CONVERTERS",
    "install",
]

_HALF = ("float16", "bfloat16")

# Ops PyTorch computes with a float32 accumulator for half-precision inputs (converter names).
ACCUMULATING_OPS = frozenset(
    {
        "sum.dim_IntList",
        "sum.default",
        "mean.dim",
        "mean.default",
        "var.correction",
        "std.correction",
        "prod.default",
        "_softmax.default",
        "_log_softmax.default",
        "softmax.int",
        "log_softmax.int",
        "native_layer_norm.default",
        "layer_norm.default",
        "native_group_norm.default",
        "group_norm.default",
        "_native_batch_norm_legit_no_training.default",
        "mm.default",
        "bmm.default",
        "matmul.default",
        "baddbmm.default",
        "linear.default",  # (addmm accumulates in its own converter, _addmm)
        "cumsum.default",
        "cumprod.default",
        "linalg_vector_norm.default",
        "einsum.default",
        "scaled_dot_product_attention.default",
    }
)

# Ops whose result is NaN wherever their tensor input(s) at these positions are NaN.
NAN_PROPAGATING_OPS: dict[str, tuple[int, ...]] = {
    "relu.default": (0,),
    "relu6.default": (0,),
    "clamp.default": (0,),
    "clamp.Tensor": (0,),
    "clamp_min.default": (0,),
    "clamp_max.default": (0,),
    "hardtanh.default": (0,),
    "maximum.default": (0, 1),
    "minimum.default": (0, 1),
    "max.other": (0, 1),
    "min.other": (0, 1),
}


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
    """``aten.addmm`` computed like PyTorch: ``beta * bias + alpha * (mat1 @ mat2)`` accumulated
    in float64 for float64 and in float32 for float32 and half types, rounded once at the end
    (TVM 0.27's converter hard-codes a float32 result)."""
    from tvm import relax

    bias, mat1, mat2 = (importer.env[arg] for arg in node.args[:3])
    beta = node.kwargs.get("beta", 1)
    alpha = node.kwargs.get("alpha", 1)
    dtype = str(node.meta["val"].dtype).replace("torch.", "")
    accumulate = "float64" if dtype == "float64" else "float32" if "float" in dtype else dtype
    emit = importer.block_builder.emit
    result = emit(relax.op.linear_algebra.matmul(mat1, mat2, out_dtype=accumulate))
    if alpha != 1:
        result = emit(relax.op.multiply(result, relax.const(alpha, accumulate)))
    if beta != 0:
        if _dtype_name(node.args[0].meta.get("val")) != accumulate:
            bias = emit(relax.op.astype(bias, accumulate))
        if beta != 1:
            bias = emit(relax.op.multiply(bias, relax.const(beta, accumulate)))
        result = emit(relax.op.add(result, bias))
    return emit(relax.op.astype(result, dtype)) if accumulate != dtype else result


EXTRA_CONVERTERS: dict[str, Callable[[Any, torch.fx.Node], Any]] = {
    "t.default": _t,
    "alias.default": _alias,
}

# Converters that replace TVM's own because its version rejects inputs PyTorch accepts.
OVERRIDE_CONVERTERS: dict[str, Callable[[Any, torch.fx.Node], Any]] = {
    "cat.default": _cat,
    "addmm.default": _addmm,
}


def _dtype_name(value: Any) -> str:
    return str(getattr(value, "dtype", "")).replace("torch.", "")


def _accumulate_in_float32(importer: Any, node: torch.fx.Node, convert: Any) -> Any:
    """Run ``convert`` on float32 copies of the node's half-precision inputs, then cast each
    result back to the dtype PyTorch gives it."""
    from tvm import relax

    half_inputs = [arg for arg in node.all_input_nodes if _dtype_name(arg.meta.get("val")) in _HALF]
    if not half_inputs:
        return convert(node)
    emit = importer.block_builder.emit
    saved = {arg: importer.env[arg] for arg in half_inputs}
    try:
        for arg in half_inputs:
            importer.env[arg] = emit(relax.op.astype(saved[arg], "float32"))
        out = convert(node)
    finally:
        importer.env.update(saved)
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)) and not isinstance(
        getattr(out, "ty", None), relax.TupleType
    ):
        # TVM's converters of some multi-output ops (native_layer_norm) return output 0 alone.
        value = value[0]
    if isinstance(value, (tuple, list)):
        fields = []
        for index, field_value in enumerate(value):
            item = emit(relax.TupleGetItem(out, index))
            dtype = _dtype_name(field_value)
            fields.append(emit(relax.op.astype(item, dtype)) if dtype in _HALF else item)
        return emit(relax.Tuple(fields))
    dtype = _dtype_name(value)
    return emit(relax.op.astype(out, dtype)) if dtype in _HALF else out


def _propagate_nan(
    importer: Any, node: torch.fx.Node, convert: Any, positions: tuple[int, ...]
) -> Any:
    """``convert``'s result, NaN wherever one of the inputs at ``positions`` is NaN."""
    from tvm import relax

    out = convert(node)
    if "float" not in _dtype_name(node.meta.get("val")):
        return out
    emit = importer.block_builder.emit
    for position in reversed(positions):
        if position >= len(node.args) or not isinstance(node.args[position], torch.fx.Node):
            continue
        source = importer.env[node.args[position]]
        if "float" not in _dtype_name(node.args[position].meta.get("val")):
            continue
        out = emit(relax.op.where(relax.op.isnan(source), source, out))
    return out


def install(importer: Any) -> None:
    """Add the extra converters to ``importer.convert_map``, apply the overrides, and wrap the
    accumulating and NaN-propagating ops (see the module docstring)."""
    table = importer.convert_map
    for name, fn in EXTRA_CONVERTERS.items():
        if name not in table:
            table[name] = lambda node, fn=fn: fn(importer, node)
    for name, fn in OVERRIDE_CONVERTERS.items():
        table[name] = lambda node, fn=fn: fn(importer, node)
    for name in ACCUMULATING_OPS & set(table):
        table[name] = lambda node, c=table[name]: _accumulate_in_float32(importer, node, c)
    for name, positions in NAN_PROPAGATING_OPS.items():
        if name in table:
            table[name] = lambda node, c=table[name], p=positions: _propagate_nan(
                importer, node, c, p
            )
