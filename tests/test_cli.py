"""The torch-rc command, through click's runner, on real stores and bundles."""

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from torch_rc.backends.decisions import Decision
from torch_rc.cache.keys import KeyDetails, environment_parts
from torch_rc.cache.records import Check, TuningRecord
from torch_rc.cache.store import SQLiteStore
from torch_rc.cli import main
from torch_rc.options import Options
from torch_rc.platform.target import host_target_key

CHECK = Check("pytorch", 1e-4, 1e-4, 0.0, True)


def fill(cache_dir, target):
    store = SQLiteStore(cache_dir / "store.sqlite")
    store.put_record(
        TuningRecord(
            "wl", target, "[]", 0.002, CHECK, samples=64, method="mcts", proposer="builtin"
        )
    )
    store.put_record(
        TuningRecord(
            "wl", target, "[]", 0.001, CHECK, samples=128, method="mcts", proposer="builtin"
        )
    )
    parts = {**environment_parts(target), "graph": "g"}
    decision = Decision("compiled", "fixed", "option select='tvm'")
    store.put_artifact(KeyDetails("artifact", parts), _payload(), {"graph": decision.to_json()})
    return store


def _payload():
    from torch_rc.backends.artifact import ARTIFACT_VERSION, ring_of
    from torch_rc.cache.payload import pack

    return pack(
        {"artifact_version": ARTIFACT_VERSION, "kernels": {}}, {}, ring_of(Options.resolve())
    )


@pytest.fixture
def local_target():
    return host_target_key(Options.resolve())


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_everywhere():
    for args in (
        [],
        ["cache"],
        ["cache", "ls"],
        ["cache", "import"],
        ["cache", "prune"],
        ["cache", "verify"],
        ["tune"],
        ["report"],
    ):
        result = cli(*args, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_export_import_round_trip_keeps_the_faster_record(tmp_path, local_target):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fill(src, local_target)
    dst_store = SQLiteStore(dst / "store.sqlite")
    dst_store.put_record(TuningRecord("wl", local_target, "[]", 0.0005, CHECK, samples=256))
    assert cli("cache", "--cache-dir", str(src), "export", str(tmp_path / "b.trc")).exit_code == 0
    result = cli("cache", "--cache-dir", str(dst), "import", str(tmp_path / "b.trc"))
    assert result.exit_code == 0, result.output
    assert "imported 2 records (0 already present) and 1 artifacts" in result.output
    best = SQLiteStore(dst / "store.sqlite").best_records("wl", local_target, k=5)
    assert [r.latency_s for r in best] == [0.0005, 0.001, 0.002]
    again = cli("cache", "--cache-dir", str(dst), "import", str(tmp_path / "b.trc"))
    assert "imported 0 records (2 already present) and 0 artifacts (1 already present)" in (
        again.output
    )
    assert len(SQLiteStore(dst / "store.sqlite").all_records()) == 3  # re-import adds nothing
    listing = json.loads(cli("cache", "--cache-dir", str(dst), "ls", "--json").output)
    assert listing["records"][0]["latency_ms"] == 0.5
    assert {r["method"] for r in listing["records"]} >= {"mcts"}
    assert listing["graphs"][0]["decisions"]["graph"]["choice"] == "compiled"


def test_bundle_for_another_target_is_refused_unless_allowed(tmp_path):
    other = json.dumps({"kind": "llvm", "cpu": "some other cpu"})
    fill(tmp_path / "src", other)
    cli("cache", "--cache-dir", str(tmp_path / "src"), "export", str(tmp_path / "b.trc"))
    refused = cli("cache", "--cache-dir", str(tmp_path / "dst"), "import", str(tmp_path / "b.trc"))
    assert refused.exit_code != 0
    assert (
        "refused 3 for another target" in refused.output
        and "--allow-other-target" in refused.output
    )
    assert SQLiteStore(tmp_path / "dst" / "store.sqlite").all_records() == []
    allowed = cli(
        "cache",
        "--cache-dir",
        str(tmp_path / "dst"),
        "import",
        "--allow-other-target",
        str(tmp_path / "b.trc"),
    )
    assert allowed.exit_code == 0 and "imported 2 records" in allowed.output


def test_corrupted_or_foreign_bundle_is_a_clear_error_and_writes_nothing(tmp_path, local_target):
    fill(tmp_path / "src", local_target)
    bundle = tmp_path / "b.trc"
    cli("cache", "--cache-dir", str(tmp_path / "src"), "export", str(bundle))
    truncated = tmp_path / "t.trc"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    foreign = tmp_path / "f.trc"
    with tarfile.open(foreign, "w:gz") as tar:
        tar.add(__file__, arcname="manifest.json")
    for path, message in (
        (truncated, "corrupted or truncated"),
        (foreign, "not a readable torch_rc bundle"),
        (tmp_path / "none.trc", "does not exist"),
    ):
        result = cli("cache", "--cache-dir", str(tmp_path / "dst"), "import", str(path))
        assert result.exit_code == 1
        assert message in result.output and "Traceback" not in result.output
    assert SQLiteStore(tmp_path / "dst" / "store.sqlite").stats()["records"] == 0


def test_prune_stats_and_verify(tmp_path, local_target):
    store = fill(tmp_path, local_target)
    dry = cli("cache", "--cache-dir", str(tmp_path), "prune", "--target", local_target, "--dry-run")
    assert "would delete 2 records" in dry.output
    assert len(store.all_records()) == 2
    assert cli("cache", "--cache-dir", str(tmp_path), "prune").exit_code != 0  # no criterion given
    assert (
        "deleted 2 records"
        in cli("cache", "--cache-dir", str(tmp_path), "prune", "--target", local_target).output
    )
    stats = json.loads(cli("cache", "--cache-dir", str(tmp_path), "stats", "--json").output)
    assert stats["records"] == 0 and stats["artifacts"] == 1
    assert cli("cache", "--cache-dir", str(tmp_path), "verify").exit_code == 0
    store._conn.execute("UPDATE artifacts SET payload = x'00ff'")
    damaged = cli("cache", "--cache-dir", str(tmp_path), "verify")
    assert damaged.exit_code == 1 and "not a torch_rc artifact" in damaged.output


def test_tune_a_model_then_report(tmp_path, monkeypatch):
    models = tmp_path / "cli_models.py"
    models.write_text(
        "import torch\n"
        "def mlp():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))\n"
    )
    monkeypatch.chdir(tmp_path)
    cache = str(tmp_path / "cache")
    result = cli(
        "tune",
        "cli_models:mlp",
        "--input",
        "16x128",
        "--trials",
        "10",
        "--cache-dir",
        cache,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert (
        "max abs error" in result.output
        and "tuned" in result.output
        and "run log:" in result.output
    )
    # What the compiled model runs after tuning, against eager, is said.
    assert re.search(r"graph \d+: runs", result.output) and "eager" in result.output
    report = cli("report", "--cache-dir", cache, "--out", str(tmp_path / "curves.png"))
    assert report.exit_code == 0 and "path to the best schedule" in report.output
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tune_and_report_name_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["tune", "no_such_module:factory", "--input", "4x4"])
    assert result.exit_code == 2 and "cannot import 'no_such_module'" in result.output
    result = runner.invoke(main, ["tune", "os:path", "--input", "4x4"])
    assert result.exit_code == 2 and "neither a model nor a factory" in result.output
    result = runner.invoke(main, ["tune", "torch.nn:Identity", "--input", "4xfour"])
    assert result.exit_code == 2 and "a shape is positive sizes joined by x" in result.output
    (tmp_path / "bad.py").write_text("this is not TVMScript")
    result = runner.invoke(main, ["tune", "--tir", str(tmp_path / "bad.py")])
    assert result.exit_code == 2 and "not a TVMScript IRModule" in result.output
    # TVM's whole diagnostic, not its last line: where, and what.
    assert "<str>:1" in result.output and "^" in result.output
    result = runner.invoke(main, ["report", "--cache-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no tuning runs" in result.output
    assert "Traceback" not in result.output


def test_tune_the_shipped_tir_example(tmp_path):
    cache = str(tmp_path / "cache")
    result = cli(
        "tune",
        "--tir",
        str(Path(__file__).resolve().parents[1] / "examples" / "tir" / "matmul_relu.py"),
        "--trials",
        "6",
        "--method",
        "evolutionary",
        "--cache-dir",
        cache,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "metaschedule" in result.output


def test_bundle_warmed_on_one_gpu_kind_is_refused_on_another(tmp_path, monkeypatch):
    import torch_rc.platform.target as target

    h100, a100 = (target.gpu_target_key(target.KNOWN_GPUS[g]) for g in ("h100", "a100"))
    fill(tmp_path / "src", h100)
    cli("cache", "--cache-dir", str(tmp_path / "src"), "export", str(tmp_path / "b.trc"))
    monkeypatch.setattr(
        target, "local_target_keys", lambda options: [target.host_target_key(options), a100]
    )
    refused = cli("cache", "--cache-dir", str(tmp_path / "dst"), "import", str(tmp_path / "b.trc"))
    assert refused.exit_code != 0
    assert "made for NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" in refused.output
    assert "NVIDIA A100-SXM4-80GB (sm_80, 108 SMs)" in refused.output
    assert SQLiteStore(tmp_path / "dst" / "store.sqlite").all_records() == []
    monkeypatch.setattr(
        target, "local_target_keys", lambda options: [target.host_target_key(options), h100]
    )
    same_kind = cli(
        "cache", "--cache-dir", str(tmp_path / "dst"), "import", str(tmp_path / "b.trc")
    )
    assert same_kind.exit_code == 0 and "imported 2 records" in same_kind.output
    listing = cli("cache", "--cache-dir", str(tmp_path / "dst"), "ls")
    assert "NVIDIA" in listing.output and "(sm_90," in listing.output, listing.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA devices")
def test_device_flag_names_a_missing_gpu_or_a_bad_device(tmp_path):
    for args in (
        ["tune", "torch.nn:Identity", "--input", "8x32", "--device", "cuda"],
        ["warmup", "torch.nn:Identity", "--input", "8x32", "--device", "cuda:1"],
    ):
        result = cli(*args, "--cache-dir", str(tmp_path))
        assert result.exit_code == 2 and "no CUDA device here" in result.output, result.output
    bad = cli("tune", "torch.nn:Identity", "--input", "8x32", "--device", "tpu")
    assert bad.exit_code == 2 and "--device" in bad.output
    assert not (tmp_path / "store.sqlite").exists()


def test_ls_names_compiled_graphs_and_forget_decisions_keeps_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_RC_CACHE_DIR", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU()).eval()
    compiled = torch.compile(model, backend="reasoning")
    with torch.no_grad():
        compiled(torch.randn(4, 16))
    listing = json.loads(cli("cache", "--cache-dir", str(tmp_path), "ls", "--json").output)
    (graph,) = listing["graphs"]
    assert graph["model"] == "Sequential" and graph["inputs"] == ["(4, 16) float32"]
    assert "aten.addmm.default" in graph["ops"] and "aten.gelu.default" in graph["ops"]
    assert graph["decisions"]["graph"]["choice"] in ("compiled", "eager")
    text = cli("cache", "--cache-dir", str(tmp_path), "ls").output
    assert "Sequential" in text and "threads" in text

    assert cli(
        "cache", "--cache-dir", str(tmp_path), "forget-decisions", "--model", "Other"
    ).output.startswith("forgot the decisions of 0")
    result = cli("cache", "--cache-dir", str(tmp_path), "forget-decisions")
    assert result.exit_code == 0 and "of 1 compiled graph" in result.output
    (graph,) = json.loads(cli("cache", "--cache-dir", str(tmp_path), "ls", "--json").output)[
        "graphs"
    ]
    assert graph["decisions"] == {} and graph["model"] == "Sequential"  # kernels, description kept
    assert graph["graph"] == "not decided yet"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tune", "m.pt2", "--input", "0x5"], "a shape is positive sizes"),
        (["tune", "m.pt2", "--input", "2x17"], "the model fails on --input 2x17"),
        (["warmup", "m.pt2", "--input", "2x16", "--bucket", "8x17"], "fails on bucket 8x17"),
        (["warmup", "m.pt2", "--input", "4x16"], "only takes the shapes it was exported for"),
        (["warmup", "m.pt2", "--input", "2x16", "--bucket", "2x16,3"], "2 shapes for 1 inputs"),
    ],
)
def test_bad_cli_input_is_one_line_and_a_non_zero_exit(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 16),)), "m.pt2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output


def test_options_are_validated_when_resolved(monkeypatch):
    monkeypatch.setenv("TORCH_RC_RTOL", "nan")
    result = CliRunner().invoke(main, ["tune", "m:f", "--input", "2x16"])
    assert result.exit_code != 0 and "'rtol' must be a finite number" in result.output
    monkeypatch.delenv("TORCH_RC_RTOL")
    with pytest.raises(torch_rc_errors().OptionsError, match="lock_timeout_s"):
        Options.resolve({"lock_timeout_s": float("inf")})


def torch_rc_errors():
    import torch_rc.errors

    return torch_rc.errors


def test_fleet_flags_name_their_problems(tmp_path, monkeypatch):
    from torch_rc.tuning.fleet import free_port

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    bad = runner.invoke(main, ["tune", "torch.nn:Identity", "--input", "4x4", "--rpc-tracker", "x"])
    assert bad.exit_code == 1 and "'rpc_tracker' must be HOST:PORT" in bad.output
    dead = f"127.0.0.1:{free_port()}"
    for command in (
        ["tune", "torch.nn:Identity", "--input", "4x4"],
        ["warmup", "torch.nn:Identity", "--input", "4x4", "--trials", "8"],
    ):
        result = runner.invoke(main, [*command, "--rpc-tracker", dead, "--rpc-key", "k"])
        assert result.exit_code == 1 and f"tracker at {dead} does not answer" in result.output, (
            result.output
        )
        assert "Traceback" not in result.output
    wrong = runner.invoke(
        main,
        ["tune", "torch.nn:Identity", "--input", "4x4", "--drivers", "2", "--driver-index", "5"],
    )
    assert wrong.exit_code == 1 and "'tune_driver_index' must be in 0..1" in wrong.output
