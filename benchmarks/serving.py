"""Serving benchmark: start-up time and request latency of the example HTTP service
(examples/serving) with eager PyTorch, Inductor, and torch_rc serving a warmed bundle.

Each backend runs in a fresh uvicorn process with an empty cache (torch_rc gets the bundle); start-up
is process launch -> first successful /stats; latency is client-side, sequential requests cycling
over the warmed shapes, median and p90 over --requests. The machine is shared: compare ratios.

    .venv/bin/python benchmarks/serving.py --trials 64 --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.serving.app import server_command  # noqa: E402

BUCKETS = "1x16;1x32"
SIZES = "1,2,4"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, tokens: list[list[int]]) -> None:
    body = json.dumps({"tokens": tokens}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()


def serve(backend: str, env: dict, requests: int) -> dict:
    port = _port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        server_command(port),
        cwd=ROOT,
        env={**env, "SERVE_BACKEND": backend},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/stats", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{backend} server exited") from None
                time.sleep(0.2)
        startup = time.perf_counter() - start
        shapes = [
            (n, int(b.split("x")[1]))
            for b in BUCKETS.split(";")
            for n in map(int, SIZES.split(","))
        ]
        latencies: dict[str, list[float]] = {}
        for i in range(requests + len(shapes)):
            n, s = shapes[i % len(shapes)]
            tokens = [[(7 * r + 3 * c) % 1000 for c in range(s)] for r in range(n)]
            t0 = time.perf_counter()
            _post(f"{base}/predict", tokens)
            if i >= len(shapes):  # the first pass over the shapes is a warm-up
                latencies.setdefault(f"{n}x{s}", []).append(time.perf_counter() - t0)
        every = [x for v in latencies.values() for x in v]
        return {
            "backend": backend,
            "startup_s": startup,
            "p50_ms": statistics.median(every) * 1e3,
            "p90_ms": statistics.quantiles(every, n=10)[-1] * 1e3,
            "per_shape_p50_ms": {k: statistics.median(v) * 1e3 for k, v in latencies.items()},
            "stats": json.loads(urllib.request.urlopen(f"{base}/stats", timeout=5).read()),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=64, help="tuning budget per graph at warm-up")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rc_serving_"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SERVE_BUCKETS": BUCKETS,
        "SERVE_BATCH_SIZES": SIZES,
    }
    torch_rc = str(Path(sys.executable).with_name("torch-rc"))
    t0 = time.perf_counter()
    subprocess.run(
        [
            torch_rc,
            "warmup",
            "examples.serving.model:build_model",
            "--input",
            "1x16:int64",
            *[a for b in BUCKETS.split(";") for a in ("--bucket", b)],
            "--batch-sizes",
            SIZES,
            "--trials",
            str(args.trials),
            "--bundle",
            str(work / "model.trc"),
            "--cache-dir",
            str(work / "build"),
        ],
        cwd=ROOT,
        env={**env, "TORCH_RC_PROGRESS": "0"},
        check=True,
    )
    print(f"warm-up with {args.trials} trials per graph: {time.perf_counter() - t0:.0f} s")
    results = []
    for backend in ("eager", "inductor", "reasoning"):
        backend_env = {
            **env,
            "TORCH_RC_CACHE_DIR": str(work / f"replica_{backend}"),
            "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
            "SERVE_BUNDLE": str(work / "model.trc") if backend == "reasoning" else "",
        }
        results.append(serve(backend, backend_env, args.requests))
    eager = results[0]["p50_ms"]
    print(
        f"{'backend':10s} {'start-up s':>10s} {'p50 ms':>8s} {'p90 ms':>8s} {'p50 vs eager':>12s}  per-shape p50 ms"
    )
    for r in results:
        shapes = " ".join(f"{k}:{v:.2f}" for k, v in r["per_shape_p50_ms"].items())
        print(
            f"{r['backend']:10s} {r['startup_s']:10.1f} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {eager / r['p50_ms']:11.2f}x  {shapes}"
        )
    rc = results[-1]["stats"]
    print(
        f"reasoning replica: {rc.get('cache_hits')}/{rc.get('graphs')} graphs from the bundle, tuning runs {rc.get('tuning_runs')}, kernels rebuilt from tuned records {rc.get('kernels_built_from_records')} (artifacts already hold the tuned kernels)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
