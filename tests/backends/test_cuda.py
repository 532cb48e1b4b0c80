"""The CUDA path on a real GPU: numerics against eager, zero-copy hand-off on the current torch
stream, the per-partition choice, the artifact cache, and tuning. Skipped on machines without a
CUDA device; `python benchmarks/gpu_check.py` runs them (and the GPU benchmark) on a GPU machine.
What can be checked without a GPU (targets, keys, builds and nvcc for sm_80/sm_90, the GPU design
space) is in test_target.py, test_cross_compile.py and tests/tuning/test_gpu_space.py."""

import pytest
import torch

import torch_rc
from torch_rc.options import Options
from torch_rc.platform.target import GPUProperties, detect_target, local_target_keys
from torch_rc.testing import STRICT_TVM, assert_matches_eager, assert_outputs_match

from .models import SMALL_MODELS, TRANSFORMERS, mlp

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (run python benchmarks/gpu_check.py on a GPU machine)",
)


def on_gpu(factory):
    model, inputs = factory()
    return model.cuda().eval(), [x.cuda() if isinstance(x, torch.Tensor) else x for x in inputs]


def cuda_kernel(fn, *example):
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_rc.backends.lower import lower_partition
    from torch_rc.backends.runtime import TVMKernel
    from torch_rc.passes.build import build_executable

    gm = make_fx(fn)(*example)
    values = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    lowered = lower_partition(gm, values)
    target = detect_target(Options(), example[0].device)
    executable = build_executable(lowered.mod, target, Options())
    return TVMKernel.from_executable(
        executable, target, lowered.inputs, lowered.outputs, lowered.single_output, "k"
    )


def test_target_comes_from_the_devices_compute_capability():
    props = torch.cuda.get_device_properties(0)
    gpu = GPUProperties.from_torch(0)
    assert gpu.arch == f"sm_{props.major}{props.minor}"
    target = detect_target(Options(), torch.device("cuda", 0))
    assert str(target.target.kind.name) == "cuda" and str(target.target.arch) == gpu.arch
    assert target.key in local_target_keys(Options())


@pytest.mark.parametrize("factory", SMALL_MODELS, ids=lambda f: f.__name__)
def test_small_models_match_eager_on_cuda(factory):
    model, inputs = on_gpu(factory)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    with torch.no_grad():
        assert_matches_eager(compiled, model, *inputs)


@pytest.mark.slow
@pytest.mark.parametrize("factory", TRANSFORMERS, ids=lambda f: f.__name__)
def test_transformers_match_eager_on_cuda_with_full_coverage(factory):
    model, inputs = on_gpu(factory)
    with torch.no_grad():
        torch._dynamo.reset()
        report = torch_rc.explain(model, *inputs, options=STRICT_TVM, print_report=False)
        assert report.lowered_fraction >= 0.8, str(report)
        assert "cuda" in report.graphs[0].target, str(report)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
        assert_matches_eager(compiled, model, *inputs)


def test_outputs_stay_on_the_gpu_without_copies_through_torchs_allocator():
    x = torch.randn(64, 128, device="cuda")
    w = torch.randn(128, 32, device="cuda")
    kernel = cuda_kernel(lambda a, b: torch.relu(a @ b), x, w)
    kernel(x, w)  # the first call compiles the CUDA module (NVRTC/nvcc)
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
    out = kernel(x, w)
    after = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
    assert out.is_cuda and out.device == x.device
    assert after == before  # inputs went in as DLPack views; the output is TVM's own buffer
    assert_outputs_match(out, torch.relu(x @ w))


def test_kernel_runs_on_the_current_torch_stream():
    w = torch.randn(256, 256, device="cuda")
    source = torch.randn(256, 256, device="cuda")
    kernel = cuda_kernel(lambda a, b: a @ b, source, w)
    kernel(source, w)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()  # a non-blocking stream: no implicit ordering with stream 0
    with torch.cuda.stream(stream):
        x = torch.zeros(256, 256, device="cuda")
        torch.cuda._sleep(50_000_000)  # keep the stream busy so a wrongly ordered read would win
        x.copy_(source)
        out = kernel(x, w)
    stream.synchronize()
    torch.testing.assert_close(out, source @ w, rtol=1e-4, atol=1e-3)


def test_kernel_refuses_tensors_on_another_device():
    from torch_rc.errors import InputMismatchError

    x = torch.randn(8, 8, device="cuda")
    kernel = cuda_kernel(lambda a: a.sin(), x)
    with pytest.raises(InputMismatchError, match="is on cpu but the kernel was compiled for cuda"):
        kernel(x.cpu())


def test_never_slower_choice_is_timed_on_the_gpu():
    model, inputs = on_gpu(mlp)
    with torch.no_grad():
        torch._dynamo.reset()
        report = torch_rc.explain(model, *inputs, print_report=False)
    parts = [p for g in report.graphs for p in g.partitions]
    assert parts and all(p.status in ("tvm", "torch") for p in parts), str(report)
    assert all(p.torch_ms is not None and p.tvm_ms is not None for p in parts)


def test_cuda_artifacts_are_cached_and_reloaded(tmp_path):
    model, inputs = on_gpu(mlp)
    options = {**STRICT_TVM, "cache_dir": str(tmp_path)}
    caches = []
    for _ in range(2):
        torch._dynamo.reset()
        with torch.no_grad():
            report = torch_rc.explain(model, *inputs, options=options, print_report=False)
            caches.append(report.graphs[0].cache)
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="reasoning", options=options)
            assert_matches_eager(compiled, model, *inputs)
    assert caches == ["miss", "hit"]


def projection():
    """Big enough that tuning has room over dlight's default GPU schedules."""
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)
    )
    return model.eval(), (torch.randn(256, 1024),)


def test_tuned_gpu_kernels_beat_their_default_schedules(tmp_path):
    model, inputs = on_gpu(projection)
    with torch.no_grad():
        report = torch_rc.tune(model, inputs, trials=32, options={"cache_dir": str(tmp_path)})
    tasks = [t for run in report.runs for t in run.tasks]
    tuned = [t for t in tasks if t.status == "tuned"]
    assert tuned, [(t.name, t.status, t.error) for t in tasks]
    for task in tuned:  # stored only when faster than the default schedule (session.py)
        assert task.default_s is None or task.result.best_latency_s < task.default_s
    assert "GPU" in report.runs[0].hardware
    assert report.max_abs_error is not None and report.max_abs_error < 1e-3


def test_serving_model_serves_warmed_gpu_buckets(tmp_path):
    from torch_rc.serving import ServingModel, warmup

    model, inputs = on_gpu(mlp)
    cache = {"cache_dir": str(tmp_path)}
    warmup(model, inputs, shapes=[[(8, 32)], [(4, 32)]], options=cache)
    serving = ServingModel(model, inputs, [[(8, 32)], [(4, 32)]], options=cache)
    with torch.no_grad():
        out, compiled = serving.run(inputs[0])
        want = model(inputs[0])
    assert compiled and out.is_cuda
    assert_outputs_match(out, want)
    assert serving.stats()["cache_hits"] == 2 and serving.stats()["tuning_runs"] == 0
