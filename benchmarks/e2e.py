"""End-to-end benchmark: eager vs Inductor vs reasoning (at tuning budgets), interleaved, in one
process per repeat.

For each model, every backend is compiled and called once (its first-call time is recorded, and
for reasoning its tuning time), then all are timed in **interleaved rounds**: each round times a
block of calls of every backend in turn (the order rotates), so a slow period of this shared
machine hits all backends alike. A backend's latency is the median of its per-round medians;
ratios are taken within the run. ``--repeats`` runs everything again with fresh caches (and fresh
Dynamo state); the table shows the median over repeats and the spread.

``--busy-during-compile`` starts busy-loop processes (one per core) while reasoning compiles and
makes its first-call decisions, and stops them before timing: the first-call choices are then
made on a noisy machine and must still not leave a model slower than eager.

    .venv/bin/python benchmarks/e2e.py                                  # the model set, budget 0
    .venv/bin/python benchmarks/e2e.py --models bert,llama_decode_b1 --budgets 0,64 --repeats 3
    .venv/bin/python benchmarks/e2e.py --busy-during-compile --json out.json --png out.png
    .venv/bin/python benchmarks/e2e.py --inductor-max-autotune          # adds that column
    python benchmarks/e2e.py --device cuda                              # on a GPU machine

Budgets are torch_rc's ``trials`` (real measurements for the whole model). On a GPU every timed
call is bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch_rc  # noqa: E402
from tests.backends import models as zoo  # noqa: E402  (the same public model set the tests use)
from torch_rc.testing import flatten_outputs  # noqa: E402

MODELS = {f.__name__: f for f in zoo.SMALL_MODELS + zoo.TRANSFORMERS + zoo.DECODERS}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def max_error(got: Any, want: Any) -> float:
    pairs = zip(flatten_outputs(got), flatten_outputs(want), strict=False)
    return max(
        (float((g.double() - w.double()).abs().max()) for g, w in pairs if w.numel()), default=0.0
    )


@contextlib.contextmanager
def busy_machine(enabled: bool) -> Iterator[None]:
    """One busy-loop process per core while the block runs (then they are killed)."""
    procs = []
    if enabled:
        for _ in range(os.cpu_count() or 1):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.5)
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def first_call(backend: Any, model: Any, inputs: list[Any], **kwargs: Any) -> tuple[Any, float]:
    _sync()
    start = time.perf_counter()
    compiled = torch.compile(model, backend=backend, **kwargs)
    compiled(*inputs)
    _sync()
    return compiled, time.perf_counter() - start


def block_ms(fn: Callable[..., Any], inputs: list[Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        _sync()
        start = time.perf_counter()
        fn(*inputs)
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved(
    fns: dict[str, Callable[..., Any]], inputs: list[Any], rounds: int, block_s: float
) -> dict[str, list[float]]:
    """Per backend, the median of each round's block of calls (backends take turns)."""
    for fn in fns.values():  # warm up
        for _ in range(3):
            fn(*inputs)
    calls = {}
    for name, fn in fns.items():  # calls per block: about block_s of work
        one = block_ms(fn, inputs, 3) / 1e3
        calls[name] = max(3, min(200, int(block_s / max(one, 1e-6))))
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(block_ms(fns[name], inputs, calls[name]))
    return out


def decisions(compiled: Any) -> str:
    report = torch_rc.explain(compiled, print_report=False)
    parts = []
    for graph in report.graphs:
        state = graph.decision.state if graph.decision else "pending"
        on_tvm = sum(p.status == "tvm" for p in graph.partitions)
        parts.append(f"{graph.choice}/{state} ({on_tvm}/{len(graph.partitions)} parts on TVM)")
    return "; ".join(parts)


def bench(name: str, args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model = model.to(args.device)
    inputs = [x.to(args.device) if isinstance(x, torch.Tensor) else x for x in inputs]
    row: dict[str, Any] = {"model": name, "device": args.device}
    fns: dict[str, Callable[..., Any]] = {"eager": model}
    with torch.no_grad():
        want = model(*inputs)
        torch._dynamo.reset()
        fns["inductor"], row["first_s:inductor"] = first_call("inductor", model, inputs)
        if args.inductor_max_autotune:
            torch._dynamo.reset()
            fns["inductor-max"], row["first_s:inductor-max"] = first_call(
                "inductor", model, inputs, mode="max-autotune"
            )
        for budget in args.budgets:
            label = f"reasoning@{budget}"
            options = {"cache_dir": os.path.join(cache_dir, label), "progress": False}
            if budget:
                options["trials"] = budget
            torch._dynamo.reset()
            with busy_machine(args.busy_during_compile):
                fns[label], row[f"first_s:{label}"] = first_call(
                    "reasoning", model, inputs, options=options
                )
            row[f"error:{label}"] = max_error(fns[label](*inputs), want)
            row[f"decisions:{label}"] = decisions(fns[label])
        times = interleaved(fns, inputs, args.rounds, args.block_s)
    for backend, blocks in times.items():
        row[f"ms:{backend}"] = statistics.median(blocks)
        row[f"spread:{backend}"] = (max(blocks) - min(blocks)) / statistics.median(blocks)
    return row


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def summarise(runs: list[list[dict[str, Any]]], backends: list[str]) -> list[dict[str, Any]]:
    """Median over repeats of each model's latencies and ratios."""
    out = []
    for index, first in enumerate(runs[0]):
        rows = [run[index] for run in runs]
        merged: dict[str, Any] = {"model": first["model"], "repeats": len(rows)}
        for backend in backends:
            merged[f"ms:{backend}"] = statistics.median(r[f"ms:{backend}"] for r in rows)
            merged[f"vs_eager:{backend}"] = statistics.median(
                r["ms:eager"] / r[f"ms:{backend}"] for r in rows
            )
            merged[f"vs_eager_min:{backend}"] = min(
                r["ms:eager"] / r[f"ms:{backend}"] for r in rows
            )
            if "ms:inductor" in first:
                merged[f"vs_inductor:{backend}"] = statistics.median(
                    r["ms:inductor"] / r[f"ms:{backend}"] for r in rows
                )
        for key in first:
            if key.startswith(("first_s:", "error:")):
                merged[key] = statistics.median(r[key] for r in rows)
            if key.startswith("decisions:"):
                merged[key] = " | ".join(r[key] for r in rows)
        out.append(merged)
    return out


def print_table(rows: list[dict[str, Any]], backends: list[str]) -> None:
    reasoning = [b for b in backends if b.startswith("reasoning")]
    header = f"{'model':16} {'eager ms':>9}" + "".join(
        f" {b + ' ms':>16} {'x eager':>8}" for b in backends if b != "eager"
    )
    header += "".join(f" {r + ' x ind':>18}" for r in reasoning)
    print(header)
    for row in rows:
        line = f"{row['model']:16} {row['ms:eager']:9.3f}"
        for b in backends:
            if b != "eager":
                line += f" {row[f'ms:{b}']:16.3f} {row[f'vs_eager:{b}']:7.2f}x"
        for r in reasoning:
            line += f" {row[f'vs_inductor:{r}']:17.2f}x"
        print(line)
    print(f"{'geomean':16} {'':9}", end="")
    for b in backends:
        if b != "eager":
            print(f" {'':16} {geomean([r[f'vs_eager:{b}'] for r in rows]):7.2f}x", end="")
    for r in reasoning:
        print(f" {geomean([row[f'vs_inductor:{r}'] for row in rows]):17.2f}x", end="")
    print()
    for r in reasoning:
        worst = min(rows, key=lambda row: row[f"vs_eager_min:{r}"])
        print(
            f"{r}: slowest vs eager in any repeat: {worst['model']} at "
            f"{worst[f'vs_eager_min:{r}']:.2f}x; first-call s (median): "
            + ", ".join(f"{row['model']} {row[f'first_s:{r}']:.1f}" for row in rows)
        )
        for row in rows:
            print(f"  {row['model']}: {row[f'decisions:{r}']}")


def plot(rows: list[dict[str, Any]], backends: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [b for b in backends if b != "eager"]
    width = 0.8 / len(others)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
    for i, backend in enumerate(others):
        xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r[f"vs_eager:{backend}"] for r in rows], width, label=backend)
    ax.axhline(1.0, color="black", linewidth=0.8, label="eager")
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("speed-up over eager (median of repeats)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default=",".join(f.__name__ for f in zoo.SMALL_MODELS + zoo.TRANSFORMERS),
        help="comma-separated subset of: " + ", ".join(MODELS),
    )
    parser.add_argument(
        "--budgets", default="0", help="reasoning tuning budgets (trials), e.g. 0,64"
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--block-s", type=float, default=0.02, help="seconds of calls per block")
    parser.add_argument("--repeats", type=int, default=1, help="whole runs with fresh caches")
    parser.add_argument("--busy-during-compile", action="store_true")
    parser.add_argument("--inductor-max-autotune", action="store_true")
    parser.add_argument("--json", type=Path, help="write the per-repeat rows and summary here")
    parser.add_argument("--png", type=Path, help="write a bar chart of speed-ups here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    backends = ["eager", "inductor"] + (["inductor-max"] if args.inductor_max_autotune else [])
    backends += [f"reasoning@{b}" for b in args.budgets]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; {args.rounds} interleaved rounds, "
        f"{args.repeats} repeat(s){', busy machine during compile' if args.busy_during_compile else ''}",
        flush=True,
    )
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="e2e_torch_rc_cache_") as cache_dir:
            rows = []
            for name in names:
                row = bench(name, args, cache_dir)
                rows.append(row)
                print(
                    f"[repeat {repeat + 1}] {name}: "
                    + ", ".join(f"{b} {row[f'ms:{b}']:.3f} ms" for b in backends),
                    flush=True,
                )
            runs.append(rows)
    summary = summarise(runs, backends)
    print()
    print_table(summary, backends)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    if args.png:
        title = f"eager vs Inductor vs reasoning, {torch.get_num_threads()} threads, {args.repeats} repeat(s)"
        plot(summary, backends, args.png, title)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
