"""The ``torch-rc`` command group; the commands live in the modules beside this one."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torch_rc")
def main() -> None:
    """torch_rc: a tuning compiler backend for PyTorch serving.

    Use it from Python with torch.compile(model, backend="reasoning"); this command manages
    what it stores.
    """
