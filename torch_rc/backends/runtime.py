"""Run a built partition: a Relax VM executable called with torch tensors through DLPack.

On a GPU, tensors are handed over on the device (no copies), and every call runs on the current
torch CUDA stream: TVM's kernels are launched on the stream tvm-ffi holds as the current stream
of that device, which each call sets to ``torch.cuda.current_stream()`` for its duration. Nothing
waits for the GPU in the call path; outputs are CUDA tensors ordered on that stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torch_rc.backends.lower import TensorSpec
from torch_rc.backends.target import TargetInfo
from torch_rc.errors import InputMismatchError

__all__ = ["TVMKernel"]


class TVMKernel:
    """A compiled partition that takes and returns torch tensors without copies.

    Inputs are handed to the VM as DLPack views (tvm-ffi converts torch tensors at the call
    boundary), so parameters stay where torch keeps them; outputs come back as torch tensors
    sharing the VM's freshly allocated buffers. Each call checks the inputs against the specs the
    kernel was built for and raises :class:`InputMismatchError` naming both, never computing on
    the wrong shape.
    """

    def __init__(
        self,
        vm: Any,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        single_output: bool,
        name: str,
        *,
        executable: Any = None,
        library: bytes | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Use :meth:`from_executable` or :meth:`from_library` rather than this."""
        self.executable = executable
        # Shared-library bytes, when the kernel was loaded from (or exported to) an artifact.
        self.library = library
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.single_output = single_output
        self.name = name
        self._vm = vm
        self._main = vm["main"]
        self.device = device or torch.device("cpu")
        self._stream_device: Any = None
        if self.device.type == "cuda":
            import tvm_ffi

            self._stream_device = tvm_ffi.device("cuda", self.device.index or 0)
            self._use_stream = tvm_ffi.use_raw_stream

    @classmethod
    def from_executable(
        cls,
        executable: Any,
        target: TargetInfo,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        single_output: bool,
        name: str,
    ) -> TVMKernel:
        """A kernel from a freshly built Relax executable, on ``target``'s device."""
        vm = _start_vm(executable, target)
        return cls(
            vm,
            inputs,
            outputs,
            single_output,
            name,
            executable=executable,
            device=target.torch_device,
        )

    @classmethod
    def from_library(
        cls,
        library: bytes,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        single_output: bool,
        name: str,
        target: TargetInfo | None = None,
    ) -> TVMKernel:
        """A kernel from exported shared-library bytes. On the CPU without importing ``tvm`` (a
        warm start then pays ~0.03 s for tvm-ffi instead of ~1.4 s for the compiler stack); on a
        GPU through ``tvm`` (its CUDA kernels are compiled when the library is loaded)."""
        import os
        import tempfile

        from torch_rc.tvm_shim import load_cpu_vm, tvm_api

        gpu = target is not None and target.kind == "cuda"
        with tempfile.TemporaryDirectory(prefix="torch_rc_") as tmp:
            path = os.path.join(tmp, "kernel.so")
            with open(path, "wb") as handle:
                handle.write(library)
            # dlopen keeps the mapping after the file is removed
            if gpu:
                vm = _start_vm(tvm_api().tvm.runtime.load_module(path), target)
            else:
                vm = load_cpu_vm(path)
        device = target.torch_device if gpu else None
        return cls(vm, inputs, outputs, single_output, name, library=library, device=device)

    def check_inputs(self, args: Sequence[torch.Tensor]) -> None:
        """Raise InputMismatchError unless ``args`` match the compiled specs exactly."""
        if len(args) != len(self.inputs):
            raise InputMismatchError(
                f"{self.name}: expected {len(self.inputs)} inputs, received {len(args)}"
            )
        for index, (arg, spec) in enumerate(zip(args, self.inputs, strict=True)):
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
                    f"{self.name}: input {index} was compiled for {spec.describe()} but received {got}; "
                    "recompile for the new shape (torch.compile does this through its guards)"
                )

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_inputs(args)
        tensors = [arg if arg.is_contiguous() else arg.contiguous() for arg in args]
        if self._stream_device is None:
            result = self._main(*tensors)
        else:
            stream = torch.cuda.current_stream(self.device).cuda_stream
            with self._use_stream(self._stream_device, stream):
                result = self._main(*tensors)
        outputs = tuple(_to_torch(value) for value in result)
        return outputs[0] if self.single_output else outputs


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.type != "cuda" or (a.index or 0) == (b.index or 0)


def _start_vm(module: Any, target: TargetInfo) -> Any:
    """A Relax VM for a built executable or loaded library on ``target``'s device."""
    from torch_rc.tvm_shim import prepare_cuda_compiler, tvm_api

    api = tvm_api()
    if target.kind != "cuda":
        return api.relax.VirtualMachine(module, target.tvm_device()).module
    prepare_cuda_compiler()
    with target.target:  # the lazy CUDA compile reads the architecture from the current target
        vm = api.relax.VirtualMachine(module, [target.tvm_device(), api.tvm.cpu(0)])
    return vm.module


def _to_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_dlpack(value)
