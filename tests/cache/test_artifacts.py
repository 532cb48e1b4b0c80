"""torch.compile(...).aot_compile, AOTCompiledFunction.save_compiled_function and
torch.compiler.load_compiled_function with the reasoning backend (torch 2.13)."""

import subprocess
import sys
import textwrap

import torch
from torch import nn

from torch_rc.cache.artifacts import CompiledGraph
from torch_rc.testing import STRICT_TVM


def _model():
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8), nn.LayerNorm(8)).eval()


def test_backend_result_is_serializable_and_round_trips_in_process():
    from torch_rc.backends.dynamo import compile_graph
    from torch_rc.options import Options

    model, x = _model(), torch.randn(4, 16)
    made = []

    def backend(gm, example_inputs):
        compiled, _ = compile_graph(gm, example_inputs, Options(**STRICT_TVM))
        made.append(compiled)
        return compiled

    with torch.no_grad():
        torch.compile(model, backend=backend)(x)
    (artifact,) = made
    assert isinstance(artifact, CompiledGraph) and artifact.kernels
    data = CompiledGraph.serialize_compile_artifacts(artifact)
    loaded = CompiledGraph.deserialize_compile_artifacts(data)
    # Loaded kernels come from the stored libraries, not from a new build.
    assert loaded.kernels and all(k.library is not None for k in loaded.kernels.values())
    assert set(loaded.kernels) == set(artifact.kernels)


SAVE_AND_LOAD = textwrap.dedent(
    """
    import io, sys, torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8), nn.LayerNorm(8)).eval()
    x = torch.randn(4, 16)
    def run(model, x):
        return model(x)

    if sys.argv[1] == "save":
        fn = torch.compile(run, backend="reasoning", fullgraph=True,
                           options={"strict": True, "select": "tvm"})
        with torch.no_grad():
            aot = fn.aot_compile(((model, x), {}))
        # torch 2.13: saving is a method of the AOT result; loading is torch.compiler's function.
        aot.save_compiled_function(sys.argv[2])
        print("saved")
    else:
        with open(sys.argv[2], "rb") as f:
            fn = torch.compiler.load_compiled_function(f)
        import torch_rc.backends.build as build
        def no_build(*a, **k):
            raise AssertionError("a loaded artifact must not run TVM code generation")
        build.build_executable = no_build
        import torch_rc.backends.compiler as compiler
        compiler.build_executable = no_build
        with torch.no_grad():
            out = fn(model, x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
        print("loaded and matched")
    """
)


def test_aot_compile_save_and_load_in_a_fresh_process(tmp_path):
    path = tmp_path / "model.pt2"
    script = tmp_path / "run.py"
    script.write_text(SAVE_AND_LOAD)
    for step, expected in (("save", "saved"), ("load", "loaded and matched")):
        result = subprocess.run(
            [sys.executable, str(script), step, str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert expected in result.stdout
