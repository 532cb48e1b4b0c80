"""Lower one ATen partition (an FX GraphModule) to a Relax IRModule with TVM's own importer."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
import torch.fx

from torch_rc.backends.converters import install as install_extra_converters
from torch_rc.backends.library import emit_library_call
from torch_rc.backends.support import op_name
from torch_rc.errors import LoweringError
from torch_rc.platform.tvm_shim import tvm_api

__all__ = ["TensorSpec", "LoweredPartition", "lower_partition", "tensor_spec"]


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype a compiled partition expects for one input or returns for one output."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{tuple(self.shape)} {str(self.dtype).replace('torch.', '')}"


def tensor_spec(value: object) -> TensorSpec:
    """Spec of a (fake) tensor; raises LoweringError for anything else."""
    if not isinstance(value, torch.Tensor):
        raise LoweringError(f"partition input or output is a {type(value).__name__}, not a tensor")
    return TensorSpec(tuple(int(d) for d in value.shape), value.dtype)


@dataclass
class LoweredPartition:
    """A partition as a Relax module plus the calling convention of its ``main``.

    Attributes:
        mod: IRModule whose ``main`` returns a tuple (a bare tensor for one output) and takes
            the runtime inputs in order, then
            the weights (``weights``, marked by ``main``'s ``num_input`` attribute, so that the
            build lifts weight-only work out of the per-call function).
        inputs: Specs of the inputs, in the partition's order.
        outputs: Specs of the outputs, in order.
        single_output: The FX partition returns one tensor rather than a tuple.
        weights: Positions (in ``inputs``) of the weight inputs, in the order ``main`` takes them.
        index_bounds: (input position, rows) of inputs used as embedding indices: TVM's
            lookup reads out of bounds where PyTorch raises, so the runtime checks them.
    """

    mod: object
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    single_output: bool
    weights: tuple[int, ...] = ()
    index_bounds: tuple[tuple[int, int], ...] = ()


def lower_partition(
    gm: torch.fx.GraphModule,
    input_values: Sequence[object],
    weights: Collection[int] = (),
    library: Collection[str] = (),
) -> LoweredPartition:
    """Convert ``gm`` (ATen ops only) into a Relax function.

    Args:
        gm: The partition's GraphModule, placeholders in calling order.
        input_values: Example (usually fake) tensors for the placeholders, for shapes and dtypes.
        weights: Positions of inputs that are the model's parameters or buffers (the same tensors
            on every call): they go last, for the build to lift work on them out of the call.
        library: Names of nodes whose product runs as PyTorch's kernel
            (:mod:`torch_rc.backends.library`).

    Raises:
        LoweringError: an op converter failed or the partition has non-tensor inputs or outputs.
    """
    api = tvm_api()
    relax = api.relax
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(input_values):
        raise LoweringError(
            f"partition has {len(placeholders)} inputs but {len(input_values)} example values"
        )
    inputs = [tensor_spec(value) for value in input_values]

    importer = api.importer_cls()
    install_extra_converters(importer)
    importer.block_builder = relax.BlockBuilder()
    variables = []
    for node, spec in zip(placeholders, inputs, strict=True):
        var = relax.Var(node.name, relax.TensorType(list(spec.shape), _tvm_dtype(spec.dtype)))
        importer.env[node] = var
        variables.append(var)
    weight_order = tuple(sorted(set(weights)))
    runtime_order = [i for i in range(len(variables)) if i not in set(weight_order)]
    params = [variables[i] for i in runtime_order] + [variables[i] for i in weight_order]

    output_node = next(node for node in gm.graph.nodes if node.op == "output")
    raw_output = output_node.args[0]
    single_output = not isinstance(raw_output, (tuple, list))
    out_nodes = [raw_output] if single_output else list(raw_output)
    try:
        outputs = [tensor_spec(node.meta.get("val")) for node in out_nodes]
    except (AttributeError, LoweringError) as exc:
        raise LoweringError(f"partition output is not a tensor: {exc}") from exc

    builder = importer.block_builder
    try:
        with builder.function(name="main", params=params):
            with builder.dataflow():
                for node in gm.graph.nodes:
                    if node.op == "call_function" and node.name in library:
                        importer.env[node] = emit_library_call(importer, node)
                    elif node.op == "call_function":
                        importer.env[node] = importer.convert_map[_name(node.target)](node)
                    elif node.op == "get_attr":
                        constant = getattr(gm, str(node.target))
                        importer.env[node] = relax.const(constant.detach().cpu().numpy())
                results = [importer.env[node] for node in out_nodes]
                # One output comes back as a bare tensor: no tuple for the caller to unpack.
                out = builder.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
            builder.emit_func_output(out)
    except LoweringError:
        raise
    except (
        Exception
    ) as exc:  # TVM converters raise many types (TVMError, ValueError, AssertionError)
        raise LoweringError(
            f"Relax import failed at {_current(importer, gm)}: {type(exc).__name__}: {exc}"
        ) from exc
    mod = builder.get()
    if weight_order:
        mod["main"] = mod["main"].with_attr("num_input", len(runtime_order))
    return LoweredPartition(
        mod, inputs, outputs, single_output, weight_order, _index_bounds(placeholders, inputs)
    )


_EMBEDDING = "embedding.default"


def _index_bounds(
    placeholders: Sequence[torch.fx.Node], inputs: Sequence[TensorSpec]
) -> tuple[tuple[int, int], ...]:
    """(position, rows) of the partition inputs that index an embedding table whose row count is
    known: TVM builds the lookup in "fast mode", which reads out of bounds (a crash) on a bad
    index where PyTorch raises IndexError, so the runtime checks these before each call."""
    position = {node: index for index, node in enumerate(placeholders)}
    bounds = set()
    for node in placeholders:
        for user in node.users:
            if user.op != "call_function" or _name(user.target) != _EMBEDDING:
                continue
            table, indices = user.args[0], user.args[1]
            if indices is not node or not isinstance(table, torch.fx.Node):
                continue
            value = table.meta.get("val")
            if value is not None and getattr(value, "ndim", 0) == 2:
                bounds.add((position[node], int(value.shape[0])))
    return tuple(sorted(bounds))


def _name(target: object) -> str:
    return op_name(target)


def _current(importer: object, gm: torch.fx.GraphModule) -> str:
    done = getattr(importer, "env", {})
    for node in gm.graph.nodes:
        if node.op == "call_function" and node not in done:
            return f"node {node.name} ({_name(node.target)})"
    return "the partition output"


def _tvm_dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
