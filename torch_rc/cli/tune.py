"""``torch-rc tune``: tune a model's (or a TVMScript file's) kernels into the cache."""

from __future__ import annotations

import json
import sys
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
    wide_console,
)
from torch_rc.cli.inputs import (
    check_runs,
    load_any_model,
    onnx_file,
    parse_input,
)


@main.command()
@click.argument("model", required=False)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="SHAPE[:DTYPE]",
    help="An example input, e.g. 32x256 or 1x128:int64 (repeat per input).",
)
@click.option(
    "--tir",
    type=click.Path(exists=True, dir_okay=False),
    help="Tune one TIR workload instead: a TVMScript file defining an IRModule with a main PrimFunc.",
)
@click.option(
    "--trials",
    default=64,
    show_default=True,
    help="Real measurements to spend (split over the kernels by FLOPs).",
)
@click.option(
    "--time-limit", default=0.0, help="Wall-clock limit of all tuning, seconds (0: trials only)."
)
@click.option(
    "--method", type=click.Choice(["mcts", "evolutionary"]), default="mcts", show_default=True
)
@LLM_URL
@LLM_MODEL
@click.option(
    "--llm-mode",
    type=click.Choice(["values", "mutators"]),
    default="values",
    show_default=True,
    help="values: the LLM chooses concrete tile sizes etc.; mutators: only mutator types.",
)
@click.option("--seed", default=0, show_default=True)
@DEVICE
@CACHE_DIR
@CACHE_URL
@click.option("--no-progress", is_flag=True, help="No progress display.")
@fleet_flags
@clear_errors
def tune(
    model: str | None,
    inputs: tuple[str, ...],
    tir: str | None,
    trials: int,
    time_limit: float,
    method: str,
    llm_url: str,
    llm_model: str,
    llm_mode: str,
    seed: int,
    device: str,
    cache_dir: str | None,
    cache_url: str | None,
    no_progress: bool,
    fleet: dict[str, Any],
) -> None:
    """Tune MODEL (package.module:factory or an ExportedProgram .pt2, with --input per example
    input; or an ONNX file, .onnx, whose static shapes need no --input) or one TIR workload
    (--tir FILE), and store verified schedules in the cache for every later compile.

    \b
    Examples:
      torch-rc tune mymodels:build_mlp --input 32x256 --trials 128
      torch-rc tune mymodels:bert --input 1x128:int64 --llm-url http://127.0.0.1:8080/v1 --llm-model gemma-3-270m
      torch-rc tune model.onnx --input 1x3x224x224 --trials 64
      torch-rc tune --tir matmul.py --trials 64 --method evolutionary
      torch-rc tune mymodels:build_mlp --input 256x1024 --device cuda --trials 256
      torch-rc tune mymodels:build_mlp --input 32x256 --rpc-tracker 10.0.0.5:9190 --rpc-key epyc

    Ctrl-C stops tuning and keeps what was tuned. Then: torch-rc report.
    """
    options: dict[str, Any] = {
        "tune_method": method,
        "tune_seed": seed,
        "progress": not no_progress,
        "llm_mode": llm_mode,
    }
    options.update(
        location_options(
            cache_dir=cache_dir, cache_url=cache_url, llm_url=llm_url, llm_model=llm_model
        )
    )
    options.update(fleet)
    if trials < 1:
        raise click.BadParameter("must be >= 1", param_hint="--trials")
    from torch_rc.options import Options, with_budget

    Options.resolve(options)  # bad options (flags or TORCH_RC_*) fail before any work
    import torch_rc

    if tir:
        if model:
            raise click.UsageError("give MODEL or --tir, not both")
        from torch_rc.platform.tvm_shim import tvm_api

        try:
            mod = tvm_api().tvm.script.from_source(open(tir).read())
        except Exception as exc:  # a parse error: TVM's whole diagnostic, naming the file
            diagnostic = "\n".join(str(exc).strip().splitlines()[:30])
            raise click.BadParameter(
                f"{tir}: not a TVMScript IRModule ({type(exc).__name__}); expected TVM 0.27's "
                "dialect (T.sblock, @T.prim_func(s_tir=True); see examples/tir/matmul_relu.py):\n"
                f"{diagnostic}",
                param_hint="--tir",
            ) from None
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            raise click.BadParameter(
                f"{tir}: the IRModule has no 'main' PrimFunc", param_hint="--tir"
            )
        place(None, [], device)  # validates --device
        runs = [
            torch_rc.tune_tir(
                mod,
                options=with_budget(options, trials=trials, time_limit_s=time_limit),
                device=device,
            )
        ]
    elif onnx_file(model):
        if device != "cpu":
            raise click.BadParameter("ONNX models compile for the CPU", param_hint="--device")
        examples = [parse_input(i) for i in inputs] or None
        loaded = torch_rc.load_onnx(
            model,
            examples,
            options={
                **with_budget(options, trials=trials, time_limit_s=time_limit),
                "tune": "auto",
            },
        )
        console.print(loaded.report.describe())
        runs = [loaded.report.tuning] if loaded.report.tuning is not None else []
    else:
        if not model:
            raise click.UsageError("give MODEL (package.module:factory) or --tir FILE; see --help")
        if not inputs:
            raise click.UsageError("give at least one --input SHAPE[:DTYPE] for MODEL")
        examples = [parse_input(i) for i in inputs]
        placed, examples = place(load_any_model(model), examples, device)
        check_runs(placed, examples, "--input")
        report = torch_rc.tune(
            placed, examples, options=with_budget(options, trials=trials, time_limit_s=time_limit)
        )
        runs = report.runs
        if report.max_abs_error is not None:
            console.print(f"compiled model vs eager: max abs error {report.max_abs_error:.2e}")
        for line in report.what_runs():
            console.print(line)
    from torch_rc.tuning.report import print_run

    for run in runs:
        if run.log_path:
            print_run(json.loads(open(run.log_path).read()), wide_console, steps=3)
            console.print(f"run log: {run.log_path}")
        else:
            console.print(
                "nothing to tune: every kernel is already tuned in the cache, or too small to tune"
            )
    if any(run.interrupted for run in runs):
        console.print("[yellow]tuning was interrupted; what was tuned is stored[/]")
        sys.exit(130)
