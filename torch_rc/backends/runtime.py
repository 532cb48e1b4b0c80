"""Run a built partition: a Relax VM executable called with torch tensors through DLPack.

Every kernel runs from an exported shared library, freshly built or loaded from the cache alike,
so that its parallel loops are routed onto PyTorch's OpenMP threads
(:mod:`torch_rc.platform.threads`) and a first-call timing measures what later processes run.

The call path is kept short (docs/design.md, "Per-call overhead"): no Python shape checks (the
graph's shapes are fixed by Dynamo's guards, and the VM checks its inputs itself; a mismatch is
then explained as an :class:`InputMismatchError` naming both shapes), inputs handed over as
DLPack views, outputs taken back without copies. Work that depends only on weights (transposes,
batch-norm folding; Relax's ``LiftTransformParams``) runs once per version of the weights rather
than on every call: the kernel keeps the transformed weights and redoes them only when a weight
tensor is replaced or modified in place (its ``_version`` changes).

On a GPU, tensors are handed over on the device, and every call runs on the current torch CUDA
stream. Nothing waits for the GPU in the call path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torch_rc.backends.library import register_library_kernels
from torch_rc.backends.lower import TensorSpec
from torch_rc.errors import InputMismatchError
from torch_rc.platform.target import TargetInfo
from torch_rc.platform.threads import route_library
from torch_rc.platform.tvm_shim import export_library, load_cpu_vm, prepare_cuda_compiler, tvm_api

__all__ = ["KernelSignature", "TVMKernel"]


@dataclass(frozen=True)
class KernelSignature:
    """How a partition's kernel is called.

    Attributes:
        inputs: Specs of the partition's inputs, in the partition's order.
        outputs: Specs of its outputs.
        single_output: The partition returns one tensor rather than a tuple.
        weights: Positions (in ``inputs``) of the weights whose transforms were lifted out of the
            per-call function, in the order ``main_transform_params`` takes them; empty when
            nothing was lifted.
        library: The products computed by PyTorch's kernels from inside the program (their
            packed functions must be registered before it runs).
        index_bounds: (input position, rows) of embedding indices, checked before each call
            (TVM's lookup would read out of bounds where PyTorch raises IndexError).
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    single_output: bool
    weights: tuple[int, ...] = ()
    library: tuple[str, ...] = ()
    index_bounds: tuple[tuple[int, int], ...] = ()

    @property
    def runtime(self) -> tuple[int, ...]:
        """Positions of the inputs passed on every call (everything but the lifted weights)."""
        lifted = set(self.weights)
        return tuple(i for i in range(len(self.inputs)) if i not in lifted)


class TVMKernel:
    """A compiled partition that takes and returns torch tensors without copies.

    Use :meth:`from_library`. ``calls`` counts calls (what ``explain`` reports runs).
    """

    def __init__(
        self,
        vm: Any,
        signature: KernelSignature,
        name: str,
        *,
        library: bytes,
        device: torch.device | None = None,
    ) -> None:
        self.signature = signature
        self.library = library  # shared-library bytes (what the cache stores)
        self.name = name
        self.device = device or torch.device("cpu")
        self.calls = 0
        self._vm = vm
        self._main = vm["main"]
        self._transform = vm["main_transform_params"] if signature.weights else None
        self._runtime = signature.runtime
        self._weights = signature.weights
        self._index_bounds = signature.index_bounds
        self._one_output = len(signature.outputs) == 1  # main returns the tensor itself
        self._seen: list[tuple[torch.Tensor, int]] = []  # weights the transforms were made from
        self._transformed: list[Any] = []
        self._use_stream: Any = None
        self._stream_device: Any = None
        if self.device.type == "cuda":
            import tvm_ffi

            self._stream_device = tvm_ffi.device("cuda", self.device.index or 0)
            self._use_stream = tvm_ffi.use_raw_stream

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_library(
        cls,
        library: bytes,
        signature: KernelSignature,
        name: str,
        target: TargetInfo | None = None,
    ) -> TVMKernel:
        """A kernel from exported shared-library bytes. On the CPU without importing ``tvm`` (a
        warm start then pays ~0.03 s for tvm-ffi instead of ~1.4 s for the compiler stack); on a
        GPU through ``tvm`` (its CUDA kernels are compiled when the library is loaded)."""
        gpu = target if target is not None and target.kind == "cuda" else None
        if signature.library:
            register_library_kernels()
        with tempfile.TemporaryDirectory(prefix="torch_rc_") as tmp:
            path = os.path.join(tmp, "kernel.so")
            with open(path, "wb") as handle:
                handle.write(library)
            # dlopen keeps the mapping after the file is removed
            if gpu is not None:
                vm = _start_vm(tvm_api().tvm.runtime.load_module(path), gpu)
            else:
                vm = load_cpu_vm(path)
            route_library(path)
        device = gpu.torch_device if gpu is not None else None
        return cls(vm, signature, name, library=library, device=device)

    @classmethod
    def from_executable(
        cls, executable: Any, signature: KernelSignature, name: str, target: TargetInfo
    ) -> TVMKernel:
        """A kernel from a freshly built Relax executable (exported, then loaded like a cached
        one, so both run the same way)."""
        return cls.from_library(export_library(executable), signature, name, target)

    # ----------------------------------------------------------------------------- calling
    def check_inputs(self, args: Sequence[Any]) -> None:
        """Raise InputMismatchError unless ``args`` match the compiled specs exactly."""
        specs = self.signature.inputs
        if len(args) != len(specs):
            raise InputMismatchError(
                f"{self.name}: expected {len(specs)} inputs, received {len(args)}"
            )
        for index, (arg, spec) in enumerate(zip(args, specs, strict=True)):
            if isinstance(arg, torch.Tensor) and not _same_device(arg.device, self.device):
                raise InputMismatchError(
                    f"{self.name}: input {index} is on {arg.device} but the kernel was compiled "
                    f"for {self.device}"
                )
            if (
                not isinstance(arg, torch.Tensor)
                or tuple(arg.shape) != spec.shape
                or arg.dtype != spec.dtype
            ):
                got = (
                    f"{tuple(arg.shape)} {str(arg.dtype).replace('torch.', '')}"
                    if isinstance(arg, torch.Tensor)
                    else type(arg).__name__
                )
                raise InputMismatchError(
                    f"{self.name}: input {index} was compiled for {spec.describe()} but received "
                    f"{got}; recompile for the new shape (torch.compile does this through its "
                    "guards)"
                )

    def _weights_current(self, args: Sequence[Any]) -> bool:
        seen = self._seen
        if not seen:
            return False
        for position, (tensor, version) in zip(self._weights, seen, strict=True):
            arg = args[position]
            if arg is not tensor or arg._version != version:
                return False
        return True

    def _transform_weights(self, args: Sequence[Any]) -> None:
        weights = [_contiguous(args[position]) for position in self._weights]
        self._transformed = list(self._run(self._transform, [weights]))
        self._seen = [(args[position], args[position]._version) for position in self._weights]

    def _run(self, fn: Any, args: Sequence[Any]) -> Any:
        if self._stream_device is None:
            return fn(*args)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        with self._use_stream(self._stream_device, stream):
            return fn(*args)

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        for position, rows in self._index_bounds:
            index = args[position]
            if index.numel():
                low, high = torch.aminmax(index)
                if int(low) < 0 or int(high) >= rows:
                    raise IndexError(
                        f"index out of range in self ({self.name}: input {position} holds "
                        f"{int(low) if int(low) < 0 else int(high)}, the table has {rows} rows)"
                    )
        try:
            if self._transform is None:
                result = self._run(self._main, [_contiguous(a) for a in args])
            else:
                if not self._weights_current(args):
                    self._transform_weights(args)
                runtime = [_contiguous(args[i]) for i in self._runtime]
                result = self._run(self._main, runtime + self._transformed)
        except Exception:
            self.check_inputs(args)  # a clear InputMismatchError when the inputs are the cause
            raise
        convert = _cpu_tensor if self.device.type == "cpu" else _to_torch
        if self._one_output:
            out = convert(result)
            return out if self.signature.single_output else (out,)
        outputs = tuple(convert(value) for value in result)
        return outputs[0] if self.signature.single_output else outputs


# TVM's kernels may assume their tensors start on 64-byte boundaries (kAllocAlignment) and use
# aligned vector loads: a view at an offset (x[1:]) or a numpy array (16-byte aligned) crashed.
_ALIGNMENT = 64


def _contiguous(value: Any) -> Any:
    """``value`` as a contiguous tensor starting on a 64-byte boundary (copied if it is not)."""
    if value.is_contiguous() and value.data_ptr() % _ALIGNMENT == 0:
        return value
    return value.clone(memory_format=torch.contiguous_format)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.type != "cuda" or (a.index or 0) == (b.index or 0)


def _start_vm(module: Any, target: TargetInfo) -> Any:
    """A Relax VM for a loaded library on ``target``'s device."""
    api = tvm_api()
    if target.kind != "cuda":
        return api.relax.VirtualMachine(module, target.tvm_device()).module
    prepare_cuda_compiler()
    with target.target:  # the lazy CUDA compile reads the architecture from the current target
        vm = api.relax.VirtualMachine(module, [target.tvm_device(), api.tvm.cpu(0)])
    return vm.module


def _cpu_tensor(value: Any) -> torch.Tensor:
    """A CPU tvm-ffi tensor as a torch tensor sharing its memory (0.5 us; ``torch.from_dlpack``
    goes through the Python protocol and costs ~1.5 us)."""
    if isinstance(value, torch.Tensor):
        return value
    return torch._C._from_dlpack(value._to_dlpack())


def _to_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_dlpack(value)
