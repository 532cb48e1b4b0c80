"""ONNX models end to end: built with onnxscript or torch.onnx.export(dynamo=True) (no binary
fixtures), compiled through TVM, checked against onnxruntime."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
onnxscript = pytest.importorskip("onnxscript")

from onnxscript import FLOAT, script  # noqa: E402
from onnxscript import opset18 as op  # noqa: E402

from torch_rc.cli import main  # noqa: E402
from torch_rc.errors import InputMismatchError, TorchRCError, UnsupportedOpError  # noqa: E402
from torch_rc.numerics import tolerances  # noqa: E402
from torch_rc.onnx_model import load_onnx  # noqa: E402
from torch_rc.testing import assert_outputs_match  # noqa: E402

LOCAL = onnxscript.values.Opset("torch_rc.test", 1)


@script(LOCAL, default_opset=op)
def gelu_bias(x, b):
    y = op.Add(x, b)
    return op.Mul(op.Mul(y, 0.5), op.Add(op.Erf(op.Div(y, 1.4142135)), 1.0))


@script(default_opset=op)
def projection(x: FLOAT["N", 16], w: FLOAT[16, 8], b: FLOAT[8]) -> FLOAT["N", 8]:  # noqa: F821
    return gelu_bias(op.MatMul(x, w), b)


def reference(path, *arrays):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(o) for o in session.run(None, dict(zip(names, arrays, strict=True)))]


@pytest.fixture(scope="module")
def function_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "projection.onnx"
    proto = projection.to_model_proto()
    assert proto.functions  # a model-local function, as onnxscript writes it
    onnx.save(proto, str(path))
    return path


def _inputs(n=4):
    generator = np.random.default_rng(0)
    return [
        generator.standard_normal((n, 16)).astype(np.float32),
        generator.standard_normal((16, 8)).astype(np.float32),
        generator.standard_normal(8).astype(np.float32),
    ]


def test_an_onnxscript_model_with_a_local_function_matches_onnxruntime(function_model, tmp_path):
    arrays = _inputs()
    model = load_onnx(function_model, arrays, options={"select": "tvm", "cache_dir": str(tmp_path)})
    assert model.report.runs_on == "tvm" and model.report.unsupported == []
    assert model.report.inputs[0] == ("x", (4, 16), "float32")
    out = model(*arrays)
    assert isinstance(out, np.ndarray)  # numpy in, numpy out
    assert_outputs_match(torch.from_numpy(out), reference(function_model, *arrays)[0])
    tensors = [torch.from_numpy(a) for a in arrays]
    assert isinstance(model(*tensors), torch.Tensor) and model.hits == 2


def test_a_symbolic_dimension_needs_an_example_and_other_shapes_run_on_onnxruntime(
    function_model, tmp_path
):
    with pytest.raises(TorchRCError, match="symbolic dimension 'N'"):
        load_onnx(function_model, options={"cache_dir": str(tmp_path)})
    model = load_onnx(
        function_model, _inputs(4), options={"select": "tvm", "cache_dir": str(tmp_path)}
    )
    other = _inputs(3)
    assert_outputs_match(torch.from_numpy(model(*other)), reference(function_model, *other)[0])
    assert model.misses == 1
    with pytest.raises(InputMismatchError, match="takes 3 inputs"):
        model(other[0])


@pytest.mark.parametrize(
    "build, shape",
    [
        (
            lambda: nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8)),
            (4, 16),
        ),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
            ),
            (2, 3, 16, 16),
        ),
    ],
    ids=["mlp", "cnn"],
)
def test_models_exported_by_torch_onnx_match_onnxruntime_and_eager(build, shape, tmp_path):
    torch.manual_seed(0)
    module = build().eval()
    x = torch.randn(*shape)
    path = tmp_path / "model.onnx"
    torch.onnx.export(module, (x,), dynamo=True).save(str(path))
    model = load_onnx(path, [x], options={"select": "tvm", "cache_dir": str(tmp_path / "c")})
    assert model.report.runs_on == "tvm"
    out = model(x)
    assert_outputs_match(out, reference(path, x.numpy())[0])
    with torch.no_grad():
        assert_outputs_match(out, module(x))
    # The default choice is timed against onnxruntime, with the numbers recorded.
    measured = load_onnx(path, [x], options={"cache_dir": str(tmp_path / "c")})
    assert measured.report.tvm_ms and measured.report.onnxruntime_ms
    assert measured.report.runs_on in ("tvm", "onnxruntime") and measured.report.reason
    assert_outputs_match(measured(x), reference(path, x.numpy())[0])


def _celu_model(path):
    node = onnx.helper.make_node("Celu", ["x"], ["y"], alpha=0.5)
    graph = onnx.helper.make_graph(
        [node],
        "celu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_an_operator_tvm_lacks_is_named_and_the_model_runs_on_onnxruntime(tmp_path):
    path = _celu_model(tmp_path / "celu.onnx")
    model = load_onnx(path, options={"cache_dir": str(tmp_path)})
    assert model.report.runs_on == "onnxruntime" and model.report.unsupported == ["Celu"]
    assert "Celu (opset 18)" in model.report.reason
    x = torch.randn(2, 3)
    assert_outputs_match(model(x), reference(path, x.numpy())[0])
    with pytest.raises(UnsupportedOpError, match=r"lacks Celu \(opset 18\)"):
        load_onnx(path, options={"strict": True, "cache_dir": str(tmp_path)})


def test_cli_tunes_an_onnx_file_into_the_cache(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(module, (torch.randn(8, 64),), dynamo=True).save(str(path))
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        main,
        ["tune", str(path), "--trials", "8", "--no-progress", "--cache-dir", str(cache)],
    )
    assert result.exit_code == 0, result.output
    assert "mlp.onnx: runs on" in result.output
    from torch_rc.cache.store import SQLiteStore

    assert SQLiteStore(str(cache / "store.sqlite")).stats()["records"] >= 1
    bad = CliRunner().invoke(
        main, ["tune", str(tmp_path / "missing.onnx"), "--cache-dir", str(cache)]
    )
    assert bad.exit_code == 2 and "missing.onnx does not exist" in bad.output
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf")
    bad = CliRunner().invoke(
        main, ["tune", str(tmp_path / "garbage.onnx"), "--cache-dir", str(cache)]
    )
    assert bad.exit_code == 1 and "cannot read the ONNX model" in bad.output
    assert "Traceback" not in bad.output


def test_cli_warms_an_onnx_file_per_bucket_into_a_bundle(function_model, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "warmup",
            str(function_model),
            *("--input", "4x16", "--input", "16x8", "--input", "8"),
            *("--bucket", "4x16,16x8,8", "--bucket", "2x16,16x8,8"),
            *("--cache-dir", str(tmp_path / "c"), "--bundle", str(tmp_path / "m.trc")),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[[4, 16], [16, 8], [8]]: projection.onnx: runs on" in result.output
    assert "[[2, 16], [16, 8], [8]]" in result.output and (tmp_path / "m.trc").stat().st_size > 0


def test_a_serving_model_takes_an_onnx_file(function_model, tmp_path):
    from torch_rc.serving import ServingModel

    examples = [torch.from_numpy(a) for a in _inputs(4)]
    serving = ServingModel(
        str(function_model),
        examples,
        [[(4, 16), (16, 8), (8,)], [(2, 16), (16, 8), (8,)]],
        options={"cache_dir": str(tmp_path), "select": "tvm"},
    )
    warmed = [torch.from_numpy(a) for a in _inputs(2)]
    out, compiled = serving.run(*warmed)
    assert compiled and serving.stats()["buckets_running_onnxruntime"] == {}
    assert_outputs_match(out, reference(function_model, *(w.numpy() for w in warmed))[0])
    other = [torch.from_numpy(a) for a in _inputs(3)]
    out, compiled = serving.run(*other)  # no bucket: onnxruntime answers
    assert not compiled and serving.misses == 1
    assert_outputs_match(out, reference(function_model, *(o.numpy() for o in other))[0])


def test_a_second_load_verifies_and_loads_the_cached_library_without_tvm(function_model, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            import numpy as np
            from torch_rc.onnx_model import load_onnx
            rng = np.random.default_rng(0)
            arrays = [rng.standard_normal(s).astype(np.float32) for s in ((4, 16), (16, 8), (8,))]
            m = load_onnx({str(function_model)!r}, arrays, options={{"select": "tvm", "cache_dir": {str(tmp_path / "c")!r}}})
            out = m(*arrays)
            print(json.dumps({{"cache": m.report.cache, "runs_on": m.report.runs_on,
                              "tvm": "tvm" in sys.modules, "error": m.report.max_abs_error}}))
            """
        )
    )
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0]["cache"] == "miss" and runs[0]["tvm"]
    assert runs[1]["cache"] == "hit" and not runs[1]["tvm"]  # no build, no TVM import
    assert runs[1]["runs_on"] == "tvm" and runs[1]["error"] < tolerances(torch.float32)[1]
