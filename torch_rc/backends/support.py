"""Which ATen nodes TVM can take: one table, read by both the partitioner and the coverage report.

Support is decided *before* lowering from the op-overload object (``torch.ops.aten.mm.default``),
the TVM converter table and per-op capability checks, so every fallback has a stated reason.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.fx

from torch_rc.backends.converters import EXTRA_CONVERTERS
from torch_rc.options import Options

__all__ = ["TVM_DTYPES", "unsupported_reason", "converter_names", "op_name", "is_compute_node"]

# dtypes the Relax importer maps and the CPU codegen handles.
TVM_DTYPES = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    }
)

# Nodes that move no data and cost nothing: they do not count toward a partition's size.
_FREE_OPS = frozenset(
    {
        "getitem",
        "view.default",
        "_unsafe_view.default",
        "reshape.default",
        "expand.default",
        "permute.default",
        "t.default",
        "squeeze.dim",
        "squeeze.dims",
        "unsqueeze.default",
        "alias.default",
        "detach.default",
        "slice.Tensor",
        "select.int",
    }
)


# TVM's converter table, as data: reading it costs nothing, while asking TVM's importer would
# import the whole compiler (~1.4 s) before any partition is known to need it (a warm start does
# not). TVM is pinned exactly; tests/backends/test_support.py fails if the file drifts.
_CONVERTER_TABLE = Path(__file__).with_name("tvm_converters.txt")


def tvm_converter_names() -> frozenset[str]:
    """The op names TVM's Relax importer converts, from the checked-in table."""
    lines = _CONVERTER_TABLE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@functools.cache
def converter_names() -> frozenset[str]:
    """Names (``"add.Tensor"``, ``"getitem"``) that TVM's importer or torch_rc's extras convert."""
    return tvm_converter_names() | frozenset(EXTRA_CONVERTERS)


def op_name(target: object) -> str:
    """The converter-table name of an FX call target (``"mm.default"``, ``"getitem"``)."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def qualified_name(target: object) -> str:
    """A user-facing op name such as ``aten.mm.default``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{op_name(target)}"
    return op_name(target)


def is_compute_node(node: torch.fx.Node) -> bool:
    """True for call_function nodes that do real work (not views, not tuple indexing)."""
    return node.op == "call_function" and op_name(node.target) not in _FREE_OPS


def _dropout_check(node: torch.fx.Node) -> str | None:
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    if train and p:
        return "dropout in training mode draws random numbers; PyTorch's RNG must be used"
    return None


def _to_copy_check(node: torch.fx.Node) -> str | None:
    device = node.kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        return f"copy to device {device} crosses devices"
    if node.kwargs.get("memory_format") not in (
        None,
        torch.preserve_format,
        torch.contiguous_format,
    ):
        return "copy to a non-contiguous memory format"
    return None


def _first_output_only(node: torch.fx.Node) -> str | None:
    """TVM's converters for these multi-output ops compute only output 0 correctly (the
    statistics / indices outputs come back wrong: seen as layer-norm mean/rstd of the wrong
    shape in training graphs), so they are supported only when nothing else is used."""
    for user in node.users:
        if user.target is not operator.getitem or user.args[1] != 0:
            return "TVM computes only the first output of this op, and another output is used"
    return None


def _float32_only(node: torch.fx.Node) -> str | None:
    """TVM 0.27's converters for these ops hard-code a float32 result."""
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor) and value.dtype != torch.float32:
        return f"TVM's converter computes this op in float32 only (got {value.dtype})"
    return None


_CAPABILITY_CHECKS: dict[object, Callable[[torch.fx.Node], str | None]] = {
    torch.ops.aten.convolution.default: _float32_only,
    torch.ops.aten.conv1d.default: _float32_only,
    torch.ops.aten.conv2d.default: _float32_only,
    torch.ops.aten.conv3d.default: _float32_only,
    torch.ops.aten.conv_transpose1d.default: _float32_only,
    torch.ops.aten.conv_transpose2d.input: _float32_only,
    torch.ops.aten.baddbmm.default: _float32_only,
    torch.ops.aten.native_dropout.default: _dropout_check,
    torch.ops.aten.dropout.default: _dropout_check,
    torch.ops.aten._to_copy.default: _to_copy_check,
    torch.ops.aten.native_layer_norm.default: _first_output_only,
    torch.ops.aten.native_group_norm.default: _first_output_only,
    torch.ops.aten._native_batch_norm_legit_no_training.default: _first_output_only,
    torch.ops.aten._native_batch_norm_legit_functional.default: _first_output_only,
    torch.ops.aten._native_batch_norm_legit.no_stats: _first_output_only,
    torch.ops.aten.max_pool2d_with_indices.default: _first_output_only,
    torch.ops.aten.max_pool3d_with_indices.default: _first_output_only,
}


def _tensor_values(node: torch.fx.Node) -> Iterable[object]:
    values: list[object] = [node.meta.get("val")]
    for arg in node.all_input_nodes:
        values.append(arg.meta.get("val"))
    for value in values:
        if isinstance(value, (tuple, list)):
            yield from value
        else:
            yield value


def _value_reason(value: object) -> str | None:
    if isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool):
        return "produces or consumes a symbolic scalar (dynamic shapes run in PyTorch)"
    if not isinstance(value, torch.Tensor):
        return None
    if value.layout != torch.strided:
        return f"tensor layout {value.layout} is not strided"
    if value.dtype not in TVM_DTYPES:
        return f"dtype {value.dtype} is not supported by the TVM lowering"
    if value.device.type != "cpu":
        return f"tensors on {value.device.type} run in PyTorch (torch_rc lowers CPU graphs)"
    if any(not isinstance(dim, int) for dim in value.shape):
        return "dynamic shape (symbolic dimension) runs in PyTorch"
    return None


def unsupported_reason(node: torch.fx.Node, options: Options) -> str | None:
    """Why ``node`` must run in PyTorch, or None when TVM can take it."""
    if node.op != "call_function":
        return "graph inputs, outputs and attributes stay in the partitioned graph"
    target = node.target
    name = op_name(target)
    if target is operator.getitem:
        return None
    if not isinstance(target, torch._ops.OpOverload):
        return f"{name} is not an ATen operator"
    qualified = qualified_name(target)
    if (
        name in options.exclude_ops
        or qualified in options.exclude_ops
        or target._opname in options.exclude_ops
    ):
        return "excluded by option 'exclude_ops'"
    if name not in converter_names():
        return "TVM's Relax importer has no converter for this op"
    if torch.Tag.nondeterministic_seeded in target.tags:
        return "random op: results must come from PyTorch's RNG"
    if target._schema.is_mutable:
        return "mutates an input in place"
    for value in _tensor_values(node):
        reason = _value_reason(value)
        if reason:
            return reason
    check = _CAPABILITY_CHECKS.get(target)
    return check(node) if check else None
