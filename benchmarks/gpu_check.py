"""Everything the CUDA path needs checked on a GPU machine, in one run, with one report.

On a machine with a CUDA GPU it runs, in order:

1. the device and versions (GPU name, compute capability, SMs, driver; torch, TVM);
2. the build check: the model set (tests/backends/models.py) built for this GPU's target and
   every kernel's CUDA source compiled (what also runs on a CPU machine, for sm_80/sm_90);
3. the GPU tests (tests/backends/test_cuda.py and friends) under pytest;
4. tuning: a 256x1024 -> 4096 -> 1024 projection tuned with --trials samples; per kernel the
   default (dlight) schedule's latency against the tuned one's;
5. the end-to-end benchmark on the GPU: eager vs Inductor vs reasoning per model
   (benchmarks/e2e.py --device cuda), with a bar chart of speed-ups over eager.

Without a GPU it runs step 2 for the H100 and A100 targets (nvcc must be on PATH) and says that
the rest needs a GPU. Output: a summary on stdout and ``--out`` (JSON, PNG, logs).

    python benchmarks/gpu_check.py --out /tmp/gpu_check            # GPU machine, all steps
    python benchmarks/gpu_check.py --skip-tests --trials 64 --models mlp,gpt2
    .venv/bin/python benchmarks/gpu_check.py                       # CPU machine: build check only

Getting torch_rc onto a lent GPU machine (no network there; see docs/gpu.md): its image has
torch and the CUDA toolkit (nvcc, NVRTC through cuda-bindings) but not TVM; the apache-tvm wheel
(100 MB) is larger than one call may carry, so docs/gpu.md splits it over two calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.backends import models as zoo  # noqa: E402

MODELS = {f.__name__: f for f in zoo.SMALL_MODELS + zoo.TRANSFORMERS}


def device_info() -> dict:
    from importlib.metadata import version

    info: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tvm": version("apache-tvm"),
        "tvm_ffi": version("apache-tvm-ffi"),
        "nvcc": shutil.which("nvcc") or "",
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        from torch_rc.platform.target import GPUProperties

        gpu = GPUProperties.from_torch(0)
        info.update(
            gpu=gpu.name, arch=gpu.arch, sms=gpu.multi_processor_count, describe=gpu.describe()
        )
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = ""
    return info


def build_check(targets: list, models: list[str]) -> list[dict]:
    """Build every model for each target and compile its CUDA sources with nvcc."""
    from torch_rc.backends.cross_compile import (
        cross_compile,
        cuda_sources,
        nvcc_available,
        nvcc_compile,
    )

    rows = []
    for target in targets:
        for name in models:
            model, inputs = MODELS[name]()
            row = {"target": target.gpu.arch, "gpu": target.gpu.name, "model": name}
            start = time.perf_counter()
            try:
                built = cross_compile(model, inputs, target)
                row["partitions"] = len(built)
                row["ops"] = sum(b.num_ops for b in built)
                sources = [s for b in built for s in cuda_sources(b.executable)]
                if nvcc_available():
                    for source in sources:
                        nvcc_compile(source, target)
                    row["nvcc"] = f"{len(sources)} ok"
                else:
                    row["nvcc"] = "skipped (no nvcc)"
                row["ok"] = True
            except Exception as exc:  # reported, the check goes on with the next model
                row["ok"] = False
                row["error"] = f"{type(exc).__name__}: {str(exc).strip()[-300:]}"
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(
                f"  build {row['target']} {name:14} "
                + (
                    f"{row['partitions']} partitions, {row['ops']} ops, nvcc {row['nvcc']}"
                    if row["ok"]
                    else "FAILED " + row["error"]
                )
                + f" ({row['seconds']} s)",
                flush=True,
            )
            rows.append(row)
    return rows


def run_tests(out: Path, slow: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/backends/test_cuda.py",
        "tests/backends/test_timing.py",
        "tests/backends/test_target.py",
    ]
    if not slow:
        cmd += ["-m", "not slow"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    print(f"  pytest: {summary}", flush=True)
    return {
        "returncode": proc.returncode,
        "summary": summary,
        "seconds": round(time.perf_counter() - start, 1),
    }


def tuning_check(trials: int, cache_dir: str) -> list[dict]:
    import torch_rc

    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)
    )
    model = model.cuda().eval()
    inputs = [torch.randn(256, 1024, device="cuda")]
    with torch.no_grad():
        report = torch_rc.tune(
            model, inputs, trials=trials, options={"cache_dir": cache_dir, "progress": False}
        )
    rows = []
    for task in report.tasks:
        best = task.result.best_latency_s if task.result is not None else None
        row = {
            "kernel": task.name,
            "status": task.status,
            "default_ms": None if task.default_s is None else task.default_s * 1e3,
            "tuned_ms": None if best is None else best * 1e3,
            "samples": task.result.samples if task.result is not None else 0,
        }
        if row["default_ms"] and row["tuned_ms"]:
            row["speedup"] = row["default_ms"] / row["tuned_ms"]
        rows.append(row)
        print(
            f"  tune {task.name:32} {task.status:13} default "
            f"{_fmt(row['default_ms'])} ms, tuned {_fmt(row['tuned_ms'])} ms"
            + (f" ({row['speedup']:.2f}x)" if "speedup" in row else ""),
            flush=True,
        )
    print(f"  compiled vs eager max abs error: {report.max_abs_error}", flush=True)
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def e2e(models: list[str], runs: int, out: Path) -> list[dict]:
    path = out / "e2e_cuda.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "e2e.py"),
        "--device",
        "cuda",
        "--runs",
        str(runs),
        "--models",
        ",".join(models),
        "--json",
        str(path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print("\n".join("  " + line for line in proc.stdout.splitlines()), flush=True)
    (out / "e2e_cuda.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"  e2e failed (exit {proc.returncode}); see {out / 'e2e_cuda.log'}")
        return []
    return json.loads(path.read_text())


def plot(rows: list[dict], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.9), 4))
    for offset, key, label in (
        (-0.2, "inductor_ms", "Inductor"),
        (0.2, "reasoning_ms", "reasoning"),
    ):
        ax.bar([x + offset for x in xs], [r["eager_ms"] / r[key] for r in rows], 0.4, label=label)
    ax.axhline(1.0, color="gray", linewidth=1)
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("speed-up over eager (median latency)")
    ax.set_title(f"torch_rc on {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu_check_")))
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per backend in e2e")
    parser.add_argument("--trials", type=int, default=64, help="tuning samples (0: no tuning)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests")
    parser.add_argument("--skip-build", action="store_true", help="do not run the build check")
    parser.add_argument("--slow", action="store_true", help="include the slow GPU tests")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    from importlib.metadata import entry_points

    if "reasoning" not in {e.name for e in entry_points(group="torch_dynamo_backends")}:
        print(
            "torch_rc is not installed here (the 'reasoning' backend is registered by its entry "
            "point): python3 -m pip install --no-deps --no-build-isolation --no-index -e ."
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_RC_CACHE_DIR", str(args.out / "cache"))
    result: dict = {"device": device_info()}
    print(json.dumps(result["device"], indent=1), flush=True)

    from torch_rc.options import Options
    from torch_rc.platform.target import KNOWN_GPUS, TargetInfo, detect_target, gpu_target_key

    gpu = torch.cuda.is_available()
    if gpu:
        targets = [detect_target(Options(), torch.device("cuda", 0))]
    else:
        targets = [
            TargetInfo("cuda", 2, g.describe(), gpu_target_key(g), 0, g)
            for g in (KNOWN_GPUS["h100"], KNOWN_GPUS["a100"])
        ]
    if not args.skip_build:
        print("build check (model set -> CUDA source -> nvcc):", flush=True)
        result["build"] = build_check(targets, names)
    if not gpu:
        print(
            "no CUDA device here: the GPU tests, tuning and the e2e benchmark need a GPU machine "
            "(run this script there)."
        )
    else:
        if not args.skip_tests:
            print("GPU tests:", flush=True)
            result["tests"] = run_tests(args.out, args.slow)
        if args.trials:
            print(f"tuning ({args.trials} samples):", flush=True)
            result["tuning"] = tuning_check(args.trials, str(args.out / "tune_cache"))
        print("end-to-end on the GPU:", flush=True)
        result["e2e"] = e2e(names, args.runs, args.out)
        if result["e2e"]:
            plot(result["e2e"], result["device"].get("gpu", "GPU"), args.out / "e2e_cuda.png")
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"report: {args.out / 'gpu_check.json'}")
    failed = any(not r["ok"] for r in result.get("build", [])) or (
        result.get("tests", {}).get("returncode", 0) != 0
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
