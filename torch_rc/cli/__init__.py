"""The ``torch-rc`` command: a click group (:mod:`.app`) and one module per command family.

Errors the user can act on (a bad bundle, an unusable cache location) print one clear line and
exit non-zero; they never end in a bare traceback.

Commands import torch_rc's packages inside their bodies on purpose: ``torch-rc --help`` and
``torch-rc keys`` answer without importing torch or TVM (seconds).
"""

from torch_rc.cli import cache, keys, report, tune, warmup  # noqa: F401  (registers the commands)
from torch_rc.cli.app import main

__all__ = ["main"]
