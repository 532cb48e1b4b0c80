"""Tune one model measuring here, then through a TVM RPC tracker with 1, 2 and 4 local servers.

What it shows is the mechanism and its cost, not a speed-up: on one machine the servers share its
cores (on this 2-core machine, more servers than cores only queue), so the honest numbers are the
per-server sample counts, the seconds per measured sample (build + upload + check + timing, and
the waits) against local measurement, the faults, and whether the tuned kernels come out alike.
Each configuration starts from an empty cache (same seed, same budget) and starts its own tracker
and servers on 127.0.0.1 (``torch_rc.tuning.fleet.LocalFleet``), stopped at the end.

    python benchmarks/rpc_fleet.py                        # local, 1, 2, 4 servers; 48 trials
    python benchmarks/rpc_fleet.py --servers 1,2 --trials 24 --seed 1
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

HERE = Path(__file__).resolve().parent


def build_model() -> torch.nn.Module:
    """An MLP with five distinct kernels (shapes and epilogues differ)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 384),
        torch.nn.GELU(),
        torch.nn.Linear(384, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 128),
        torch.nn.Sigmoid(),
        torch.nn.Linear(128, 64),
    ).eval()


def tune_once(servers: int, args: argparse.Namespace) -> dict:
    import torch_rc
    from torch_rc.tuning.fleet import LocalFleet

    fleet = LocalFleet(servers=servers, key="bench") if servers else None
    try:
        options = {
            "cache_dir": tempfile.mkdtemp(prefix="rpc-bench-"),
            "progress": False,
            "tune_seed": args.seed,
        }
        if fleet is not None:
            options.update(rpc_tracker=fleet.tracker, rpc_key=fleet.key, rpc_timeout_s=120)
        x = torch.randn(args.batch, 256)
        start = time.monotonic()
        report = torch_rc.tune(build_model(), [x], trials=args.trials, options=options)
        wall = time.monotonic() - start
    finally:
        if fleet is not None:
            fleet.close()
    (run,) = [r for r in report.runs if r.tasks]
    measuring = run.measuring
    tasks = {
        t.name: {
            "status": t.status,
            "samples": t.trials,
            "best_ms": (t.result.best_latency_s or 0) * 1e3 if t.result else None,
            "default_ms": (t.default_s or 0) * 1e3,
        }
        for t in run.tasks
    }
    graphs = [g for g in report.graphs if g.compiled_ms and g.eager_ms]
    return {
        "servers": servers,
        # The tuned model, timed here after tuning (every configuration under the same
        # conditions): whether tuning through the fleet found kernels as good as local tuning.
        "compiled_ms": sum(g.compiled_ms for g in graphs) if graphs else None,
        "eager_ms": sum(g.eager_ms for g in graphs) if graphs else None,
        "wall_s": round(wall, 1),
        "tuning_s": round(run.seconds, 1),
        "measured": measuring.get("measured", 0),
        "measuring_s": measuring.get("seconds", 0.0),
        "per_sample_s": measuring.get("seconds", 0.0) / max(measuring.get("measured", 0), 1),
        "by_server": measuring.get("by_server", {}),
        "faults": {k: measuring.get(k, 0) for k in ("retries", "timeouts", "refused")},
        "max_abs_error": report.max_abs_error,
        "tasks": tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="1,2,4", help="server counts to try (default 1,2,4)")
    parser.add_argument("--trials", type=int, default=48, help="tuning budget of the model")
    parser.add_argument("--batch", type=int, default=32, help="rows of the model's input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-local", action="store_true", help="skip the local baseline")
    parser.add_argument("--out", default=str(HERE.parent / "bench_out" / "rpc_fleet.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.servers.split(",") if n]
    os.environ.setdefault("TORCH_RC_KEY_DIR", tempfile.mkdtemp(prefix="rpc-bench-keys-"))
    rows = []
    for servers in ([] if args.no_local else [0]) + counts:
        label = "local" if servers == 0 else f"{servers} server(s)"
        print(f"-- {label}", file=sys.stderr, flush=True)
        rows.append(tune_once(servers, args))
    local = next((r for r in rows if r["servers"] == 0), None)
    print(f"\nseed {args.seed}, {args.trials} trials, batch {args.batch}, {os.cpu_count()} cores")
    print(
        f"{'measured on':<14}{'wall s':>8}{'tuning s':>10}{'samples':>9}{'s/sample':>10}"
        f"{'vs local':>10}{'model ms':>10}{'vs eager':>10}  per server / faults"
    )
    for row in rows:
        label = "here" if row["servers"] == 0 else f"{row['servers']} server(s)"
        ratio = f"{row['per_sample_s'] / local['per_sample_s']:.1f}x" if local else "-"
        spread = ", ".join(f"{k.split(':')[-1]}:{v}" for k, v in row["by_server"].items())
        faults = ", ".join(f"{k} {v}" for k, v in row["faults"].items() if v) or "no faults"
        model = f"{row['compiled_ms']:.3f}" if row["compiled_ms"] else "-"
        speedup = f"{row['eager_ms'] / row['compiled_ms']:.2f}x" if row["compiled_ms"] else "-"
        print(
            f"{label:<14}{row['wall_s']:>8.1f}{row['tuning_s']:>10.1f}{row['measured']:>9}"
            f"{row['per_sample_s']:>10.3f}{ratio:>10}{model:>10}{speedup:>10}"
            f"  {spread or '-'}; {faults}"
        )
    print(
        "model ms: the tuned model timed here after tuning (same conditions for every row); "
        "s/sample: seconds in measurement per measured candidate (build, export, upload, check, "
        "timing, waits)"
    )
    if local:
        print(
            "\nbest kernel latency as each configuration measured it, vs measured here (median "
            "over kernels tuned in both; servers sharing this machine's cores time each other's "
            "load):"
        )
        for row in rows[1:]:
            ratios = [
                row["tasks"][name]["best_ms"] / task["best_ms"]
                for name, task in local["tasks"].items()
                if task.get("best_ms") and (row["tasks"].get(name) or {}).get("best_ms")
            ]
            if ratios:
                print(
                    f"  {row['servers']} server(s): {statistics.median(ratios):.2f}x "
                    f"({len(ratios)} kernels, range {min(ratios):.2f}-{max(ratios):.2f})"
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
