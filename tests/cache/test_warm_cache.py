"""The backend with the persistent cache, across real processes."""

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    import torch_rc.backends.compiler as compiler
    from torch_rc.backends.dynamo import compile_graph
    from torch_rc.options import Options
    from torch_rc.testing import assert_outputs_match

    builds = []
    real_build = compiler.build_executable
    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)
    compiler.build_executable = counting_build

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish()).eval()
    x = torch.randn(2, 3, 16, 16)
    options = Options.resolve({"select": sys.argv[1]})
    sink = []
    compiled = torch.compile(model, backend=lambda gm, ex: compile_graph(gm, ex, options, sink)[0])
    with torch.no_grad():
        out = compiled(x)
        assert_outputs_match(out, model(x))
    report = sink[0]
    print(json.dumps({
        "cache": report.cache,
        "target": report.target,
        "builds": len(builds),
        "choice": report.choice,
        "parts": [[p.status, p.reason, p.tvm_ms, p.decision.state] for p in report.partitions],
        "decision": report.decision.to_json() if report.decision else None,
        "tvm_imported": "tvm" in sys.modules,
    }))
    """
)


def run(tmp_path, select="measure", extra_env=None, background=False):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, TORCH_RC_CACHE_DIR=str(tmp_path / "cache"), **(extra_env or {}))
    args = [sys.executable, str(script), select]
    if background:
        return subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_loads_kernels_and_decisions_without_building(tmp_path):
    first = run(tmp_path, select="tvm")
    assert first["cache"] == "miss" and first["builds"] >= 1
    second = run(tmp_path, select="tvm")
    assert second["cache"] == "hit"
    assert second["builds"] == 0
    assert first["tvm_imported"] and not second["tvm_imported"]  # kernels load through tvm-ffi only
    assert [p[0] for p in second["parts"]] == ["tvm"] * len(first["parts"])
    assert all(p[3] == "fixed" for p in second["parts"])  # an option decided, not a timing


def test_measured_decisions_are_reused_and_only_rechecked(tmp_path):
    first = run(tmp_path, select="measure")
    second = run(tmp_path, select="measure")
    assert second["cache"] == "hit" and second["builds"] == 0
    for before, after in zip(first["parts"], second["parts"], strict=True):
        if before[3] == "final" and before[0] == "tvm":
            # A final TVM choice is re-checked with a few rounds, not measured afresh.
            assert after[0] == "tvm" or "measuring again" in after[1] or after[3] != "final"
        if before[3] == "provisional":
            assert "cached decision" not in after[1]  # a provisional choice is measured again


def test_concurrent_first_compiles_build_once(tmp_path):
    procs = [run(tmp_path, select="tvm", background=True) for _ in range(2)]
    results, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        errors.append(err[-3000:])
    # On failure, say what each process reported and logged (a cache "off" means it compiled
    # without the store: its warning says why).
    assert sorted(r["cache"] for r in results) == ["hit", "miss"], (results, errors)
    assert min(r["builds"] for r in results) == 0


def test_corrupted_cache_file_does_not_stop_compilation(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "store.sqlite").write_bytes(b"garbage" * 1000)
    result = run(tmp_path, select="tvm")
    assert result["cache"] == "miss"
    assert any(".corrupt-" in name for name in os.listdir(cache))
    assert run(tmp_path, select="tvm")["cache"] == "hit"


def test_no_secret_from_the_environment_reaches_the_store(tmp_path):
    secret = "sk-torch-rc-test-secret-4f9a1c"
    run(tmp_path, select="tvm", extra_env={"OPENAI_API_KEY": secret})
    for name in os.listdir(tmp_path / "cache"):
        path = tmp_path / "cache" / name
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), name
