"""Cache keys: every input that changes a cached result, kept as named parts beside the entry.

A key is the SHA-256 of its parts (and the schema version); the parts themselves are stored with
each entry, so a miss can be explained by naming the parts that differ from the nearest entry
(``torch-rc cache explain``), as Inductor's ``FxGraphHashDetails`` does.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "SCHEMA_VERSION",
    "POLICY_VERSION",
    "KeyDetails",
    "artifact_key",
    "environment_parts",
    "workload_key",
]

# Bump when the layout of stored entries changes (the store refuses newer schemas).
SCHEMA_VERSION = 1
# Bump when the code that decides kernels changes meaning (default schedules, selection rules,
# proposer policy): entries made by another policy must miss.
POLICY_VERSION = "decisions-4"


@dataclass(frozen=True)
class KeyDetails:
    """The parts of a cache key, and the key they hash to."""

    kind: str
    parts: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        payload = json.dumps(
            {
                "schema": SCHEMA_VERSION,
                "kind": self.kind,
                "parts": dict(sorted(self.parts.items())),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "parts": dict(self.parts)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeyDetails:
        data = json.loads(text)
        return cls(data["kind"], data["parts"])

    def differences(self, other: KeyDetails) -> list[str]:
        """Names of the parts whose values differ (or exist on one side only)."""
        names = set(self.parts) | set(other.parts)
        return sorted(n for n in names if self.parts.get(n) != other.parts.get(n))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def environment_parts(target_description: str) -> dict[str, str]:
    """Versions, machine and target facts that change generated code."""
    return {
        "torch": torch.__version__,
        "tvm": _version("apache-tvm"),
        "tvm_ffi": _version("apache-tvm-ffi"),
        "torch_rc": _version("torch_rc"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "target": target_description,
        "policy": POLICY_VERSION,
    }


def _digest(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _input_part(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return (
            f"tensor{tuple(value.shape)}:{value.stride()}:{value.dtype}:{value.device.type}"
            f":grad={value.requires_grad}"
        )
    return f"{type(value).__name__}={value!r}"


def _constants_part(gm: torch.fx.GraphModule) -> str:
    """Values baked into the graph (get_attr tensors are constants, not inputs)."""
    digests = []
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = getattr(gm, str(node.target), None)
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous()
            digests.append(f"{node.target}:{_digest(data.view(torch.uint8).numpy().tobytes())}")
        else:
            digests.append(f"{node.target}:{value!r}")
    return _digest("\n".join(digests))


def artifact_key(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[object],
    options: Mapping[str, Any],
    target_description: str,
    tuning_records: Sequence[str] = (),
) -> KeyDetails:
    """Key of a whole compiled Dynamo graph.

    Parts: the graph's code (ops, attributes, structure), its input specs (shapes, strides,
    dtypes, devices, requires_grad), baked-in constants, grad mode, every option, versions,
    target, and ``tuning_records`` when a caller names them (the backend does not: a compile
    that tunes replaces the artifact instead; see README "The persistent cache"). Parameter values are graph inputs, not part of the code, so retrained weights of
    the same architecture hit the same artifact (the kernels take weights as arguments).
    """
    parts = environment_parts(target_description)
    parts.update(
        {
            "graph": _digest(gm.code),
            "inputs": _digest("\n".join(_input_part(v) for v in example_inputs)),
            "constants": _constants_part(gm),
            "grad_enabled": str(torch.is_grad_enabled()),
            "options": json.dumps(dict(options), sort_keys=True, default=str),
            "tuning_records": ",".join(sorted(tuning_records)) or "none",
        }
    )
    return KeyDetails("artifact", parts)


def workload_key(prim_func: Any) -> str:
    """Structural hash of a TIR function: independent of its name and variable names.

    The ``global_symbol`` attribute carries the name, so it is dropped before hashing.
    """
    import tvm_ffi

    if hasattr(prim_func, "without_attr") and "global_symbol" in (prim_func.attrs or {}):
        prim_func = prim_func.without_attr("global_symbol")
    return f"{tvm_ffi.structural_hash(prim_func, map_free_vars=True) & (2**64 - 1):016x}"
