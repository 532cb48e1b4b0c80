"""Tune once, serve with zero tuning: ``warmup`` on a build machine, ``ServingModel`` on replicas.

``warmup`` compiles a model for every input-shape bucket (optionally tuning its kernels), makes
the first-call decisions, checks each bucket against eager, and can write a portable bundle of
the cache. ``ServingModel`` loads a bundle with one call, compiles every bucket at start-up from
the cache with ``tune="never"`` (no tuning, no LLM calls), and serves: a request whose shapes match
a bucket runs the compiled code; any other shape runs the model eagerly (correct, never a crash)
and is counted as a miss.

Why buckets and not one symbolic-shape build: Dynamo marks a dimension dynamic after the second
size it sees, and a symbolic graph is specialised per concrete shape at call time anyway
(``backends/specialize.py``), without the persistent artifact cache; per-bucket static graphs hit
the cache in a fresh process and keep the per-shape first-call choice. Padding to the next bucket
would change a model's results unless it masks the padding, which a generic backend cannot know.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_rc.backends.artifact import ring_of
from torch_rc.backends.compiler import GraphReport
from torch_rc.backends.dynamo import reporting_backend
from torch_rc.cache.bundle import describe_refusal, export_bundle, import_bundle
from torch_rc.cache.location import persistent_store, store_for
from torch_rc.errors import CacheError
from torch_rc.numerics import compare_outputs, max_abs_error
from torch_rc.onnx_model import OnnxModel, load_onnx
from torch_rc.options import Options, with_budget
from torch_rc.platform.target import local_target_keys
from torch_rc.tuning.remote import check_fleet

__all__ = ["BucketResult", "ServingModel", "WarmupReport", "warmup", "inputs_like"]

Signature = tuple[tuple[tuple[int, ...], str, str], ...]


def signature(inputs: Sequence[Any]) -> Signature:
    """Shapes, dtypes and devices of the tensor inputs (what selects a bucket: a CPU request to
    a model warmed on a GPU is a miss, run eagerly, not a compile at serving time)."""
    return tuple(
        (tuple(x.shape), str(x.dtype), str(x.device)) for x in inputs if isinstance(x, torch.Tensor)
    )


def inputs_like(
    example: Sequence[Any], shapes: Sequence[Sequence[int]], seed: int = 0
) -> list[Any]:
    """Random inputs with ``example``'s dtypes and the given shapes (integers stay within the
    example's value range, so token ids stay valid)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [x for x in example if isinstance(x, torch.Tensor)]
    if len(shapes) != len(tensors):
        raise ValueError(f"a bucket gives {len(shapes)} shapes for {len(tensors)} tensor inputs")
    out, shape_iter = [], iter(shapes)
    for x in example:
        if not isinstance(x, torch.Tensor):
            out.append(x)
            continue
        shape = tuple(next(shape_iter))
        if x.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=generator).to(x.dtype).to(x.device))
        else:
            low, high = (int(x.min()), int(x.max()) + 1) if x.numel() else (0, 2)
            out.append(
                torch.randint(
                    low, max(high, low + 1), shape, generator=generator, dtype=x.dtype
                ).to(x.device)
            )
    return out


@dataclass
class BucketResult:
    shapes: list[tuple[int, ...]]
    compile_s: float
    max_abs_error: float | None
    graphs: int
    tuned_kernels: int
    samples: int
    mismatch: str = ""  # why the compiled bucket does not match eager (empty: it matches)
    eager: list[str] = field(default_factory=list)  # graphs whose first call chose eager, and why

    @property
    def runs(self) -> str:
        """What the bucket runs after its first call: compiled code, or (some graphs) eager."""
        if not self.eager:
            return "runs compiled"
        return f"runs eager in {len(self.eager)} of {self.graphs} graphs ({'; '.join(self.eager)})"


@dataclass
class WarmupReport:
    buckets: list[BucketResult] = field(default_factory=list)
    bundle: str = ""
    interrupted: bool = False
    seconds: float = 0.0


def _eager_graphs(reports: Sequence[Any]) -> list[str]:
    """Why each graph runs in PyTorch after its first call: its original code (the whole-graph
    choice was eager), or a compiled graph none of whose partitions runs on TVM."""
    out = []
    for r in reports:
        if r.choice != "compiled":
            out.append(f"graph {r.index}: {r.choice_reason or r.target}")
        elif not any(p.status == "tvm" for p in r.partitions):
            reasons = "; ".join(sorted({p.reason for p in r.partitions if p.reason}))
            out.append(f"graph {r.index}: no partition runs on TVM ({reasons or r.target})")
    return out


def _is_onnx(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")


def _compile_bucket(
    model: Any, inputs: list[Any], options: Options
) -> tuple[Any, Any, list[Any], float]:
    """Compile ``model`` for exactly these shapes; call it once; return (compiled, output, reports, s)."""
    sink: list[GraphReport] = []

    start = time.perf_counter()
    compiled = torch.compile(model, backend=reporting_backend(options, sink), dynamic=False)
    with torch.no_grad():
        out = compiled(*inputs)
    return compiled, out, sink, time.perf_counter() - start


def _raise_recompile_limit(buckets: int) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < buckets + 4:
            setattr(config, name, buckets + 4)


def warmup(
    model: Any,
    example_inputs: Sequence[Any],
    *,
    shapes: Sequence[Sequence[Sequence[int]]] | None = None,
    trials: int | None = None,
    time_limit_s: float | None = None,
    options: Mapping[str, Any] | None = None,
    bundle: str | None = None,
    progress: Callable[[int, int, BucketResult], None] | None = None,
) -> WarmupReport:
    """Compile (and with ``trials`` tune) ``model`` for each bucket of input shapes; fill the cache.

    Args:
        example_inputs: Inputs that fix the dtypes (and integer value ranges).
        shapes: One list of shapes (one per tensor input) per bucket; default: the example's.
        trials: Tuning budget of the model per bucket (default: ``options["trials"]``, else 0:
            compile with default schedules and stored records). Overrides the option.
        time_limit_s: Wall-clock limit for all tuning (``tune_total_s``); overrides the option.
        options: Further backend options (``cache_dir``, ``llm``, ...).
        bundle: Write the whole cache to this bundle file at the end.

    Raises:
        OptionsError: A bad option. ValueError: a bucket with the wrong number of shapes.
    """
    resolved = Options.resolve(
        {**with_budget(options, trials=trials, time_limit_s=time_limit_s), "tune": "auto"}
    )
    if resolved.cache:
        persistent_store(resolved.store_location(), "what warm-up compiles and tunes")
    if resolved.rpc_tracker and resolved.tuning:
        check_fleet(resolved.rpc_tracker, resolved.rpc_key)  # a clear error before compiling
    buckets = (
        [list(map(tuple, b)) for b in shapes] if shapes else [signature_shapes(example_inputs)]
    )
    report = WarmupReport()
    start = time.monotonic()
    _raise_recompile_limit(len(buckets))
    for index, bucket in enumerate(buckets):
        inputs = inputs_like(example_inputs, bucket, seed=index)
        torch._dynamo.reset()
        compiled, out, sink, seconds = _compile_bucket(model, inputs, resolved)
        with torch.no_grad():
            want = model(*inputs)
        runs = [g.tuning for g in sink if g.tuning is not None]
        result = BucketResult(
            shapes=bucket,
            compile_s=seconds,
            max_abs_error=max_abs_error(want, out),
            graphs=len(sink),
            tuned_kernels=sum(g.tuned_kernels for g in sink),
            samples=sum(t.result.samples for r in runs for t in r.tasks if t.result is not None),
            eager=_eager_graphs(sink),
        )
        match = compare_outputs(
            want, out, rtol=resolved.rtol, atol=resolved.atol, label=f"bucket {list(bucket)}"
        )
        result.mismatch = "" if match.ok else match.problem
        report.buckets.append(result)
        if progress:
            progress(index + 1, len(buckets), result)
        if any(r.interrupted for r in runs):
            report.interrupted = True
            break
    torch._dynamo.reset()
    if bundle:
        export_bundle(store_for(resolved.store_location()), bundle, ring_of(resolved))
        report.bundle = bundle
    report.seconds = time.monotonic() - start
    return report


def signature_shapes(inputs: Sequence[Any]) -> list[tuple[int, ...]]:
    return [tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)]


class ServingModel:
    """A model served from the cache: compiled buckets, eager fallback for other shapes.

    Args:
        model: The eager model (same code and weights as at warm-up), or an ONNX file
            (each bucket through :func:`torch_rc.load_onnx`; other shapes run on onnxruntime).
        example_inputs: Fix the dtypes of generated start-up inputs.
        buckets: The warmed shapes (one list of shapes per bucket).
        bundle: A bundle to import into the cache first (one call at start-up).
        options: Backend options; ``tune`` is forced to ``"never"``.
        allow_other_target: Import bundle entries made for another target (normally refused).

    The bundle must be signed by a trusted key (the ``trusted_keys`` option, or ``torch-rc
    keys trust``): it holds code this process loads. On a read-only cache location its entries
    live in this process's memory.

    Raises:
        CacheError: The bundle is missing, corrupted, not signed by a trusted key (unless
            ``trust_unsigned``), or holds nothing usable here.
    """

    def __init__(
        self,
        model: Any,
        example_inputs: Sequence[Any],
        buckets: Sequence[Sequence[Sequence[int]]],
        *,
        bundle: str | None = None,
        options: Mapping[str, Any] | None = None,
        allow_other_target: bool = False,
    ) -> None:

        start = time.perf_counter()
        self.model = model
        self.options = Options.resolve({**(options or {}), "tune": "never"})
        self.import_summary = None
        if bundle:
            local = local_target_keys(self.options)
            # The process's one store for the location: on a read-only location the import goes
            # to the same in-memory copy the compiles below read.
            summary = import_bundle(
                store_for(self.options.store_location()),
                bundle,
                local_target=local,
                ring=ring_of(self.options),
                trust_unsigned=self.options.trust_unsigned,
                allow_other_target=allow_other_target,
                require_persist=False,
            )
            usable = summary.records_added + summary.artifacts_added + summary.artifacts_present
            if usable == 0 and (summary.rejected_other_target or summary.rejected_other_version):
                raise CacheError(f"{bundle}: {describe_refusal(summary, local)}")
            self.import_summary = summary
        self._lock = threading.Lock()  # TVM VMs are not re-entrant: one request at a time
        self._compiled: dict[Signature, Any] = {}
        self._bucket_reports: dict[Signature, list[Any]] = {}
        self.reports: list[Any] = []
        self.hits = 0
        self.misses = 0
        self.miss_shapes: collections.Counter[Signature] = collections.Counter()
        self._onnx: dict[Signature, OnnxModel] = {}
        _raise_recompile_limit(len(buckets))
        for index, bucket in enumerate(buckets):
            inputs = inputs_like(example_inputs, [tuple(s) for s in bucket], seed=index)
            if _is_onnx(model):
                loaded = load_onnx(model, inputs, options=self.options)
                self._compiled[signature(inputs)] = self._onnx[signature(inputs)] = loaded
                self._bucket_reports[signature(inputs)] = []
                continue
            compiled, _, sink, _ = _compile_bucket(model, inputs, self.options)
            self._compiled[signature(inputs)] = compiled
            self._bucket_reports[signature(inputs)] = sink
            self.reports += sink
        self.startup_s = time.perf_counter() - start

    def __call__(self, *inputs: Any) -> Any:
        return self.run(*inputs)[0]

    def run(self, *inputs: Any) -> tuple[Any, bool]:
        """The output, and whether compiled code produced it: a warmed bucket whose graphs all
        run compiled (a warmed bucket whose first-call choice was eager runs the original)."""
        key = signature(inputs)
        compiled = self._compiled.get(key)
        with self._lock, torch.no_grad():
            if compiled is None:
                self.misses += 1
                self.miss_shapes[key] += 1
                if self._onnx:  # the reference runs any shape the model accepts
                    return next(iter(self._onnx.values())).reference(*inputs), False
                return self.model(*inputs), False
            self.hits += 1
            out = compiled(*inputs)
            if key in self._onnx:
                return out, self._onnx[key].report.runs_on == "tvm"
            return out, not _eager_graphs(self._bucket_reports[key])

    def stats(self) -> dict[str, Any]:
        """Hits, misses (with shapes), start-up time, and what the compiles did."""
        return {
            "buckets": len(self._compiled),
            "hits": self.hits,
            "misses": self.misses,
            "miss_shapes": {str([list(s) for s, *_ in k]): n for k, n in self.miss_shapes.items()},
            "startup_s": round(self.startup_s, 3),
            "graphs": len(self.reports),
            "buckets_running_eager": {
                str([list(s) for s, *_ in key]): why
                for key, reports in self._bucket_reports.items()
                if (why := _eager_graphs(reports))
            },
            # ONNX models: buckets whose TVM build lost to (or did not match) onnxruntime.
            "buckets_running_onnxruntime": {
                str([list(s) for s, *_ in key]): loaded.report.reason
                for key, loaded in self._onnx.items()
                if loaded.report.runs_on != "tvm"
            },
            "cache_hits": sum(r.cache == "hit" for r in self.reports),
            "tuning_runs": sum(r.tuning is not None for r in self.reports),
            # Kernels built at start-up from tuned records; 0 when every graph loaded a built
            # artifact (which already contains the tuned kernels from warm-up).
            "kernels_built_from_records": sum(r.tuned_kernels for r in self.reports),
        }
