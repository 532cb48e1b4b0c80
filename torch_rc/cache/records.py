"""Records that cross the store's interface: tuning records, their correctness checks, artifacts."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Check", "TuningRecord", "ArtifactEntry"]


@dataclass(frozen=True)
class Check:
    """The correctness check a result passed before it was stored.

    Attributes:
        reference: What it was compared with (``"pytorch"`` or ``"untuned-kernel"``).
        rtol: Relative tolerance used.
        atol: Absolute tolerance used.
        max_abs_error: Largest absolute difference seen.
        passed: The verdict of ``torch.testing.assert_close(result, reference, rtol, atol)``.
        inputs: How the inputs were made (``"random normal, seed 0"``).
    """

    reference: str
    rtol: float
    atol: float
    max_abs_error: float
    passed: bool
    inputs: str = "random"


@dataclass(frozen=True)
class TuningRecord:
    """The best schedule found for one workload on one target, and how it was found.

    Only typed fields are stored (no free-form provenance), so no API key or prompt can leak into
    the store. ``samples`` counts real measurements. An imported record (``imported_from``) was
    verified where it was made, not here: it never evicts a record this machine verified.
    """

    workload_key: str
    target_key: str
    trace: str
    latency_s: float
    check: Check
    latency_std_s: float = 0.0
    repeats: int = 1
    samples: int = 0
    workload: str = ""
    method: str = ""
    proposer: str = ""
    models: tuple[str, ...] = ()
    tokens: int = 0
    tvm_version: str = ""
    torch_rc_version: str = ""
    imported_from: str = ""  # "" when this machine verified it; "bundle" when imported
    created: float = field(default_factory=time.time)
    id: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["models"] = list(self.models)
        data.pop("id")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, **overrides: Any) -> TuningRecord:
        data = json.loads(text)
        data["check"] = Check(**data["check"])
        data["models"] = tuple(data.get("models", ()))
        data.update(overrides)
        return cls(**data)


@dataclass(frozen=True)
class ArtifactEntry:
    """A compiled-graph artifact as listed by the store (payload not loaded)."""

    key: str
    parts: dict[str, str]
    size: int
    created: float
    last_used: float
    hits: int
    decisions: dict[str, str]
