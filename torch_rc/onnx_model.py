"""ONNX models in: an ``.onnx`` file compiled through TVM's Relax ONNX frontend, tuned by the same
engine into the same cache as ``torch.compile`` models, checked against **onnxruntime** (what an
ONNX user would run instead), and called with torch tensors or numpy arrays.

What :func:`load_onnx` does, in order:

1. reads the file (model-local functions, e.g. from ``onnxscript``, are inlined) and names every
   operator TVM's frontend lacks, with the opset; such a model runs on onnxruntime (or, with
   ``strict``, is an :class:`~torch_rc.errors.UnsupportedOpError`);
2. fixes the input shapes: from the example inputs, else from the model's static dimensions
   (a symbolic dimension without an example is an error naming it);
3. imports the model into Relax (weights folded in as constants), tunes its kernels when
   ``trials`` > 0 (records land in the cache; a later load builds from them), builds it;
4. checks TVM's outputs against onnxruntime's on the example inputs (the dtype's tolerance,
   :mod:`torch_rc.numerics`), then times both (paired rounds, :mod:`torch_rc.platform.timing`)
   and keeps TVM only when it is correct and faster — as the first-call choice does for
   PyTorch graphs.

Calls with other shapes than the compiled ones run on onnxruntime (counted as misses).
The built library is stored in the cache (signed, like a compiled graph's; key: the file's
content, input specs, options, versions, CPU), so the next load — a serving replica — verifies and
loads it without building or importing TVM, then checks and times it again. A load that tunes
always rebuilds. Bundles carry these entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch_rc.backends.artifact import ARTIFACT_VERSION, ring_of, signature_json, stored_kernels
from torch_rc.backends.compiler import tuning_database
from torch_rc.backends.dynamo import ABOUT, key_options
from torch_rc.backends.lower import tensor_spec
from torch_rc.backends.runtime import KernelSignature, TVMKernel
from torch_rc.cache.bundle import export_bundle
from torch_rc.cache.keys import KeyDetails, environment_parts
from torch_rc.cache.location import open_store, persistent_store, store_for
from torch_rc.cache.payload import pack
from torch_rc.errors import BuildError, InputMismatchError, TorchRCError, UnsupportedOpError
from torch_rc.numerics import compare_outputs, max_abs_error
from torch_rc.options import Options
from torch_rc.passes.build import build_executable
from torch_rc.platform.hardware import gpu_hardware
from torch_rc.platform.target import detect_target, host_target_key
from torch_rc.platform.timing import Comparison, compare
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.session import TuningRun, tune_modules

__all__ = ["OnnxModel", "OnnxReport", "load_onnx", "unsupported_ops", "warmup_onnx"]

logger = logging.getLogger(__name__)

_STANDARD_DOMAINS = ("", "ai.onnx")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise TorchRCError(
            "ONNX models need the onnx and onnxruntime packages: pip install 'torch_rc[onnx]'"
        ) from None
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise TorchRCError(
            "ONNX models are checked against onnxruntime: pip install 'torch_rc[onnx]'"
        ) from None
    return onnxruntime


@dataclass
class OnnxReport:
    """What :func:`load_onnx` decided, and why.

    Attributes:
        path: The model file.
        opset: Its default-domain opset.
        runs_on: ``"tvm"`` or ``"onnxruntime"``.
        reason: Why, in one line.
        inputs: Each input's name, shape and dtype as compiled.
        unsupported: Operators TVM's ONNX frontend lacks (empty when all are supported).
        tvm_ms: TVM's median latency (None when not built).
        onnxruntime_ms: onnxruntime's median latency on the same inputs.
        max_abs_error: TVM vs onnxruntime on the example inputs.
        tuning: The tuning run (None without tuning).
        cache: ``"off"``, ``"miss"`` (built and stored) or ``"hit"`` (loaded, not built).
    """

    path: str
    opset: int
    runs_on: str = "onnxruntime"
    reason: str = ""
    inputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    tvm_ms: float | None = None
    onnxruntime_ms: float | None = None
    max_abs_error: float | None = None
    tuning: TuningRun | None = None
    comparison: Comparison | None = None
    cache: str = "off"  # "hit" (the built library loaded from the cache), "miss" (built, stored)

    def describe(self) -> str:
        speed = ""
        if self.tvm_ms is not None and self.onnxruntime_ms is not None:
            speed = (
                f" (TVM {self.tvm_ms:.3f} ms, onnxruntime {self.onnxruntime_ms:.3f} ms, "
                f"{self.onnxruntime_ms / self.tvm_ms:.2f}x)"
            )
        return f"{Path(self.path).name}: runs on {self.runs_on}: {self.reason}{speed}"


def unsupported_ops(model: Any) -> list[str]:
    """The operators of ``model`` (an ``onnx.ModelProto``, functions inlined) that TVM's Relax
    ONNX frontend cannot import, as ``domain::Op`` for non-standard domains."""
    tvm_api()
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing = set()
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            missing.add(f"{node.domain}::{node.op_type}")
        elif node.op_type not in known:
            missing.add(node.op_type)
    return sorted(missing)


def _opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in _STANDARD_DOMAINS:
            return int(entry.version)
    return 1


def _graph_inputs(model: Any) -> list[Any]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _input_specs(
    model: Any, examples: Sequence[Any] | None, path: str
) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    onnx = _onnx()
    inputs = _graph_inputs(model)
    if examples is not None and len(examples) != len(inputs):
        raise TorchRCError(
            f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            f"{len(examples)} example inputs were given"
        )
    specs = []
    for index, value in enumerate(inputs):
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if examples is not None:
            example = _as_numpy(examples[index])
            if example.dtype != dtype:
                raise TorchRCError(
                    f"input {value.name!r} of {path} is {dtype}, the example is {example.dtype}"
                )
            specs.append((value.name, tuple(example.shape), dtype))
            continue
        shape = []
        for dim in tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                raise TorchRCError(
                    f"input {value.name!r} of {path} has a symbolic dimension "
                    f"{dim.dim_param or '?'!r}: give example inputs (--input) to fix its size"
                )
            shape.append(int(dim.dim_value))
        specs.append((value.name, tuple(shape), dtype))
    return specs


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _random_inputs(specs: Sequence[tuple[str, tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    out = []
    for _, shape, dtype in specs:
        if np.issubdtype(dtype, np.floating):
            out.append(generator.standard_normal(shape).astype(dtype))
        elif dtype == np.bool_:
            out.append(generator.integers(0, 2, shape).astype(dtype))
        else:
            out.append(generator.integers(0, 8, shape).astype(dtype))
    return out


class OnnxModel:
    """A loaded ONNX model: call it with torch tensors or numpy arrays (positional, in the
    model's input order). Returns torch tensors, or numpy arrays when called with numpy; one
    output alone, several as a tuple. ``report`` says where it runs and why."""

    def __init__(
        self,
        report: OnnxReport,
        session: Any,
        input_names: list[str],
        kernel: TVMKernel | None,
    ) -> None:
        self.report = report
        self.kernel = kernel if report.runs_on == "tvm" else None
        self.hits = 0  # calls TVM served
        self.misses = 0  # calls with other shapes (onnxruntime served them)
        self._session = session
        self._names = input_names
        self._shapes = [shape for _, shape, _ in report.inputs]

    def run_onnxruntime(self, *args: Any) -> list[np.ndarray]:
        """The reference: onnxruntime's outputs for ``args``."""
        if len(args) != len(self._names):
            raise InputMismatchError(
                f"{Path(self.report.path).name} takes {len(self._names)} inputs "
                f"({', '.join(self._names)}), received {len(args)}"
            )
        feeds = {name: _as_numpy(arg) for name, arg in zip(self._names, args, strict=True)}
        try:
            return self._session.run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own errors name the input
            raise InputMismatchError(f"{Path(self.report.path).name}: {exc}") from None

    def reference(self, *args: Any) -> Any:
        """onnxruntime's outputs as torch tensors (one alone, several as a tuple)."""
        outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in self.run_onnxruntime(*args)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __call__(self, *args: Any) -> Any:
        numpy_in = bool(args) and all(isinstance(a, np.ndarray) for a in args)
        if self.kernel is not None and [tuple(a.shape) for a in args] == self._shapes:
            tensors = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
            out = self.kernel(*tensors)
            outputs = list(out) if isinstance(out, tuple) else [out]
            self.hits += 1
            if numpy_in:
                outputs = [o.numpy() for o in outputs]
        else:
            if self.kernel is not None:
                self.misses += 1
            outputs = self.run_onnxruntime(*args)
            if not numpy_in:
                outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load_onnx(
    path: str | os.PathLike[str],
    example_inputs: Sequence[Any] | None = None,
    *,
    options: Options | Mapping[str, Any] | None = None,
) -> OnnxModel:
    """Compile the ONNX model at ``path`` for this CPU (see the module docstring).

    Args:
        example_inputs: One torch tensor or numpy array per model input; they fix the shapes
            compiled for and are what TVM is checked and timed on. Default: random inputs of
            the model's static shapes.
        options: torch_rc options (``trials`` tunes, ``cache_dir``, ``strict``, ``select``,
            ``rtol``/``atol``, ...).

    Raises:
        TorchRCError: The file cannot be read, a symbolic dimension has no example, or the
            onnx/onnxruntime packages are missing. UnsupportedOpError / BuildError: with
            ``strict``, an operator TVM lacks, or a model TVM cannot import or build.
    """
    onnx = _onnx()
    ort = _ort()
    resolved = options if isinstance(options, Options) else Options.resolve(options)
    where = str(path)
    try:
        model = onnx.load(where)
        if model.functions:  # model-local functions (onnxscript's): TVM imports plain graphs
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors: one clear line
        raise TorchRCError(f"cannot read the ONNX model {where}: {exc}") from None
    if resolved.tuning and resolved.cache:
        persistent_store(resolved.store_location(), "the tuning results")
    report = OnnxReport(where, _opset(model))
    specs = _input_specs(model, example_inputs, where)
    report.inputs = [(name, shape, str(dtype)) for name, shape, dtype in specs]
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = resolved.num_threads or torch.get_num_threads()
    session = ort.InferenceSession(
        model.SerializeToString(), session_options, providers=["CPUExecutionProvider"]
    )
    names = [name for name, _, _ in specs]
    arrays = (
        [np.ascontiguousarray(_as_numpy(x)) for x in example_inputs]
        if example_inputs is not None
        else _random_inputs(specs)
    )
    loaded = OnnxModel(report, session, names, None)
    reference = [torch.from_numpy(np.ascontiguousarray(r)) for r in loaded.run_onnxruntime(*arrays)]

    if resolved.select == "torch":
        report.reason = "select='torch' (the reference runs)"
        return loaded
    store = open_store(resolved.store_location()) if resolved.cache else None
    details = _artifact_key(model, specs, resolved) if store is not None else None
    # A cache hit loads the signed, verified library without importing TVM.
    kernel = _cached_kernel(store, details, resolved, report) if not resolved.tuning else None
    if kernel is None:
        report.unsupported = unsupported_ops(model)
        if report.unsupported:
            report.reason = (
                f"TVM's ONNX frontend lacks {', '.join(report.unsupported)} (opset {report.opset})"
            )
            if resolved.strict:
                raise UnsupportedOpError(f"{where}: {report.reason}")
            logger.warning("torch_rc: %s; it runs on onnxruntime", report.reason)
            return loaded
    try:
        if kernel is None:
            kernel = _build(model, specs, reference, resolved, report)
            _store(store, details, kernel, model, specs, resolved, report)
    except Exception as exc:  # noqa: BLE001 - any import or build failure falls back
        if resolved.strict:
            raise BuildError(f"{where}: TVM could not import or build it: {exc}") from exc
        report.reason = f"TVM could not import or build it ({type(exc).__name__}: {exc})"
        logger.warning("torch_rc: %s: %s; it runs on onnxruntime", where, report.reason)
        return loaded

    tensors = [torch.from_numpy(a) for a in arrays]
    got = kernel(*tensors)
    match = compare_outputs(reference, got, rtol=resolved.rtol, atol=resolved.atol)
    report.max_abs_error = max_abs_error(reference, got)
    if not match.ok:
        report.reason = f"TVM does not match onnxruntime: {match.problem}"
        if resolved.strict:
            raise BuildError(f"{where}: {report.reason}")
        logger.warning("torch_rc: %s: %s; it runs on onnxruntime", where, report.reason)
        return loaded

    comparison = compare(
        lambda *a: session.run(None, dict(zip(names, arrays, strict=True))),
        kernel,
        tensors,
        margin=resolved.select_margin,
        budget_s=resolved.measure_budget_s,
    )
    report.comparison = comparison
    report.tvm_ms, report.onnxruntime_ms = comparison.candidate_ms, comparison.baseline_ms
    if resolved.select == "tvm" or comparison.verdict == "candidate":
        report.runs_on = "tvm"
        report.reason = (
            "select='tvm'" if resolved.select == "tvm" else "matches onnxruntime and is faster"
        )
    else:
        report.reason = f"matches, but is not faster than onnxruntime ({comparison.verdict})"
    return OnnxModel(report, session, names, kernel)


def _artifact_key(
    model: Any, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]], options: Options
) -> KeyDetails:
    """The cache key of a built ONNX model: the file's content, the input specs, the options
    that change the build, versions and the CPU (as for compiled graphs)."""
    parts = environment_parts(host_target_key(options))
    parts.update(
        {
            "onnx": hashlib.sha256(model.SerializeToString()).hexdigest(),
            "inputs": json.dumps([[n, list(s), str(d)] for n, s, d in specs]),
            "options": json.dumps(key_options(options), sort_keys=True, default=str),
        }
    )
    return KeyDetails("onnx", parts)


def _cached_kernel(
    store: Any, details: KeyDetails | None, options: Options, report: OnnxReport
) -> TVMKernel | None:
    if store is None or details is None:
        return None
    hit = store.get_artifact(details)
    kernels = stored_kernels(hit[0], options) if hit is not None else None
    if not kernels or "onnx" not in kernels:
        return None
    report.cache = "hit"
    blob = kernels["onnx"]
    return TVMKernel.from_library(blob.library, blob.signature, Path(report.path).name)


def _store(
    store: Any,
    details: KeyDetails | None,
    kernel: TVMKernel,
    model: Any,
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    options: Options,
    report: OnnxReport,
) -> None:
    """Keep the built library, signed, so the next load (a replica) neither builds nor imports
    TVM; ``cache ls`` names it by the file, its inputs and its most frequent operators."""
    if store is None or details is None:
        return
    payload = pack(
        {
            "artifact_version": ARTIFACT_VERSION,
            "kernels": {"onnx": signature_json(kernel.signature)},
        },
        {"kernel:onnx": kernel.library},
        ring_of(options),
    )
    about = {
        "model": Path(report.path).name,
        "inputs": [f"{shape} {dtype}" for _, shape, dtype in specs],
        "ops": _op_counts(model),
    }
    store.put_artifact(details, payload, {ABOUT: about})
    report.cache = "miss"


def _op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:6])


def _build(
    model: Any,
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    reference: Sequence[torch.Tensor],
    options: Options,
    report: OnnxReport,
) -> TVMKernel:
    tvm_api()
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(
        model,
        shape_dict={name: list(shape) for name, shape, _ in specs},
        dtype_dict={name: str(dtype) for name, _, dtype in specs},
        keep_params_in_input=False,
    )
    target = detect_target(options, torch.device("cpu"))
    database = tuning_database(options, target)
    if options.tuning:
        report.tuning = tune_modules(
            [mod],
            target.target,
            target.key,
            options,
            database,
            hardware=gpu_hardware(target.gpu) if target.gpu is not None else None,
        )
    executable = build_executable(mod, target, options, database)
    signature = KernelSignature(
        inputs=tuple(
            tensor_spec(torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype))
            for _, shape, dtype in specs
        ),
        outputs=tuple(tensor_spec(r) for r in reference),
        single_output=False,
    )
    return TVMKernel.from_executable(executable, signature, Path(report.path).name, target)


def warmup_onnx(
    path: str | os.PathLike[str],
    buckets: Sequence[Sequence[Any]],
    *,
    options: Mapping[str, Any] | None = None,
    bundle: str | None = None,
) -> list[OnnxReport]:
    """Load (and with ``trials``, tune) the ONNX model once per bucket of example inputs, so
    the cache holds its tuned records; write the cache to ``bundle`` at the end.

    Replicas that import the bundle and call :func:`load_onnx` build from those records without
    tuning (the compiled library itself is rebuilt on load, seconds)."""
    resolved = Options.resolve(options)
    if resolved.cache:
        persistent_store(resolved.store_location(), "what warm-up tunes")
    reports = [load_onnx(path, inputs, options=options).report for inputs in buckets]
    if bundle:
        export_bundle(store_for(resolved.store_location()), bundle, ring_of(resolved))
    return reports
