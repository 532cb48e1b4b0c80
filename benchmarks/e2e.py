"""End-to-end benchmark: eager vs Inductor vs reasoning, in one process.

For each model: median latency (ms) of each, first-call time (compile + first run, s), the
fraction of ATen ops lowered to / executed on TVM, and what the reasoning backend chose.
torch_rc's cache goes to a fresh temporary directory, so its first-call times are cold; Inductor
uses its own on-disk cache as configured (see benchmarks/warm_start.py for cold vs warm).
This machine is shared and noisy: read the ratios, and rerun for medians across runs.

    .venv/bin/python benchmarks/e2e.py [--models mlp,bert] [--runs 30] [--json out.json]
    python benchmarks/e2e.py --device cuda      # on a GPU machine (benchmarks/gpu_check.py)

On a GPU every timed run is bracketed by torch.cuda.synchronize(), so times are the work, not
the launch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch_rc  # noqa: E402
from tests.backends import models as zoo  # noqa: E402  (the same public model set the tests use)

MODELS = {f.__name__: f for f in zoo.SMALL_MODELS + zoo.TRANSFORMERS}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn, inputs, runs: int) -> float:
    for _ in range(3):
        fn(*inputs)
    times = []
    for _ in range(runs):
        _sync()
        start = time.perf_counter()
        fn(*inputs)
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def max_error(got, want) -> float:
    from torch_rc.testing import flatten_outputs

    pairs = zip(flatten_outputs(got), flatten_outputs(want), strict=False)
    return max(
        (float((g.double() - w.double()).abs().max()) for g, w in pairs if w.numel()), default=0.0
    )


def first_call(backend: str, model, inputs, **kwargs):
    torch._dynamo.reset()
    _sync()
    start = time.perf_counter()
    compiled = torch.compile(model, backend=backend, **kwargs)
    compiled(*inputs)
    _sync()
    return compiled, time.perf_counter() - start


def bench(name: str, runs: int, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model = model.to(device)
    inputs = [x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs]
    row: dict = {"model": name, "device": device}
    with torch.no_grad():
        want = model(*inputs)
        row["eager_ms"] = median_ms(model, inputs, runs)
        inductor, row["inductor_first_s"] = first_call("inductor", model, inputs)
        row["inductor_ms"] = median_ms(inductor, inputs, runs)
        reasoning, row["reasoning_first_s"] = first_call("reasoning", model, inputs)
        row["reasoning_ms"] = median_ms(reasoning, inputs, runs)
        row["reasoning_max_error"] = max_error(reasoning(*inputs), want)
        torch._dynamo.reset()
        report = torch_rc.explain(model, *inputs, print_report=False)
    row["lowered"] = report.lowered_fraction
    row["executed"] = report.executed_fraction
    row["choice"] = "; ".join(f"{g.choice}: {g.choice_reason}" for g in report.graphs)
    return row


def main() -> None:
    os.environ["TORCH_RC_CACHE_DIR"] = tempfile.mkdtemp(prefix="e2e_torch_rc_cache_")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--runs", type=int, default=30, help="timed runs per backend (median reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
        + (f", GPU {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    header = f"{'model':14} {'eager':>8} {'inductor':>9} {'reasoning':>10} {'r/eager':>8} {'ind 1st':>8} {'rc 1st':>7} {'lowered':>8} {'on TVM':>7}  choice"
    print(header)
    rows = []
    for name in names:
        row = bench(name, args.runs, args.device)
        rows.append(row)
        print(
            f"{name:14} {row['eager_ms']:8.3f} {row['inductor_ms']:9.3f} {row['reasoning_ms']:10.3f} "
            f"{row['eager_ms'] / row['reasoning_ms']:7.2f}x {row['inductor_first_s']:7.1f}s {row['reasoning_first_s']:6.1f}s "
            f"{row['lowered']:8.0%} {row['executed']:7.0%}  {row['choice']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
