"""Library kernels as choices inside TVM programs: a matrix product may run as PyTorch's own
kernel (MKL/oneDNN on the CPU, cuBLAS on a GPU) called from the Relax VM, while the ops around it
(bias, activation, residual add) stay fused in TVM.

How it works (docs/tvm-facts.md, "Calling PyTorch kernels from inside a Relax program"): the
lowering emits ``R.call_dps_packed("torch_rc.library.<op>", ...)`` for a node chosen for the
library; that name is a packed function registered here, which receives the VM's tensors as torch
views (tvm-ffi converts them at the C level) and writes the product into the VM's output buffer.

Which nodes: each product of at least :data:`MIN_MACS` multiply-adds is built together with
the elementwise ops that consume it (bias, activation, residual add) in two ways — as TVM fuses
them into one kernel (the same workload as in the model, so its tuned record applies), and as the
library product followed by TVM's fused epilogue — and the two are timed
(:func:`torch_rc.platform.timing.compare`); the library runs only where it wins by the margin.
When a compile tunes, this is decided after tuning.
Small products stay in TVM: a call into Python costs ~5 us, more than they take. Results are
kept per process while the cache holds no tuned records (the compiled artifact keeps the choices
it was built with).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from torch_rc.backends.support import op_name
from torch_rc.options import Options
from torch_rc.passes.build import build_executable
from torch_rc.platform.timing import compare

__all__ = [
    "LIBRARY_OPS",
    "MIN_MACS",
    "Product",
    "choose_library_nodes",
    "emit_library_call",
    "register_library_kernels",
]

logger = logging.getLogger(__name__)

# Products below this many multiply-adds stay in TVM (the library call's overhead dominates).
MIN_MACS = 1 << 20

# ATen products that can run as a library kernel (converter-table names).
LIBRARY_OPS = frozenset({"mm.default", "bmm.default", "addmm.default"})
_FUNCTION = {"mm.default": "mm", "addmm.default": "mm", "bmm.default": "bmm"}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class Product:
    """A matrix product as the decision sees it."""

    op: str
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    dtype: torch.dtype

    @property
    def macs(self) -> int:
        batch = self.lhs[0] if len(self.lhs) == 3 else 1
        return batch * self.lhs[-2] * self.lhs[-1] * self.rhs[-1]

    def describe(self) -> str:
        lhs = "x".join(map(str, self.lhs))
        rhs = "x".join(map(str, self.rhs))
        return f"{self.op.split('.')[0]} {lhs} @ {rhs} {str(self.dtype).replace('torch.', '')}"


def product_of(node: torch.fx.Node) -> Product | None:
    """The product a node computes, if it is a library candidate."""
    name = op_name(node.target)
    if node.op != "call_function" or name not in LIBRARY_OPS:
        return None
    operands = node.args[1:3] if name == "addmm.default" else node.args[:2]
    values = [getattr(a, "meta", {}).get("val") for a in operands]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None
    lhs, rhs = values
    if lhs.dtype not in _DTYPES or lhs.dtype != rhs.dtype or lhs.device.type != "cpu":
        return None
    return Product(name, tuple(map(int, lhs.shape)), tuple(map(int, rhs.shape)), lhs.dtype)


@functools.cache
def register_library_kernels() -> None:
    """Register the packed functions library calls use (once per process; loading a kernel that
    calls them needs them registered first)."""
    import tvm_ffi

    def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(a, b, out=out)

    def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        torch.bmm(a, b, out=out)

    for name, fn in (("mm", mm), ("bmm", bmm)):
        packed = tvm_ffi.convert_func(fn, tensor_cls=torch.Tensor)
        tvm_ffi.register_global_func(f"torch_rc.library.{name}", packed, override=True)


def emit_library_call(importer: Any, node: torch.fx.Node) -> Any:
    """The Relax expression of ``node`` with its product computed by the library kernel (for
    ``addmm``: bias, alpha and beta applied by TVM around it, where they fuse with what follows)."""
    from tvm import relax

    name = op_name(node.target)
    emit = importer.block_builder.emit
    value = node.meta["val"]
    dtype = str(value.dtype).replace("torch.", "")
    out_type = relax.TensorType(list(map(int, value.shape)), dtype)
    lhs, rhs = node.args[1:3] if name == "addmm.default" else node.args[:2]
    product = emit(
        relax.call_dps_packed(
            f"torch_rc.library.{_FUNCTION[name]}",
            [importer.env[lhs], importer.env[rhs]],
            out_type,
        )
    )
    if name != "addmm.default":
        return product
    alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
    if alpha != 1:
        product = emit(relax.op.multiply(product, relax.const(alpha, dtype)))
    if beta == 0:
        return product
    bias = importer.env[node.args[0]]
    if beta != 1:
        bias = emit(relax.op.multiply(bias, relax.const(beta, dtype)))
    return emit(relax.op.add(product, bias))


@dataclass(frozen=True)
class Choice:
    """One product's library-or-TVM decision, with its timing (for reports)."""

    product: Product
    library: bool
    reason: str


_DECIDED: dict[tuple[Any, ...], Choice] = {}


def choose_library_nodes(
    partition: torch.fx.GraphModule, target: Any, options: Options, database: Any = None
) -> tuple[set[str], list[Choice]]:
    """Names of the partition's nodes to compute with the library, and every choice made.

    Off (nothing chosen) with ``options.library == "never"``; every product of at least
    :data:`MIN_MACS` with ``"always"`` (tests: small ones stay in TVM); measured per distinct
    product of that size, with its epilogue, with ``"measure"`` (the default).
    """
    chosen: set[str] = set()
    choices: list[Choice] = []
    if options.library == "never" or target.kind != "cpu":
        return chosen, choices
    for node in partition.graph.nodes:
        product = product_of(node)
        if product is None or product.macs < MIN_MACS:
            continue
        if options.library == "always":
            choice = Choice(product, True, f"{product.describe()}: library (option)")
        else:
            group = _with_epilogue(node)
            key = (_group_key(group), target.key)
            if database is not None:  # tuned records may have changed since: measure again
                choice = _measure(product, group, target, options, database)
            elif key in _DECIDED:
                choice = _DECIDED[key]
            else:
                choice = _DECIDED[key] = _measure(product, group, target, options, database)
        choices.append(choice)
        if choice.library:
            chosen.add(node.name)
    return chosen, choices


def _with_epilogue(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The product and the chain of elementwise ops that consume it alone (bias, activation,
    residual add): what TVM fuses into one kernel with it, and what stays fused in TVM after a
    library product."""
    group = [node]
    shape = node.meta["val"].shape
    while len(group[-1].users) == 1:
        user = next(iter(group[-1].users))
        target = user.target
        pointwise = isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags
        value = user.meta.get("val")
        if not pointwise or not isinstance(value, torch.Tensor) or value.shape != shape:
            break
        group.append(user)
    return group


def _group_key(group: list[torch.fx.Node]) -> tuple[Any, ...]:
    """What makes two groups the same computation: ops, argument shapes/dtypes and constants."""
    key: list[Any] = []
    for node in group:
        args = []
        for arg in node.args:
            value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
            if isinstance(value, torch.Tensor):
                args.append((tuple(value.shape), value.dtype, arg in group))
            else:
                args.append(repr(value))
        key.append((str(node.target), tuple(args), repr(sorted(node.kwargs.items()))))
    return tuple(key)


def _measure(
    product: Product, group: list[torch.fx.Node], target: Any, options: Options, database: Any
) -> Choice:
    """Time the product with its epilogue as TVM builds it (one fused kernel; its tuned record
    applies) against the library product followed by TVM's epilogue kernel."""
    try:
        graph, args = _subgraph(group)
        tvm_side = _build(graph, args, target, options, database, library=())
        library_side = _build(graph, args, target, options, database, library={group[0].name})
    except Exception as exc:  # cannot build the comparison: keep TVM, as before
        logger.info("torch_rc: %s: not compared (%s)", product.describe(), exc)
        return Choice(product, False, f"{product.describe()}: TVM (not compared: {exc})")
    result = compare(
        tvm_side,
        library_side,
        args,
        margin=options.select_margin,
        min_rounds=options.measure_repeats,
        budget_s=min(options.measure_budget_s, 0.5),
    )
    library = result.verdict == "candidate"
    epilogue = "+".join(str(n.target).split(".")[-2] for n in group[1:])
    what = product.describe() + (f" with {epilogue}" if epilogue else "")
    reason = f"{what}: {'library' if library else 'TVM'} ({result.describe('TVM', 'library')})"
    logger.info("torch_rc: %s", reason)
    return Choice(product, library, reason)


def _subgraph(group: list[torch.fx.Node]) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """The group as a graph of its own, with random inputs of the shapes it sees."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    args: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(0)
    for node in group:
        for arg in node.all_input_nodes:
            if arg in env or arg in group:
                continue
            value = arg.meta["val"]
            placeholder = graph.placeholder(arg.name)
            placeholder.meta["val"] = value
            env[arg] = placeholder
            if value.is_floating_point():
                args.append(torch.randn(tuple(value.shape), generator=generator).to(value.dtype))
            else:
                args.append(torch.zeros(tuple(value.shape), dtype=value.dtype))
        copy = graph.node_copy(node, lambda n: env[n])
        copy.meta["val"] = node.meta["val"]
        env[node] = copy
    graph.output(env[group[-1]])
    return torch.fx.GraphModule(torch.nn.Module(), graph), args


def _build(
    graph: torch.fx.GraphModule,
    args: list[torch.Tensor],
    target: Any,
    options: Options,
    database: Any,
    library: Any,
) -> Any:
    # Lazy: lower.py and runtime.py import this module; timing a product builds through them.
    from torch_rc.backends.lower import lower_partition
    from torch_rc.backends.runtime import KernelSignature, TVMKernel

    values = [n.meta["val"] for n in graph.graph.nodes if n.op == "placeholder"]
    lowered = lower_partition(graph, values, (), library)
    executable = build_executable(lowered.mod, target, options, database)
    signature = KernelSignature(
        tuple(lowered.inputs),
        tuple(lowered.outputs),
        lowered.single_output,
        (),
        ("x",) if library else (),
    )
    return TVMKernel.from_executable(executable, signature, "product", target)
