"""Compiled graphs as PyTorch ``SerializableCallable`` artifacts.

Every graph the ``reasoning`` backend compiles is returned as a :class:`CompiledGraph`, which is
what ``torch.compile(..., fullgraph=True).aot_compile(...)`` and
``torch.compiler.save_compiled_function`` / ``load_compiled_function`` need. Its serialized form
holds the Dynamo graph, the example-input specs, the options and each TVM partition's built
library; loading re-traces the graph (seconds) but reuses the libraries, so no TVM code generation
runs. The first call after loading verifies and times partitions again (choices are per machine).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.aot_compile_types import SerializableCallable

from torch_rc.backends.runtime import KernelSignature
from torch_rc.errors import CacheError

__all__ = ["CompiledGraph", "KernelBlob", "ARTIFACT_VERSION"]

logger = logging.getLogger(__name__)

ARTIFACT_VERSION = 2


@dataclass(frozen=True)
class KernelBlob:
    """A built TVM partition: its shared library and calling convention."""

    library: bytes
    signature: KernelSignature


@dataclass(frozen=True)
class InputSpec:
    """What an example input of a Dynamo graph looked like (enough to fake it again)."""

    kind: str  # "tensor" or "value"
    shape: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    device: str = "cpu"
    requires_grad: bool = False
    value: Any = None

    @classmethod
    def of(cls, value: object) -> InputSpec:
        if isinstance(value, torch.Tensor):
            return cls(
                "tensor",
                tuple(int(d) for d in value.shape),
                tuple(int(s) for s in value.stride()),
                value.dtype,
                value.device.type,
                bool(value.requires_grad),
            )
        return cls("value", value=value if isinstance(value, (int, float, bool)) else None)


class CompiledGraph(SerializableCallable):
    """The backend's result for one Dynamo graph: a callable that can also be serialized.

    Attributes:
        fn: What actually runs (a gate, a specialiser, or the graph itself).
        graph_module: The Dynamo graph it was compiled from.
        input_specs: Specs of the graph's example inputs.
        options: The resolved options, as a dict.
        kernels: TVM kernels (or blobs) by partition name, filled during compilation.
        report: The live GraphReport (not serialized).
        partitions: The live SelectingPartitions by name (their call counters), filled during
            compilation.
        gate: The live whole-graph gate, when the graph has one.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        graph_module: torch.fx.GraphModule,
        example_inputs: list[object],
        options: dict[str, Any],
        kernels: dict[str, Any],
        report: Any,
    ) -> None:
        self.fn = fn
        self.graph_module = graph_module
        self.input_specs = [InputSpec.of(value) for value in example_inputs]
        self.options = options
        self.kernels = kernels
        self.report = report
        self.partitions: dict[str, Any] = {}
        self.gate: Any = None
        # AOTAutograd traces an inference or a training graph depending on grad mode; a loaded
        # artifact must be re-traced the same way for its stored kernels to fit.
        self.grad_enabled = torch.is_grad_enabled()
        # Called once after the first call, when every first-call decision has been made.
        self.after_first_call: Callable[[CompiledGraph], None] | None = None
        self._first_call_pending = True
        # What Dynamo was tracing (for explain): the module, weakly, and the frame's code.
        self.origin: weakref.ref[torch.nn.Module] | None = None
        self.origin_code: Any = None

    def set_origin(self, module: torch.nn.Module | None, code: Any) -> None:
        self.origin = weakref.ref(module) if module is not None else None
        self.origin_code = code

    def __call__(self, *args: Any) -> Any:
        result = self.fn(*args)
        if self._first_call_pending:
            self._finish_first_call()
        return result

    def _finish_first_call(self) -> None:
        """After the first call every decision is made: partition counters start from here (the
        whole-graph timing ran the partitions too), and the decisions are saved."""
        self._first_call_pending = False
        for partition in self.partitions.values():
            partition.restart_counters()
        hook = self.after_first_call
        if hook is not None:
            self.after_first_call = None
            hook(self)

    def calls(self) -> dict[str, int]:
        """How often each side of the graph ran since its first call chose (``compiled``,
        ``eager``); empty when the graph runs unconditionally (symbolic shapes, no TVM target)."""
        if self.gate is not None:
            return self.gate.calls()
        side = getattr(self.fn, "side", "")
        return {side: self.fn.calls} if side else {}

    def decisions(self) -> dict[str, Any]:
        """First-call decisions made so far (JSON-ready): ``"graph"`` and one per partition."""
        report = self.report
        if report is None:
            return {}
        chosen = {
            part.name: part.decision.to_json()
            for part in report.partitions
            if part.decision is not None
        }
        if report.decision is not None:
            chosen["graph"] = report.decision.to_json()
        return chosen

    def to_bytes(self) -> bytes:
        return type(self).serialize_compile_artifacts(self)

    @classmethod
    def load(cls, data: bytes, decisions: dict[str, Any] | None = None) -> CompiledGraph:
        """Rebuild from :meth:`to_bytes` output, applying an earlier run's first-call decisions."""
        return cls._restore(data, decisions or {})

    @classmethod
    def serialize_compile_artifacts(cls, fn: CompiledGraph) -> bytes:
        from torch.fx._graph_pickler import GraphPickler, Options

        from torch_rc.tvm_shim import tvm_api

        graph_module = fn.graph_module
        # Metadata that holds live Dynamo objects cannot be pickled; take it off only for the dump
        # (Dynamo still reads it from this graph after the backend returns).
        removed: list[tuple[Any, str, Any]] = []
        for node in graph_module.graph.nodes:
            for key in ("nn_module_stack", "source_fn_stack", "example_value", "grapharg"):
                if key in node.meta:
                    removed.append((node, key, node.meta.pop(key)))
        try:
            pickled_graph = GraphPickler.dumps(graph_module, Options(ops_filter=None))
        finally:
            for node, key, value in removed:
                node.meta[key] = value
        api = tvm_api()
        state = {
            "artifact_version": ARTIFACT_VERSION,
            "torch": torch.__version__,
            "tvm": api.version,
            "tvm_ffi": api.ffi_version,
            "graph_module": pickled_graph,
            "input_specs": fn.input_specs,
            "options": fn.options,
            "kernels": {name: _blob(kernel) for name, kernel in fn.kernels.items()},
            "grad_enabled": fn.grad_enabled,
        }
        return pickle.dumps(state)

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> CompiledGraph:
        return cls._restore(data, {})

    @classmethod
    def _restore(cls, data: bytes, decisions: dict[str, Any]) -> CompiledGraph:
        from torch._subclasses import FakeTensorMode
        from torch.fx._graph_pickler import GraphPickler
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        from torch_rc.backends.dynamo import compile_graph
        from torch_rc.options import Options
        from torch_rc.tvm_shim import tvm_api

        state = pickle.loads(data)
        if state.get("artifact_version") != ARTIFACT_VERSION:
            raise CacheError(
                f"compiled artifact has format version {state.get('artifact_version')}, "
                f"this torch_rc reads version {ARTIFACT_VERSION}; recompile it"
            )
        api = tvm_api()
        kernels = state["kernels"]
        if (state["tvm"], state["tvm_ffi"]) != (api.version, api.ffi_version):
            logger.warning(
                "torch_rc: artifact built with TVM %s / tvm-ffi %s, running %s / %s: rebuilding kernels",
                state["tvm"],
                state["tvm_ffi"],
                api.version,
                api.ffi_version,
            )
            kernels = {}
        fake_mode = FakeTensorMode(shape_env=ShapeEnv())
        graph_module = GraphPickler.loads(state["graph_module"], fake_mode)
        # The loaded graph keeps Dynamo's compile id but not its per-placeholder sources, which
        # AOTAutograd would then insist on; it is no longer a live Dynamo graph, so drop the id.
        graph_module.meta.pop("dynamo_compile_id", None)
        with fake_mode:
            example = [_fake(spec) for spec in state["input_specs"]]
        options = Options(**state["options"])
        with torch.set_grad_enabled(state["grad_enabled"]):
            compiled, _report = compile_graph(
                graph_module,
                example,
                options,
                prebuilt=kernels,
                decisions=decisions,
                use_cache=False,
            )
        return compiled


def stored_kernels(data: bytes) -> dict[str, KernelBlob] | None:
    """The kernel blobs of a cached artifact, or None if it is unreadable or of another format.

    TVM versions need no check here: they are parts of the artifact's cache key.
    """
    try:
        state = pickle.loads(data)
        if state.get("artifact_version") != ARTIFACT_VERSION:
            return None
        return dict(state["kernels"])
    except Exception as exc:  # a damaged payload is a miss, not a crash
        logger.warning("torch_rc: cached artifact is unreadable (%s); rebuilding", exc)
        return None


def _blob(kernel: Any) -> KernelBlob:
    if isinstance(kernel, KernelBlob):
        return kernel
    return KernelBlob(kernel.library, kernel.signature)


def _fake(spec: InputSpec) -> object:
    if spec.kind != "tensor":
        return spec.value
    tensor = torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype, device=spec.device)
    return tensor.requires_grad_(spec.requires_grad) if spec.requires_grad else tensor


def options_dict(options: Any) -> dict[str, Any]:
    """Options as a plain dict for the artifact (the dataclass round-trips through it); secrets
    (the LLM API key) are never included."""
    from torch_rc.options import SECRET_OPTIONS

    return {k: v for k, v in dataclasses.asdict(options).items() if k not in SECRET_OPTIONS}
