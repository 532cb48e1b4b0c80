"""Exception hierarchy for torch_rc.

Every error the package raises on purpose derives from :class:`TorchRCError`, so a caller can
catch the whole family with one clause and still tell the stages apart.
"""

from __future__ import annotations

__all__ = [
    "TorchRCError",
    "OptionsError",
    "UnsupportedOpError",
    "LoweringError",
    "BuildError",
    "VerificationError",
    "InputMismatchError",
    "TVMVersionError",
    "TuningError",
    "CacheError",
]


class TorchRCError(RuntimeError):
    """Base class for every error raised by torch_rc."""


class OptionsError(TorchRCError, ValueError):
    """An option key or value is invalid (the message names the option)."""


class UnsupportedOpError(TorchRCError):
    """An operator cannot run on TVM (raised only with ``strict=True``)."""


class LoweringError(TorchRCError):
    """Converting an FX partition to a Relax module failed."""


class BuildError(TorchRCError):
    """Compiling a Relax module to an executable failed."""


class VerificationError(TorchRCError):
    """A TVM result did not match the PyTorch reference within tolerance."""


class InputMismatchError(TorchRCError, ValueError):
    """A compiled callable got an input of another shape or dtype than it was built for."""


class TVMVersionError(TorchRCError, ImportError):
    """The installed TVM or tvm-ffi is not a version this torch_rc supports."""


class TuningError(TorchRCError):
    """Schedule tuning failed as a whole (single failed candidates are values, not errors)."""


class CacheError(TorchRCError):
    """The persistent cache could not be used."""
