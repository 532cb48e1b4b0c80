"""Compiled graphs: the callable the backend returns, and its stored form.

Every graph the ``reasoning`` backend compiles is returned as a :class:`CompiledGraph`. Its
**stored form** (the persistent cache, Redis, bundles) is data only: a signed
:mod:`torch_rc.cache.payload` holding each TVM partition's shared library and, as JSON, its
calling convention, the input specs and the versions. No graph is stored: a process that looks
an artifact up has just traced the graph itself; the stored libraries replace the code
generation, and they are loaded only after their signature and hashes verify.

For ``torch.compile(...).aot_compile(...)`` and ``torch.compiler.save_compiled_function`` (a file
the user saves and loads again, in PyTorch's own format) the payload also carries the Dynamo
graph, pickled by ``torch.fx``'s GraphPickler as Inductor's artifacts are; it is unpickled only
after the payload's signature verified with a trusted key.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.aot_compile_types import SerializableCallable

from torch_rc.backends.lower import TensorSpec
from torch_rc.backends.runtime import KernelSignature
from torch_rc.backends.support import TVM_DTYPES
from torch_rc.cache.payload import pack, unpack
from torch_rc.cache.signing import KeyRing, keyring
from torch_rc.errors import CacheError
from torch_rc.options import SECRET_OPTIONS, Options, redact_url
from torch_rc.platform.tvm_shim import tvm_api

__all__ = [
    "ARTIFACT_VERSION",
    "CompiledGraph",
    "KernelBlob",
    "options_dict",
    "artifact_problem",
    "ring_of",
    "stored_kernels",
]

logger = logging.getLogger(__name__)

ARTIFACT_VERSION = 3
# The dtypes a stored kernel signature may name: those TVM kernels take (an allow-list: a
# signature is data, never evaluated).
_DTYPES = {str(d).replace("torch.", ""): d for d in TVM_DTYPES}


@dataclass(frozen=True)
class KernelBlob:
    """A built TVM partition: its shared library and calling convention."""

    library: bytes
    signature: KernelSignature


def _dtype(name: Any) -> torch.dtype:
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise CacheError(f"artifact names an unknown dtype {name!r}") from None


def _spec_json(spec: TensorSpec) -> list[Any]:
    return [list(spec.shape), str(spec.dtype).replace("torch.", "")]


def _spec(data: Any) -> TensorSpec:
    shape, dtype = data
    return TensorSpec(tuple(int(d) for d in shape), _dtype(dtype))


def signature_json(signature: KernelSignature) -> dict[str, Any]:
    return {
        "inputs": [_spec_json(s) for s in signature.inputs],
        "outputs": [_spec_json(s) for s in signature.outputs],
        "single_output": signature.single_output,
        "weights": list(signature.weights),
        "library": list(signature.library),
        "index_bounds": [list(b) for b in signature.index_bounds],
    }


def signature_from_json(data: Mapping[str, Any]) -> KernelSignature:
    """A calling convention from its JSON form (types checked; CacheError otherwise)."""
    try:
        return KernelSignature(
            tuple(_spec(s) for s in data["inputs"]),
            tuple(_spec(s) for s in data["outputs"]),
            bool(data["single_output"]),
            tuple(int(i) for i in data["weights"]),
            tuple(str(p) for p in data["library"]),
            tuple((int(p), int(r)) for p, r in data.get("index_bounds", [])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"artifact has a malformed kernel signature: {exc}") from None


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
        plain = value if isinstance(value, (int, float, bool)) else None
        return cls("value", value=plain)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dtype"] = str(self.dtype).replace("torch.", "") if self.dtype else None
        data["shape"], data["stride"] = list(self.shape), list(self.stride)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        if data["kind"] not in ("tensor", "value") or data.get("device") not in ("cpu", "cuda"):
            raise CacheError("artifact has a malformed input spec")
        value = data.get("value")
        return cls(
            str(data["kind"]),
            tuple(int(d) for d in data["shape"]),
            tuple(int(s) for s in data["stride"]),
            _dtype(data["dtype"]) if data.get("dtype") else None,
            str(data["device"]),
            bool(data["requires_grad"]),
            value if isinstance(value, (int, float, bool)) else None,
        )


class CompiledGraph(SerializableCallable):
    """The backend's result for one Dynamo graph: a callable that can also be serialized.

    Attributes:
        fn: What actually runs (a gate, a specialiser, or the graph itself).
        graph_module: The Dynamo graph it was compiled from.
        input_specs: Specs of the graph's example inputs.
        options: The resolved options, as a dict.
        kernels: TVM kernels (or blobs) by partition name, filled during compilation.
        report: The live GraphReport (not serialized).
        partitions: The live SelectingPartitions by name (their call counters).
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

    # ----------------------------------------------------------------------- stored form
    def to_bytes(self, ring: KeyRing, *, with_graph: bool = False) -> bytes:
        """The signed stored form (see the module docstring); ``with_graph`` adds the pickled
        Dynamo graph (the AOT path)."""
        api = tvm_api()
        blobs = {name: _blob(kernel) for name, kernel in self.kernels.items()}
        meta = {
            "artifact_version": ARTIFACT_VERSION,
            "torch": torch.__version__,
            "tvm": api.version,
            "tvm_ffi": api.ffi_version,
            "kernels": {name: signature_json(b.signature) for name, b in blobs.items()},
            "input_specs": [spec.to_json() for spec in self.input_specs],
            "options": self.options,
            "grad_enabled": self.grad_enabled,
        }
        members = {f"kernel:{name}": b.library for name, b in blobs.items()}
        if with_graph:
            members["graph"] = _pickle_graph(self.graph_module)
        return pack(meta, members, ring)

    @classmethod
    def serialize_compile_artifacts(cls, fn: CompiledGraph) -> bytes:
        return fn.to_bytes(ring_of(fn.options), with_graph=True)

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> CompiledGraph:
        return cls.load(data)

    @classmethod
    def load(
        cls, data: bytes, decisions: dict[str, Any] | None = None, options: Options | None = None
    ) -> CompiledGraph:
        """Rebuild an AOT artifact (:meth:`to_bytes` with the graph), applying an earlier run's
        decisions. The signature is checked with ``options``' keys (default: the environment's)
        before anything else is read.

        Raises:
            CacheError: Not an artifact, not signed by a trusted key, damaged, or without graph.
        """
        from torch._subclasses import FakeTensorMode
        from torch.fx._graph_pickler import GraphPickler
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        # Lazy: dynamo.py imports this module; rebuilding a refused artifact is the way back.
        from torch_rc.backends.dynamo import compile_graph

        resolved = options or Options.resolve()
        payload = unpack(data, ring_of(resolved), trust_unsigned=resolved.trust_unsigned)
        kernels = _kernels(payload.meta, payload.members)
        if "graph" not in payload.members:
            raise CacheError("this artifact carries no graph (it is a cache entry, not AOT)")
        meta = payload.meta
        if meta.get("artifact_version") != ARTIFACT_VERSION:
            raise CacheError(
                f"compiled artifact has format version {meta.get('artifact_version')}, "
                f"this torch_rc reads version {ARTIFACT_VERSION}; recompile it"
            )
        fake_mode = FakeTensorMode(shape_env=ShapeEnv())
        # Verified above: signed by a trusted key, so unpickling it runs nobody else's code.
        graph_module = GraphPickler.loads(payload.members["graph"], fake_mode)
        graph_module.meta.pop("dynamo_compile_id", None)
        with fake_mode:
            example = [_fake(InputSpec.from_json(s)) for s in meta["input_specs"]]
        stored = {k: v for k, v in dict(meta["options"]).items() if k in _field_names()}
        with torch.set_grad_enabled(bool(meta["grad_enabled"])):
            compiled, _report = compile_graph(
                graph_module,
                example,
                Options(**stored),
                prebuilt=kernels,
                decisions=decisions,
                use_cache=False,
            )
        return compiled


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Options)}


def ring_of(options: Options | Mapping[str, Any]) -> KeyRing:
    """The key ring named by ``options`` (an Options or its stored dict form)."""
    if not isinstance(options, Options):
        known = {k: v for k, v in options.items() if k in ("key_dir", "trusted_keys")}
        options = Options.resolve().replace(**known) if known else Options.resolve()
    return keyring(options.key_path(), options.trusted_keys)


def _pickle_graph(graph_module: torch.fx.GraphModule) -> bytes:
    from torch.fx._graph_pickler import GraphPickler
    from torch.fx._graph_pickler import Options as PicklerOptions

    # Metadata that holds live Dynamo objects cannot be pickled; take it off only for the dump
    # (Dynamo still reads it from this graph after the backend returns).
    removed: list[tuple[Any, str, Any]] = []
    for node in graph_module.graph.nodes:
        for key in ("nn_module_stack", "source_fn_stack", "example_value", "grapharg"):
            if key in node.meta:
                removed.append((node, key, node.meta.pop(key)))
    try:
        return GraphPickler.dumps(graph_module, PicklerOptions(ops_filter=None))
    finally:
        for node, key, value in removed:
            node.meta[key] = value


def _kernels(meta: Mapping[str, Any], members: Mapping[str, bytes]) -> dict[str, KernelBlob]:
    out = {}
    for name, signature in dict(meta.get("kernels", {})).items():
        library = members.get(f"kernel:{name}")
        if library is None:
            raise CacheError(f"artifact lacks the library of {name}")
        out[str(name)] = KernelBlob(library, signature_from_json(signature))
    return out


def artifact_problem(data: bytes, options: Options) -> str | None:
    """Why a stored artifact would be refused (signature, hashes, format), or None. Reads it as
    data only: nothing in it is loaded or run."""
    try:
        payload = unpack(data, ring_of(options), trust_unsigned=options.trust_unsigned)
        if payload.meta.get("artifact_version") != ARTIFACT_VERSION:
            return f"format version {payload.meta.get('artifact_version')}, not {ARTIFACT_VERSION}"
        _kernels(payload.meta, payload.members)
    except CacheError as exc:
        return str(exc)
    return None


def stored_kernels(data: bytes, options: Options) -> dict[str, KernelBlob] | None:
    """The verified kernel blobs of a cached artifact, or None (logged) if it is unreadable, of
    another format, damaged or not signed by a trusted key: a miss, then a rebuild.

    TVM versions need no check here: they are parts of the artifact's cache key.
    """
    try:
        payload = unpack(data, ring_of(options), trust_unsigned=options.trust_unsigned)
        if payload.meta.get("artifact_version") != ARTIFACT_VERSION:
            return None
        return _kernels(payload.meta, payload.members)
    except CacheError as exc:  # a damaged or foreign payload is a miss, never a load
        logger.warning("torch_rc: cached artifact refused (%s); rebuilding", exc)
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
    (the LLM API key) are never included, nor credentials inside the endpoint URL."""
    data = {k: v for k, v in dataclasses.asdict(options).items() if k not in SECRET_OPTIONS}
    if data.get("llm_base_url"):
        data["llm_base_url"] = redact_url(str(data["llm_base_url"]))
    for key, value in data.items():
        if isinstance(value, tuple):
            data[key] = list(value)
    return data
