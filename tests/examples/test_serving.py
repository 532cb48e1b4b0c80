"""The serving example end to end: torch-rc warmup writes a bundle; a real uvicorn server in a
fresh process loads it with a fresh cache, serves concurrent requests of varied shapes, matches
eager, and does no tuning at start-up."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from examples.serving.app import server_command
from examples.serving.model import build_model
from torch_rc.testing import assert_outputs_match

ROOT = Path(__file__).resolve().parents[2]
TORCH_RC = str(Path(sys.executable).with_name("torch-rc"))


def _post(url, body):
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_warmup_bundle_then_serve_over_http(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bundle = tmp_path / "model.trc"
    warm = subprocess.run(
        [
            TORCH_RC,
            "warmup",
            "examples.serving.model:build_model",
            "--input",
            "1x16:int64",
            "--bucket",
            "1x16",
            "--bucket",
            "1x32",
            "--batch-sizes",
            "1,2",
            "--trials",
            "8",
            "--bundle",
            str(bundle),
            "--cache-dir",
            str(tmp_path / "build_cache"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "warmed 4 buckets" in warm.stdout and bundle.exists()

    port = _free_port()
    serve_env = {
        **env,
        "TORCH_RC_CACHE_DIR": str(tmp_path / "replica_cache"),  # a replica that never saw the model
        "SERVE_BUNDLE": str(bundle),
        "SERVE_BUCKETS": "1x16;1x32",
        "SERVE_BATCH_SIZES": "1,2",
    }
    server = subprocess.Popen(
        server_command(port),
        cwd=ROOT,
        env=serve_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                stats = json.loads(urllib.request.urlopen(f"{base}/stats", timeout=5).read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        # Start-up loaded every bucket from the bundle: no build, no tuning, no LLM.
        assert stats["buckets"] == 4 and stats["cache_hits"] == stats["graphs"] == 4
        assert stats["tuning_runs"] == 0

        model = build_model()
        generator = torch.Generator().manual_seed(1)
        shapes = [(1, 16), (2, 16), (1, 32), (2, 32), (3, 16), (1, 20)] * 3  # last two: no bucket
        batches = [torch.randint(0, 1000, s, generator=generator) for s in shapes]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda t: _post(f"{base}/predict", {"tokens": t.tolist()}), batches)
            )
        with torch.no_grad():
            for tokens, answer in zip(batches, answers, strict=True):
                assert_outputs_match(torch.tensor(answer["logits"]), model(tokens))
                # Compiled code answered exactly the warmed buckets whose graphs run compiled
                # (a first-call choice of eager runs the original, and says so).
                key = str([list(tokens.shape)])
                assert answer["compiled"] == (
                    tuple(tokens.shape) in {(1, 16), (2, 16), (1, 32), (2, 32)}
                    and key not in stats["buckets_running_eager"]
                )
        stats = json.loads(urllib.request.urlopen(f"{base}/stats", timeout=5).read())
        assert stats["hits"] == 12 and stats["misses"] == 6 and stats["tuning_runs"] == 0
        assert stats["miss_shapes"] == {"[[3, 16]]": 3, "[[1, 20]]": 3}
        try:
            _post(f"{base}/predict", {"tokens": [[1, 2], [3]]})
            raise AssertionError("ragged input was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 422
    finally:
        server.terminate()
        server.wait(30)
