"""The model set builds for CUDA GPUs (sm_80, sm_90) on a machine without one: dlight's GPU
schedules, TVM's CUDA codegen, and nvcc compiling the generated source for the architecture, as
the CUDA runtime does when the module is loaded on the GPU. Running it needs a GPU
(tests/backends/test_cuda.py, benchmarks/gpu_check.py)."""

import re

import pytest

from torch_rc.backends.cross_compile import (
    cross_compile,
    cuda_sources,
    nvcc_available,
    nvcc_compile,
)
from torch_rc.platform.target import KNOWN_GPUS, TargetInfo, gpu_target_key

from .models import SMALL_MODELS, TRANSFORMERS

needs_nvcc = pytest.mark.skipif(
    not nvcc_available(), reason="nvcc (CUDA toolkit) is not on PATH: CUDA sources not compiled"
)


def gpu_target(name: str) -> TargetInfo:
    gpu = KNOWN_GPUS[name]
    return TargetInfo("cuda", 2, gpu.describe(), gpu_target_key(gpu), 0, gpu)


def check_builds(factory, target):
    model, inputs = factory()
    built = cross_compile(model, inputs, target)
    assert built and sum(b.num_ops for b in built) > 0
    sources = [s for b in built for s in cuda_sources(b.executable)]
    assert len(sources) == len(built)
    for source in sources:
        # Every kernel is scheduled onto threads (an unscheduled one would not have built).
        assert "__global__" in source and "threadIdx.x" in source
    return sources


MODEL_SET = [pytest.param(f, id=f.__name__) for f in SMALL_MODELS] + [
    pytest.param(f, id=f.__name__, marks=pytest.mark.slow) for f in TRANSFORMERS
]


@needs_nvcc
@pytest.mark.parametrize("factory", MODEL_SET)
def test_model_set_builds_for_h100_and_compiles_with_nvcc(factory):
    target = gpu_target("h100")
    for source in check_builds(factory, target):
        assert nvcc_compile(source, target).startswith(b"\x50\xed\x55\xba")  # fatbin magic


@needs_nvcc
@pytest.mark.parametrize(("gpu", "arch"), [("a100", b"sm_80"), ("h100", b"sm_90")])
def test_fatbin_holds_code_for_the_targets_architecture(gpu, arch):
    target = gpu_target(gpu)
    (source,) = check_builds(SMALL_MODELS[0], target)
    fatbin = nvcc_compile(source, target)
    assert set(re.findall(rb"sm_\d+", fatbin)) == {arch}
