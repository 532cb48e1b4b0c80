"""ONNX models: onnxruntime (CPU, same thread count) against torch_rc's TVM build of the same file,
at tuning budgets, timed in interleaved rounds in one process.

Each model of the test suite's model set is exported with ``torch.onnx.export(..., dynamo=True)``
(the exporter an ONNX user of PyTorch has), loaded with ``torch_rc.load_onnx`` with
``select="tvm"`` (so TVM's own latency is timed even where it loses), and timed against an
onnxruntime session on the same inputs. The "choice" column is what ``load_onnx`` picks by
default (it keeps TVM only when it is correct and faster). Every TVM build is checked against
onnxruntime before it is timed (the max error column).

    .venv/bin/python benchmarks/onnx_vs_ort.py                          # all models, budget 0
    .venv/bin/python benchmarks/onnx_vs_ort.py --models mlp,bert --budgets 0,64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.e2e import MODELS, interleaved  # noqa: E402
from torch_rc.onnx_model import load_onnx  # noqa: E402


def export(name: str, directory: Path) -> tuple[Path, list[torch.Tensor]]:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    path = directory / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(model.eval(), tuple(inputs), dynamo=True, verbose=False).save(str(path))
    return path, [x.contiguous() for x in inputs]


def bench(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    path, inputs = export(name, directory)
    row: dict[str, Any] = {"model": name}
    fns = {}
    for budget in args.budgets:
        options = {
            "select": "tvm",
            "trials": budget,
            "progress": False,
            "cache_dir": str(directory / f"cache-{name}"),
        }
        start = time.monotonic()
        loaded = load_onnx(path, inputs, options=options)
        row[f"load_s@{budget}"] = round(time.monotonic() - start, 1)
        report = loaded.report
        if report.runs_on != "tvm":
            row[f"tvm@{budget}"] = None
            row["note"] = report.reason
            continue
        row[f"max_error@{budget}"] = report.max_abs_error
        fns[f"tvm@{budget}"] = loaded
        if "onnxruntime" not in fns:
            fns["onnxruntime"] = lambda *a, m=loaded: m.run_onnxruntime(*a)
    default = load_onnx(path, inputs, options={"cache_dir": str(directory / f"cache-{name}")})
    row["choice"] = default.report.runs_on
    if fns:
        times = interleaved(fns, inputs, args.rounds, args.block_s)
        for label, samples in times.items():
            row[label] = statistics.median(samples)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models",
        default="mlp,cnn_bn,residual,depthwise,encoder_layer,gpt2,bert,llama,vit,t5_encoder",
    )
    parser.add_argument(
        "--budgets", default="0", help="torch_rc tuning budgets (trials), e.g. 0,64"
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block-s", type=float, default=0.05)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    logging.getLogger("torch_rc").setLevel(logging.ERROR)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}; {args.rounds} interleaved rounds",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx_vs_ort_") as tmp:
        for name in args.models.split(","):
            try:
                row = bench(name, args, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a model the exporter or TVM cannot take
                row = {"model": name, "note": f"{type(exc).__name__}: {str(exc)[:120]}"}
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
    labels = [f"tvm@{b}" for b in args.budgets]
    header = (
        f"{'model':<16}{'onnxruntime ms':>16}"
        + "".join(f"{label + ' ms':>14}{'x ort':>8}" for label in labels)
        + f"{'choice':>14}"
    )
    print("\n" + header)
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for row in rows:
        ort_ms = row.get("onnxruntime")
        line = f"{row['model']:<16}{(f'{ort_ms:.3f}' if ort_ms else '-'):>16}"
        for label in labels:
            ms = row.get(label)
            if ms and ort_ms:
                ratios[label].append(ort_ms / ms)
                line += f"{ms:>14.3f}{ort_ms / ms:>7.2f}x"
            else:
                line += f"{'-':>14}{'-':>8}"
        line += f"{row.get('choice', '-'):>14}"
        print(line + (f"  ({row['note']})" if row.get("note") else ""))
    summary = "geomean x onnxruntime: " + ", ".join(
        f"{label} {math.exp(np.mean(np.log(v))):.2f}x over {len(v)}"
        for label, v in ratios.items()
        if v
    )
    print(summary)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "summary": summary}, indent=1, default=float)
        )


if __name__ == "__main__":
    main()
