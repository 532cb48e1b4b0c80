"""The one module that knows where TVM 0.27 keeps things, and which TVM versions torch_rc runs on.

TVM moves its Python API between releases (``tvm.tir`` split into ``tvm.tirx`` and ``tvm.s_tir``;
MetaSchedule moved under ``tvm.s_tir``; targets are JSON dicts). Every other module imports TVM
through :func:`tvm_api`, which imports lazily (``import tvm`` costs seconds, so it must not run on
``import torch_rc``) and fails early with a clear message on a version known not to work.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import re
import tempfile
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch_rc.errors import TVMVersionError
from torch_rc.platform.vector_math import dtype_of, rewrite_exp

__all__ = [
    "TVMApi",
    "tvm_api",
    "check_versions",
    "TIR_PIPELINE",
    "REFERENCE_TIR_PIPELINE",
    "export_library",
    "load_cpu_vm",
    "prepare_cuda_compiler",
    "prepare_meta_schedule",
    "tvm_warnings_once",
    "start_cpu_vm",
    "SUPPORTED_TVM",
    "SUPPORTED_TVM_FFI",
]

logger = logging.getLogger(__name__)

SUPPORTED_TVM = "0.27"
# apache-tvm-ffi 0.1.15.* is ABI-incompatible with the apache-tvm 0.27.0.post1 wheel: save_json and
# MetaSchedule's database segfault inside tvm::ffi::ToJSONGraph (measured; see docs/tvm-facts.md).
SUPPORTED_TVM_FFI = ("0.1.14.post0",)


@dataclass(frozen=True)
class TVMApi:
    """Handles to the parts of TVM torch_rc uses, resolved once."""

    tvm: types.ModuleType
    relax: types.ModuleType
    tirx: types.ModuleType
    s_tir: types.ModuleType
    importer_cls: type
    version: str
    ffi_version: str

    def cpu_target(self, num_cores: int) -> object:
        """An LLVM target for this host CPU (real ``mcpu``, so AVX2/AVX-512 are used)."""
        mcpu = self.tvm.target.codegen.llvm_get_system_cpu()
        return self.tvm.target.Target(
            {"kind": "llvm", "num-cores": int(num_cores), "mcpu": mcpu, "mtriple": _host_triple()}
        )

    def compile(
        self,
        mod: object,
        target: object,
        relax_pipeline: object = "default",
        *,
        reference: bool = False,
    ) -> object:
        """``tvm.compile`` with torch_rc's TIR pipeline (:data:`TIR_PIPELINE`): the one way
        torch_rc builds kernels, so every build gets the same numerics fixes. ``reference``:
        build with :data:`REFERENCE_TIR_PIPELINE` instead (libm's ``exp``), for the unscheduled
        kernel that tuned kernels are checked against."""
        pipeline = REFERENCE_TIR_PIPELINE if reference else TIR_PIPELINE
        return self.tvm.compile(mod, target, relax_pipeline=relax_pipeline, tir_pipeline=pipeline)

    def from_dlpack(self, tensor: object) -> object:
        """Zero-copy view of a DLPack-capable tensor as a TVM tensor."""
        return self.tvm.runtime.from_dlpack(tensor)


def _host_triple() -> str:
    import platform

    machine = platform.machine() or "x86_64"
    return f"{machine}-linux-gnu" if platform.system() == "Linux" else f"{machine}-unknown-unknown"


def _installed(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


# The names of torch_rc's TIR lowering pipelines (registered with TVM by tvm_api()): the one
# kernels are built with, and the one references are built with (no vector math rewrite, so a
# checked kernel's exp is compared with libm's).
TIR_PIPELINE = "torch_rc"
REFERENCE_TIR_PIPELINE = "torch_rc_reference"


@functools.cache
def tvm_api() -> TVMApi:
    """Import TVM once, check its version and return the handles torch_rc uses.

    Raises:
        TVMVersionError: TVM or tvm-ffi is missing or at a version known not to work.
    """
    tvm_version = _installed("apache-tvm")
    ffi_version = _installed("apache-tvm-ffi")
    check_versions(tvm_version, ffi_version)
    import tvm
    from tvm import relax, s_tir, tirx
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    _register_tir_pipeline(tvm, tirx)
    return TVMApi(
        tvm=tvm,
        relax=relax,
        tirx=tirx,
        s_tir=s_tir,
        importer_cls=ExportedProgramImporter,
        version=tvm_version,
        ffi_version=ffi_version,
    )


def _register_tir_pipeline(tvm: types.ModuleType, tirx: types.ModuleType) -> None:
    """Register :data:`TIR_PIPELINE` and :data:`REFERENCE_TIR_PIPELINE`: TVM's default TIR
    lowering, then float ``!=`` made IEEE-correct; then, in :data:`TIR_PIPELINE` only, float32
    ``exp``/``sigmoid``/``tanh``/``erf`` of CPU functions as vectorisable arithmetic
    (:mod:`torch_rc.platform.vector_math`).

    TVM 0.27's LLVM codegen emits float ``a != b`` as ``fcmp one`` (false when either side is NaN);
    C and PyTorch mean ``une`` (true for NaN). Its simplifier also creates such ``!=`` from
    ``not (a == b)`` once a boolean mask is inlined: PyTorch's attention decomposition then turned
    rows of NaN into rows of 0 (docs/tvm-facts.md, "Numerics"). After the last simplification,
    every float ``a != b`` becomes ``a != b or isnan(a) or isnan(b)``.
    """
    import tvm_ffi
    from tvm.tirx import compilation_pipeline

    def fix_not_equal(ne: object) -> object:
        a, b = ne.a, ne.b  # type: ignore[attr-defined]
        if "float" not in dtype_of(a):
            return ne
        return tirx.Or(ne, tirx.Or(tirx.op.isnan(a), tirx.op.isnan(b)))

    @tirx.transform.prim_func_pass(opt_level=0, name="TorchRCNaNAwareNotEqual")
    def nan_aware_not_equal(func: object, _mod: object, _ctx: object) -> object:
        return tvm_ffi.structural_map(func, [(tirx.NE, fix_not_equal)])

    @tirx.transform.prim_func_pass(opt_level=0, name="TorchRCVectorMath")
    def vector_math(func: object, _mod: object, _ctx: object) -> object:
        target = func.attrs.get("target") if func.attrs is not None else None  # type: ignore[attr-defined]
        if target is None or str(target.kind.name) != "llvm":
            return func
        return tvm_ffi.structural_map(
            func, [(tvm.ir.expr.Call, lambda call: rewrite_exp(tirx, call))]
        )

    def pipelines(*extra: object) -> Any:
        def pipeline() -> tuple[object, object, object]:
            default, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline(
                "default"
            )
            return (
                tvm.transform.Sequential([default, nan_aware_not_equal, *extra]),
                finalize_host,
                finalize_device,
            )

        return pipeline

    compilation_pipeline.PIPELINE_MAP[TIR_PIPELINE] = pipelines(vector_math)
    compilation_pipeline.PIPELINE_MAP[REFERENCE_TIR_PIPELINE] = pipelines()


def check_versions(tvm_version: str, ffi_version: str) -> None:
    """Raise TVMVersionError, with the install command, unless both versions are supported."""
    if not tvm_version.startswith(SUPPORTED_TVM):
        raise TVMVersionError(
            f"torch_rc needs apache-tvm {SUPPORTED_TVM}.x, found {tvm_version or 'none'}; "
            "install it with: pip install 'apache-tvm==0.27.0.post1' 'apache-tvm-ffi==0.1.14.post0'"
        )
    if ffi_version not in SUPPORTED_TVM_FFI:
        raise TVMVersionError(
            f"torch_rc needs apache-tvm-ffi {' or '.join(SUPPORTED_TVM_FFI)}, found "
            f"{ffi_version or 'none'} (0.1.15 segfaults with apache-tvm 0.27 when serialising IR); "
            "install it with: pip install 'apache-tvm-ffi==0.1.14.post0'"
        )


# Relax VM start-up arguments (tvm/runtime/vm.py): DLPack's kDLCPU and the pooled allocator.
_KDL_CPU = 1
_POOLED_ALLOCATOR = 2


@functools.cache
def _runtime_library() -> None:
    """Load libtvm_runtime.so into the process (global symbols) without importing ``tvm``.

    Exported kernel libraries link against it; ``import tvm`` would load it too but costs ~1.4 s
    more (it imports the whole compiler stack), which a warm start should not pay.
    """
    import ctypes
    import importlib.util
    import os

    check_versions(_installed("apache-tvm"), _installed("apache-tvm-ffi"))
    spec = importlib.util.find_spec("tvm")
    if spec is None or spec.origin is None:
        raise TVMVersionError("apache-tvm is not installed: pip install 'apache-tvm==0.27.0.post1'")
    ctypes.CDLL(
        os.path.join(os.path.dirname(spec.origin), "lib", "libtvm_runtime.so"),
        mode=ctypes.RTLD_GLOBAL,
    )


def load_cpu_vm(library_path: str) -> object:
    """A Relax VM on the CPU for an exported executable library, using only tvm-ffi and the
    runtime library (no ``import tvm``). Returns the VM module; call ``vm["main"](*tensors)``."""
    import tvm_ffi

    _runtime_library()
    return start_cpu_vm(tvm_ffi.load_module(library_path))


def export_library(executable: object) -> bytes:
    """The shared-library bytes of a built executable (a Relax VM executable or a TIR module)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="torch_rc_") as tmp:
        path = os.path.join(tmp, "kernel.so")
        executable.export_library(path)  # type: ignore[attr-defined]
        with open(path, "rb") as handle:
            return handle.read()


def start_cpu_vm(runtime_module: object) -> object:
    """Start a Relax VM on the CPU from a runtime module holding an executable."""
    vm = runtime_module["vm_load_executable"]()  # type: ignore[index]
    vm["vm_initialization"](_KDL_CPU, 0, _POOLED_ALLOCATOR)
    return vm


@functools.cache
def prepare_meta_schedule(target_kind: str = "llvm") -> None:
    """Register only ``target_kind``'s tensor intrinsics before MetaSchedule is used.

    ``TuneContext.__init__`` (and MetaSchedule's LocalBuilder) run ``import tvm.s_tir.tensor_intrin``,
    whose ``__init__`` imports every target's intrinsics: ~27 s here, ~20 s of it CUDA's. This puts
    the package object in ``sys.modules`` without running its ``__init__`` and imports only the
    submodules the target needs (x86: ~0.4 s), so that import inside MetaSchedule is a no-op.
    """
    import importlib
    import importlib.util
    import sys
    import types

    tvm_api()
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise TVMVersionError(
                f"{name} not found: this TVM build has no tensor intrinsics package"
            )
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__package__ = name
        sys.modules[name] = package
    needed = {"llvm": ("x86",), "cuda": ("cuda",)}.get(target_kind, ())
    for submodule in needed:
        importlib.import_module(f"{name}.{submodule}")


@functools.cache
def prepare_cuda_compiler() -> str:
    """Make CUDA kernels loadable: register TVM's compile callback and pick its compiler.

    TVM 0.27 keeps CUDA kernels as CUDA C source in built and exported modules; the CUDA runtime
    compiles them when a module is loaded, through the ``tvm_callback_cuda_compile`` function that
    ``tvm.support.nvcc`` registers (without it the load fails: "fmt=='cuda' requires
    tvm_callback_cuda_compile to be registered"). That callback uses NVRTC through
    ``cuda-bindings`` by default, else ``nvcc`` with ``TVM_CUDA_COMPILE_MODE=nvcc``. This picks
    NVRTC when ``cuda.bindings`` imports, else nvcc when it is on PATH (a user's own
    ``TVM_CUDA_COMPILE_MODE`` is kept), and returns which.

    Raises:
        TVMVersionError: Neither compiler is available.
    """
    import importlib.util
    import os
    import shutil

    tvm_api()
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    chosen = os.environ.get("TVM_CUDA_COMPILE_MODE", "").lower()
    if chosen:
        return chosen
    if importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings"):
        return "nvrtc"
    if shutil.which("nvcc"):
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        return "nvcc"
    raise TVMVersionError(
        "no CUDA compiler for TVM's CUDA kernels: install NVRTC's Python bindings "
        "(pip install cuda-bindings nvidia-cuda-nvrtc) or put the CUDA toolkit's nvcc on PATH"
    )


_SEEN_WARNINGS: set[str] = set()
_CAPTURE = threading.Lock()
_capturing = threading.local()
# TVM's C++ log prefix: "[12:00:00] /path/to/file.h:1261: " (time and location vary per call).
_TVM_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


@contextlib.contextmanager
def tvm_warnings_once() -> Iterator[None]:
    """Capture what TVM's C++ code writes to stderr while the block runs, and log each distinct
    message once per process through the ``torch_rc`` logger (WARNING), instead of letting a
    warm-up print the same line for every bucket. Everything captured is passed on: other
    lines (not TVM's log format) are written back to stderr as they were."""
    if getattr(_capturing, "active", False):  # nested in this thread: the outer block captures
        yield
        return
    with _CAPTURE:  # one redirection of fd 2 at a time across threads
        _capturing.active = True
        try:
            with tempfile.TemporaryFile() as sink:
                saved = os.dup(2)
                os.dup2(sink.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    sink.seek(0)
                    _pass_on(sink.read().decode("utf-8", "replace"))
        finally:
            _capturing.active = False


def _pass_on(text: str) -> None:
    other = []
    for line in text.splitlines():
        message = _TVM_LOG_PREFIX.sub("", line).strip()
        if message == line.strip():  # not TVM's log format: give it back untouched
            other.append(line)
        elif message and message not in _SEEN_WARNINGS:
            _SEEN_WARNINGS.add(message)
            logger.warning("torch_rc: TVM: %s (shown once per process)", message)
    if other:
        os.write(2, ("\n".join(other) + "\n").encode())
