"""Warm-up and serving in-process: buckets, bundles, misses, and bad input."""

import tarfile

import pytest
import torch
from click.testing import CliRunner

from examples.serving.model import build_model, example_inputs
from torch_rc.cli import main
from torch_rc.errors import CacheError
from torch_rc.numerics import tolerances
from torch_rc.serving import ServingModel, inputs_like, warmup
from torch_rc.testing import assert_outputs_match

FP32_ATOL = tolerances(torch.float32)[1]  # the runtime's own fp32 tolerance

BUCKETS = [[(1, 16)], [(2, 16)]]


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    torch._dynamo.reset()
    report = warmup(
        build_model(),
        example_inputs(),
        shapes=BUCKETS,
        options={"cache_dir": str(root / "cache")},
        bundle=str(root / "b.trc"),
    )
    return root, report


def test_warmup_checks_every_bucket_and_writes_a_bundle(warmed):
    root, report = warmed
    assert [b.shapes for b in report.buckets] == BUCKETS
    assert all(b.max_abs_error is not None and b.max_abs_error < FP32_ATOL for b in report.buckets)
    assert not any(b.mismatch for b in report.buckets)
    assert (root / "b.trc").stat().st_size > 0


def test_replica_from_bundle_hits_the_cache_and_counts_misses(warmed, tmp_path):
    root, _ = warmed
    model = build_model()
    serving = ServingModel(
        model,
        example_inputs(),
        BUCKETS,
        bundle=str(root / "b.trc"),
        options={"cache_dir": str(tmp_path)},
    )
    stats = serving.stats()
    assert stats["cache_hits"] == stats["graphs"] == 2 and stats["tuning_runs"] == 0
    x = torch.randint(0, 1000, (2, 16))
    out, compiled = serving.run(x)
    assert compiled == ("[[2, 16]]" not in serving.stats()["buckets_running_eager"])
    y = torch.randint(0, 1000, (5, 16))
    out2, compiled2 = serving.run(y)
    assert not compiled2
    with torch.no_grad():
        assert_outputs_match(out, model(x))
        torch.testing.assert_close(out2, model(y))
    assert serving.stats()["misses"] == 1 and serving.stats()["miss_shapes"] == {"[[5, 16]]": 1}


def test_a_replica_with_another_thread_count_uses_the_bundles_kernels(warmed, tmp_path):
    root, _ = warmed  # warmed with this process's thread count
    serving = ServingModel(
        build_model(),
        example_inputs(),
        BUCKETS,
        bundle=str(root / "b.trc"),
        options={"cache_dir": str(tmp_path), "num_threads": 1},
    )
    stats = serving.stats()
    # Kernels are the same for any thread count: hits, no builds; decisions are re-measured.
    assert stats["cache_hits"] == stats["graphs"] == 2 and stats["tuning_runs"] == 0


def test_bad_bundles_are_clear_errors_and_write_nothing(warmed, tmp_path):
    root, _ = warmed
    corrupted = tmp_path / "bad.trc"
    corrupted.write_bytes((root / "b.trc").read_bytes()[:200])
    cache = tmp_path / "cache"
    with pytest.raises(CacheError, match="not a readable torch_rc bundle"):
        ServingModel(
            build_model(),
            example_inputs(),
            BUCKETS,
            bundle=str(corrupted),
            options={"cache_dir": str(cache)},
        )
    with pytest.raises(CacheError, match="does not exist"):
        ServingModel(
            build_model(),
            example_inputs(),
            BUCKETS,
            bundle=str(tmp_path / "none.trc"),
            options={"cache_dir": str(cache)},
        )
    from torch_rc.cache.location import make_store

    assert make_store(str(cache / "store.sqlite")).stats()["artifacts"] == 0


def test_bundle_for_another_target_is_refused(warmed, tmp_path, monkeypatch):
    root, _ = warmed
    import torch_rc.platform.target as target

    monkeypatch.setattr(target, "host_target_key", lambda options: "llvm-some-other-cpu")
    with pytest.raises(CacheError, match="nothing usable here"):
        ServingModel(
            build_model(),
            example_inputs(),
            BUCKETS,
            bundle=str(root / "b.trc"),
            options={"cache_dir": str(tmp_path)},
        )


def test_inputs_like_keeps_dtypes_and_token_range():
    example = [torch.randint(5, 50, (1, 8))]
    (x,) = inputs_like(example, [(3, 4)])
    assert x.shape == (3, 4) and x.dtype == torch.int64 and 5 <= int(x.min()) and int(x.max()) < 50
    with pytest.raises(ValueError, match="2 shapes for 1 tensor inputs"):
        inputs_like(example, [(1,), (2,)])


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("model.onnx", "model.onnx does not exist"),
        ("model.pt", "TorchScript files are not supported"),
        ("missing.pt2", "missing.pt2 does not exist"),
        ("no_such_pkg:build", "cannot import 'no_such_pkg'"),
        ("not-a-path", "not of the form package.module:factory"),
    ],
)
def test_warmup_cli_names_bad_models(tmp_path, monkeypatch, model, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["warmup", model, "--input", "1x16:int64", "--cache-dir", str(tmp_path / "c")]
    )
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists()  # nothing was written


def test_warmup_cli_with_an_exported_program(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 16),)), str(tmp_path / "m.pt2"))
    result = CliRunner().invoke(
        main,
        [
            "warmup",
            str(tmp_path / "m.pt2"),
            "--input",
            "2x16",
            "--batch-sizes",
            "2",
            "--cache-dir",
            str(tmp_path / "c"),
            "--bundle",
            str(tmp_path / "m.trc"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warmed 1 buckets" in result.output
    with tarfile.open(tmp_path / "m.trc") as tar:
        assert "manifest.json" in tar.getnames()


def test_warmup_cli_warms_other_buckets_of_an_exported_program_with_a_dynamic_batch(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "dyn.pt2"))
    result = CliRunner().invoke(
        main,
        ["warmup", str(tmp_path / "dyn.pt2"), "--input", "2x16", "--bucket", "4x16"]
        + ["--bucket", "8x16", "--cache-dir", str(tmp_path / "c")],
    )
    assert result.exit_code == 0, result.output
    assert "bucket [[4, 16]]" in result.output and "bucket [[8, 16]]" in result.output
    assert "[1/2, eta " in result.output and "[2/2] bucket" in result.output  # overall progress
    assert "warmed 2 buckets" in result.output and "Traceback" not in result.output


def test_a_replica_on_a_read_only_location_gets_its_bundles_hits(warmed, tmp_path):
    root, _ = warmed
    blocker = tmp_path / "a-file"  # a cache location that cannot be created: read-only
    blocker.write_text("")
    serving = ServingModel(
        build_model(),
        example_inputs(),
        BUCKETS,
        bundle=str(root / "b.trc"),
        options={"cache_dir": str(blocker / "cache")},
    )
    stats = serving.stats()
    assert stats["cache_hits"] == stats["graphs"] == 2 and stats["tuning_runs"] == 0


def test_warmup_on_a_read_only_location_fails_up_front(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="would be lost"):
        warmup(build_model(), example_inputs(), options={"cache_dir": str(blocker / "c")})


def test_a_warmed_bucket_that_runs_eager_says_so(tmp_path):
    # select="torch": every partition runs in PyTorch, so the graph's first call chooses eager.
    report = warmup(
        build_model(),
        example_inputs(),
        shapes=[[(1, 16)]],
        options={"cache_dir": str(tmp_path), "select": "torch"},
    )
    assert report.buckets[0].eager and report.buckets[0].runs.startswith("runs eager in 1 of 1")
    serving = ServingModel(
        build_model(),
        example_inputs(),
        [[(1, 16)]],
        options={"cache_dir": str(tmp_path), "select": "torch"},
    )
    _, compiled = serving.run(torch.randint(0, 1000, (1, 16)))
    assert serving.hits == 1 and not compiled  # a warmed bucket, but the original ran
    assert list(serving.stats()["buckets_running_eager"]) == ["[[1, 16]]"]
