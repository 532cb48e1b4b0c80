"""``torch-rc warmup``: compile and tune a model at the shapes it will serve, into a bundle."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from torch_rc.cli.app import main
from torch_rc.cli.common import (
    CACHE_DIR,
    CACHE_URL,
    DEVICE,
    LLM_MODEL,
    LLM_URL,
    clear_errors,
    console,
    fleet_flags,
    location_options,
    place,
)
from torch_rc.cli.inputs import (
    check_runs,
    load_any_model,
    onnx_file,
    parse_bucket,
    parse_input,
)


@main.command()
@click.argument("model")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="SHAPE[:DTYPE]",
    help="An example input (fixes dtypes), e.g. 1x128:int64; repeat per input.",
)
@click.option(
    "--bucket",
    "buckets",
    multiple=True,
    metavar="SHAPES",
    help="A shape bucket to warm, e.g. 4x128 (comma-separated per input); repeat. Default: the --input shapes.",
)
@click.option(
    "--batch-sizes",
    default="",
    help="Shorthand: warm every bucket with each of these batch sizes (dim 0 of every input), e.g. 1,2,4,8,16.",
)
@click.option(
    "--trials",
    default=0,
    show_default=True,
    help="Tuning budget per graph (0: default schedules and stored records only).",
)
@click.option("--time-limit", default=0.0, help="Wall-clock limit of all tuning, seconds.")
@LLM_URL
@LLM_MODEL
@DEVICE
@click.option(
    "--bundle",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the cache to this bundle (ship it to replicas).",
)
@CACHE_DIR
@CACHE_URL
@fleet_flags
@clear_errors
def warmup(
    model: str,
    inputs: tuple[str, ...],
    buckets: tuple[str, ...],
    batch_sizes: str,
    trials: int,
    time_limit: float,
    llm_url: str,
    llm_model: str,
    device: str,
    bundle: str | None,
    cache_dir: str | None,
    cache_url: str | None,
    fleet: dict[str, Any],
) -> None:
    """Compile (and with --trials tune) MODEL for every shape bucket, fill the cache, and
    optionally write a bundle that serving replicas load with zero tuning.

    MODEL is package.module:factory, an ExportedProgram file (.pt2) or an ONNX file (.onnx;
    checked against onnxruntime, its tuned records go to the cache and the bundle).

    \b
    Example:
      torch-rc warmup examples.serving.model:build_model --input 1x16:int64 \\
          --bucket 1x16 --bucket 1x32 --batch-sizes 1,2,4 --trials 64 --bundle model.trc
    """
    from torch_rc.serving import warmup as run_warmup

    examples = [parse_input(i) for i in inputs]
    shapes = [parse_bucket(b) for b in buckets] or [[tuple(x.shape) for x in examples]]
    if batch_sizes:
        try:
            sizes = [int(b) for b in batch_sizes.split(",") if b]
        except ValueError:
            raise click.BadParameter(
                f"{batch_sizes!r} is not a list of integers", param_hint="--batch-sizes"
            ) from None
        shapes = [[(n, *s[1:]) for s in bucket] for bucket in shapes for n in sizes]
    for bucket in shapes:
        if len(bucket) != len(examples):
            raise click.BadParameter(
                f"bucket {bucket} has {len(bucket)} shapes for {len(examples)} inputs",
                param_hint="--bucket",
            )
    options = location_options(
        cache_dir=cache_dir, cache_url=cache_url, llm_url=llm_url, llm_model=llm_model
    )
    options.update(fleet)
    from torch_rc.options import Options

    Options.resolve(options)  # bad options (flags or TORCH_RC_*) fail before any work
    if onnx_file(model):
        _warmup_onnx(model, examples, shapes, options, trials, time_limit, device, bundle)
        return
    loaded, examples = place(load_any_model(model), examples, device)
    from torch_rc.serving import inputs_like

    for bucket in shapes:
        try:
            check_runs(loaded, inputs_like(examples, bucket), "bucket")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bucket") from None

    started = time.monotonic()

    def progress(done: int, total: int, result: Any) -> None:
        error = "-" if result.max_abs_error is None else f"{result.max_abs_error:.1e}"
        elapsed = time.monotonic() - started
        eta = f", eta {elapsed / done * (total - done):.0f} s" if done < total else ""
        console.print(
            f"[{done}/{total}{eta}] bucket {[list(s) for s in result.shapes]}: {result.graphs} "
            f"graphs, {result.compile_s:.1f} s, {result.samples} tuning samples, max abs error vs "
            f"eager {error}; {result.runs}"
        )

    report = run_warmup(
        loaded,
        examples,
        shapes=shapes,
        trials=trials,
        time_limit_s=time_limit,
        options=options,
        bundle=bundle,
        progress=progress,
    )
    bad = [r for r in report.buckets if r.mismatch]
    for r in bad:
        console.print(f"[red]does not match eager[/]: {r.mismatch}")
    if report.bundle:
        console.print(f"bundle: {report.bundle}")
    console.print(f"warmed {len(report.buckets)} buckets in {report.seconds:.1f} s")
    if bad:
        raise click.ClickException(
            f"{len(bad)} bucket(s) differ from eager beyond the dtype's tolerance; see above"
        )
    if report.interrupted:
        console.print("[yellow]interrupted; what was warmed is in the cache[/]")
        sys.exit(130)


def _warmup_onnx(
    model: str,
    examples: list[Any],
    shapes: list[list[tuple[int, ...]]],
    options: dict[str, Any],
    trials: int,
    time_limit: float,
    device: str,
    bundle: str | None,
) -> None:
    from torch_rc.onnx_model import warmup_onnx
    from torch_rc.options import with_budget
    from torch_rc.serving import inputs_like

    if device != "cpu":
        raise click.BadParameter("ONNX models compile for the CPU", param_hint="--device")
    if not examples:
        raise click.UsageError("give --input SHAPE[:DTYPE] for each input of the ONNX model")
    buckets = [inputs_like(examples, bucket, seed=i) for i, bucket in enumerate(shapes)]
    merged = {**with_budget(options, trials=trials, time_limit_s=time_limit), "tune": "auto"}
    for report in warmup_onnx(model, buckets, options=merged, bundle=bundle):
        console.print(f"{[list(s) for _, s, _ in report.inputs]}: {report.describe()}")
    if bundle:
        console.print(f"bundle: {bundle}")
