"""Run a built partition: a Relax VM executable called with torch tensors through DLPack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torch_rc.backends.lower import TensorSpec
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

    @classmethod
    def from_executable(
        cls,
        executable: Any,
        device: Any,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        single_output: bool,
        name: str,
    ) -> TVMKernel:
        """A kernel from a freshly built Relax executable."""
        from torch_rc.tvm_shim import tvm_api

        vm = tvm_api().relax.VirtualMachine(executable, device).module
        return cls(vm, inputs, outputs, single_output, name, executable=executable)

    @classmethod
    def from_library(
        cls,
        library: bytes,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        single_output: bool,
        name: str,
    ) -> TVMKernel:
        """A CPU kernel from exported shared-library bytes, without importing ``tvm`` (a warm
        start then pays ~0.03 s for tvm-ffi instead of ~1.4 s for the compiler stack)."""
        import os
        import tempfile

        from torch_rc.tvm_shim import load_cpu_vm

        with tempfile.TemporaryDirectory(prefix="torch_rc_") as tmp:
            path = os.path.join(tmp, "kernel.so")
            with open(path, "wb") as handle:
                handle.write(library)
            vm = load_cpu_vm(path)  # dlopen keeps the mapping after the file is removed
        return cls(vm, inputs, outputs, single_output, name, library=library)

    def check_inputs(self, args: Sequence[torch.Tensor]) -> None:
        """Raise InputMismatchError unless ``args`` match the compiled specs exactly."""
        if len(args) != len(self.inputs):
            raise InputMismatchError(
                f"{self.name}: expected {len(self.inputs)} inputs, received {len(args)}"
            )
        for index, (arg, spec) in enumerate(zip(args, self.inputs, strict=True)):
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
        result = self._main(*[arg if arg.is_contiguous() else arg.contiguous() for arg in args])
        outputs = tuple(_to_torch(value) for value in result)
        return outputs[0] if self.single_output else outputs


def _to_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_dlpack(value)
