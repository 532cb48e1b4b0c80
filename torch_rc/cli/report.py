"""``torch-rc report``: a tuning run's table, path and curves."""

from __future__ import annotations

import click

from torch_rc.cli.app import main
from torch_rc.cli.common import (
    CACHE_DIR,
    clear_errors,
    console,
    wide_console,
)


@main.command()
@click.argument("run_log", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--out", "out", default=None, help="PNG of best latency vs samples (default: next to the log)."
)
@click.option("--steps", default=8, show_default=True, help="Transformations shown per kernel.")
@CACHE_DIR
@clear_errors
def report(run_log: str | None, out: str | None, steps: int, cache_dir: str | None) -> None:
    """Show a tuning run: per-kernel results, the chosen transformations with the proposer's
    rationale, LLM accounting, and a PNG of best latency vs measured samples.
    RUN_LOG defaults to the latest run in the cache directory."""
    from pathlib import Path

    from torch_rc.options import Options
    from torch_rc.tuning.report import latest_run, load_run, plot_run, print_run
    from torch_rc.tuning.session import runs_dir

    if run_log is None:
        directory = runs_dir(Options.resolve({"cache_dir": cache_dir} if cache_dir else {}))
        found = latest_run(directory)
        if found is None:
            raise click.ClickException(f"no tuning runs in {directory}; run torch-rc tune first")
        path = found
    else:
        path = Path(run_log)
    try:
        run = load_run(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_run(run, wide_console, steps=steps)
    png = Path(out) if out else path.with_suffix(".png")
    if plot_run(run, png):
        console.print(f"curves: {png}")
