"""Warm-start benchmark: first-call time of a fresh process with a cold and a warm cache.

For each model and backend (reasoning, inductor) a fresh cache directory is made; a new process
compiles and calls the model once (cold), then another new process does the same with that
directory (warm). "First call" is the time from ``torch.compile`` to the first output, inside the
child (Python start-up and ``import torch`` excluded, model construction excluded). Repeats give
medians; this machine is shared and noisy.

    .venv/bin/python benchmarks/warm_start.py [--models mlp,bert] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mlp", "cnn_bn", "depthwise", "bert", "gpt2", "llama"]


def child(model_name: str, backend: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.backends import models as zoo

    torch.manual_seed(0)
    model, inputs = getattr(zoo, model_name)()
    with torch.no_grad():
        start = time.perf_counter()
        compiled = torch.compile(model, backend=backend)
        compiled(*inputs)
        first = time.perf_counter() - start
    print(json.dumps({"first_call_s": first}))


def run_child(model_name: str, backend: str, cache_dir: str) -> float:
    env = dict(os.environ)
    env["TORCH_RC_CACHE_DIR"] = os.path.join(cache_dir, "torch_rc")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    result = subprocess.run(
        [sys.executable, __file__, "--child", model_name, backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{backend} on {model_name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["first_call_s"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="cold+warm pairs per model and backend"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    print("first call in a fresh process, seconds (median of repeats)")
    print(
        f"{'model':10} {'rc cold':>8} {'rc warm':>8} {'ind cold':>9} {'ind warm':>9} {'rc warm / ind warm':>19}"
    )
    rows = []
    for name in names:
        times: dict[str, list[float]] = {
            k: [] for k in ("rc_cold", "rc_warm", "ind_cold", "ind_warm")
        }
        for _ in range(args.repeats):
            for backend, prefix in (("reasoning", "rc"), ("inductor", "ind")):
                with tempfile.TemporaryDirectory(prefix="warm_start_") as cache_dir:
                    times[f"{prefix}_cold"].append(run_child(name, backend, cache_dir))
                    times[f"{prefix}_warm"].append(run_child(name, backend, cache_dir))
        row = {"model": name, **{k: statistics.median(v) for k, v in times.items()}}
        rows.append(row)
        print(
            f"{name:10} {row['rc_cold']:8.2f} {row['rc_warm']:8.2f} {row['ind_cold']:9.2f} "
            f"{row['ind_warm']:9.2f} {row['rc_warm'] / row['ind_warm']:18.2f}x",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
