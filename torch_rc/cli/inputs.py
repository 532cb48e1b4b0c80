"""Models and example inputs named on the command line: ``package.module:factory``, ``.pt2``
files, ``1x128:float32`` shapes; each checked by running the eager model once."""

from __future__ import annotations

import os
import sys
from typing import Any

import click


def load_model(spec: str) -> Any:
    """``package.module:factory`` -> the module (calling the factory if it is callable)."""
    import importlib
    import os

    if ":" not in spec:
        raise click.BadParameter(
            f"{spec!r} is not of the form package.module:factory", param_hint="MODEL"
        )
    module_name, attr = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing: say which
        raise click.BadParameter(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", param_hint="MODEL"
        ) from None
    if not hasattr(module, attr):
        raise click.BadParameter(
            f"module {module_name!r} has no attribute {attr!r}", param_hint="MODEL"
        )
    obj = getattr(module, attr)
    import torch

    if isinstance(obj, torch.nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as exc:  # the user's factory failed: say so in one line
            raise click.BadParameter(
                f"{spec}() failed: {type(exc).__name__}: {exc}", param_hint="MODEL"
            ) from None
    else:
        raise click.BadParameter(f"{spec} is neither a model nor a factory", param_hint="MODEL")
    if not callable(model):
        raise click.BadParameter(f"{spec}() did not return a model", param_hint="MODEL")
    return model.eval() if isinstance(model, torch.nn.Module) else model


def dims(spec: str, text: str, hint: str) -> list[int]:
    """``32x256`` -> [32, 256]; anything else (``0x5``, ``ax3``, ``-1x4``) is a one-line error."""
    try:
        dims = [int(d) for d in text.lower().split("x")]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims) or any(d > 1 << 31 for d in dims):
        raise click.BadParameter(
            f"{spec!r}: a shape is positive sizes joined by x, like 32x256", param_hint=hint
        )
    return dims


def check_runs(model: Any, inputs: list[Any], what: str) -> None:
    """Run ``model`` eagerly on ``inputs`` once: a model that cannot take them is a one-line
    error here, not a Dynamo traceback later."""
    import torch

    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # the user's model rejects these inputs: say which, in one line
        shapes = " ".join("x".join(map(str, x.shape)) for x in inputs if hasattr(x, "shape"))
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = ""
        if isinstance(model, torch.fx.GraphModule) or "Expected input at" in message:
            hint = (
                " (an ExportedProgram only takes the shapes it was exported for; export with "
                "dynamic_shapes to serve others)"
            )
        raise click.ClickException(
            f"the model fails on {what} {shapes}: {type(exc).__name__}: {message}{hint}"
        ) from None


def parse_input(spec: str) -> Any:
    """``32x256`` (float32) or ``1x128:int64`` (random integers 0..99) -> a random tensor."""
    import torch

    shape_text, _, dtype_text = spec.partition(":")
    shape = dims(spec, shape_text, "--input")
    dtype = getattr(torch, dtype_text or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise click.BadParameter(f"{spec!r}: unknown dtype {dtype_text!r}", param_hint="--input")
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.randint(0, 100, shape, dtype=dtype)


def load_any_model(spec: str) -> Any:
    """A model from ``package.module:factory`` or an ExportedProgram file (``.pt2``)."""
    import os

    lowered = spec.lower()
    if lowered.endswith((".pt", ".ts", ".torchscript")):
        raise click.BadParameter(
            f"{spec}: TorchScript files are not supported (Dynamo cannot trace ScriptModules); "
            "use torch.export (.pt2) or a package.module:factory",
            param_hint="MODEL",
        )
    if lowered.endswith(".pt2"):
        if not os.path.exists(spec):
            raise click.BadParameter(f"{spec} does not exist", param_hint="MODEL")
        import torch

        try:
            return torch.export.load(spec).module()
        except Exception as exc:  # a corrupted or foreign file: one line
            raise click.BadParameter(
                f"{spec} is not a readable ExportedProgram: {type(exc).__name__}: {exc}",
                param_hint="MODEL",
            ) from None
    return load_model(spec)


def parse_bucket(spec: str) -> list[tuple[int, ...]]:
    """``1x128`` or ``1x128,1x128`` (one shape per tensor input; dtypes come from --input)."""
    return [tuple(dims(spec, part.split(":")[0], "--bucket")) for part in spec.split(",")]


def onnx_file(spec: str | None) -> bool:
    """Whether MODEL names an ONNX file (which must exist: a clear error otherwise)."""
    if not spec or not spec.lower().endswith(".onnx"):
        return False
    if not os.path.isfile(spec):
        raise click.BadParameter(f"{spec} does not exist", param_hint="MODEL")
    return True
