"""torch.compile(...).aot_compile, AOTCompiledFunction.save_compiled_function and
torch.compiler.load_compiled_function with the reasoning backend (torch 2.13)."""

import subprocess
import sys
import textwrap

import torch
from torch import nn

from torch_rc.backends.artifact import CompiledGraph
from torch_rc.testing import STRICT_TVM, assert_outputs_match


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
    from torch_rc.testing import assert_outputs_match
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
        import torch_rc.passes.build as build
        def no_build(*a, **k):
            raise AssertionError("a loaded artifact must not run TVM code generation")
        build.build_executable = no_build
        import torch_rc.backends.compiler as compiler
        compiler.build_executable = no_build
        with torch.no_grad():
            out = fn(model, x)
        assert_outputs_match(out, model(x))
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


# ---------------------------------------------------------------- stored artifacts are data
class _Payload:
    """What a crafted artifact could hold: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _compile_cached(model, x, cache_dir, **extra):
    options = {**STRICT_TVM, "cache_dir": str(cache_dir), **extra}
    torch._dynamo.reset()
    with torch.no_grad():
        return torch.compile(model, backend="reasoning", options=options)(x)


def _stored(cache_dir):
    from torch_rc.cache.location import make_store

    store = make_store(str(cache_dir / "store.sqlite"))
    (entry,) = store.artifacts()
    return store, entry.key, store.artifact_payload(entry.key)


def test_a_pickle_in_the_cache_is_never_unpickled(tmp_path):
    import pickle

    model, x = _model(), torch.randn(4, 16)
    _compile_cached(model, x, tmp_path)
    store, key, _ = _stored(tmp_path)
    marker = tmp_path / "pwned"
    crafted = pickle.dumps({"artifact_version": 3, "kernels": _Payload(marker)})
    store._conn.execute("UPDATE artifacts SET payload = ? WHERE key = ?", (crafted, key))
    out = _compile_cached(model, x, tmp_path)
    assert not marker.exists()
    assert_outputs_match(out, model(x))


def test_a_flipped_byte_in_a_kernel_library_is_refused_before_loading(tmp_path):
    from torch_rc.backends.artifact import artifact_problem, stored_kernels
    from torch_rc.options import Options

    model, x = _model(), torch.randn(4, 16)
    _compile_cached(model, x, tmp_path)
    store, key, payload = _stored(tmp_path)
    options = Options.resolve()
    assert stored_kernels(payload, options)
    damaged = bytearray(payload)
    middle = len(damaged) - 2000  # inside the last kernel library, past the header
    damaged[middle : middle + 16] = bytes(b ^ 0xFF for b in damaged[middle : middle + 16])
    assert "damaged" in artifact_problem(bytes(damaged), options)
    assert stored_kernels(bytes(damaged), options) is None
    store._conn.execute("UPDATE artifacts SET payload = ? WHERE key = ?", (bytes(damaged), key))
    out = _compile_cached(model, x, tmp_path)  # refused, rebuilt; the process lives on
    assert_outputs_match(out, model(x))


def test_only_trusted_signers_are_loaded(tmp_path):
    from torch_rc.backends.artifact import ARTIFACT_VERSION, stored_kernels
    from torch_rc.cache.payload import pack
    from torch_rc.cache.signing import keyring
    from torch_rc.options import Options

    other = keyring(str(tmp_path / "build-machine"))
    data = pack({"artifact_version": ARTIFACT_VERSION, "kernels": {}}, {}, other)
    assert stored_kernels(data, Options.resolve()) is None
    trusted = Options.resolve({"trusted_keys": str(tmp_path / "build-machine" / "signing.pub")})
    assert stored_kernels(data, trusted) == {}
    assert stored_kernels(data, Options.resolve({"trust_unsigned": True})) == {}
    # A header edited after signing breaks the signature (same length, one value changed).
    forged = data.replace(b'"format": 2', b'"format": 3', 1)
    assert forged != data and stored_kernels(forged, trusted) is None


def test_a_held_compile_lock_does_not_block_a_replica(tmp_path, caplog):
    import fcntl

    model, x = _model(), torch.randn(4, 16)
    _compile_cached(model, x, tmp_path / "a")
    _, key, _ = _stored(tmp_path / "a")
    (tmp_path / "b" / "locks").mkdir(parents=True)
    # Another process building the same graph holds its lock (flock: per open file, so an open
    # file of this process conflicts too).
    with open(tmp_path / "b" / "locks" / f"{key[:64]}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = _compile_cached(model, x, tmp_path / "b", lock_timeout_s=0.3, tune="never")
    assert_outputs_match(out, model(x))
    assert "compiling it here without the cache" in caplog.text
