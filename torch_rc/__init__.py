"""torch_rc: a tuning compiler backend for PyTorch serving, through Apache TVM Relax.

Use it with ``torch.compile(model, backend="reasoning")``; no import of this package is needed,
torch finds the backend through the ``torch_dynamo_backends`` entry point.
"""

from torch_rc.api import TuneReport, tune, tune_tir
from torch_rc.errors import (
    BuildError,
    InputMismatchError,
    LoweringError,
    OptionsError,
    TorchRCError,
    TVMVersionError,
    UnsupportedOpError,
    VerificationError,
)
from torch_rc.explain import CoverageReport, explain
from torch_rc.onnx_model import OnnxModel, load_onnx
from torch_rc.options import Options

__version__ = "0.1.0"

__all__ = [
    "Options",
    "explain",
    "load_onnx",
    "OnnxModel",
    "tune",
    "tune_tir",
    "TuneReport",
    "CoverageReport",
    "TorchRCError",
    "OptionsError",
    "UnsupportedOpError",
    "LoweringError",
    "BuildError",
    "VerificationError",
    "InputMismatchError",
    "TVMVersionError",
    "__version__",
]
