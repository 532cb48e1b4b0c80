"""CUDA targets from compute capabilities, and target keys (no GPU needed)."""

import json

import pytest
import torch

from torch_rc.options import Options
from torch_rc.platform.target import (
    KNOWN_GPUS,
    GPUProperties,
    cuda_target_spec,
    describe_target_key,
    detect_target,
    gpu_target_key,
    host_target_key,
    local_target_keys,
)
from torch_rc.platform.tvm_shim import tvm_api


@pytest.mark.parametrize(("gpu", "arch"), [("h100", "sm_90"), ("a100", "sm_80")])
def test_cuda_target_is_built_from_the_compute_capability(gpu, arch):
    props = KNOWN_GPUS[gpu]
    spec = cuda_target_spec(props)
    assert spec["kind"] == "cuda" and spec["arch"] == arch
    assert spec["thread_warp_size"] == 32 and spec["max_shared_memory_per_block"] == 48 * 1024
    target = tvm_api().tvm.target.Target(spec, host=tvm_api().cpu_target(2))
    assert str(target.kind.name) == "cuda" and str(target.arch) == arch
    assert str(target.host.kind.name) == "llvm"


def test_compute_capability_maps_to_arch_names():
    assert GPUProperties("x", 8, 6, 84).arch == "sm_86"
    assert GPUProperties("x", 12, 0, 170).arch == "sm_120"


def test_gpu_keys_distinguish_architectures_and_models():
    h100, a100 = KNOWN_GPUS["h100"], KNOWN_GPUS["a100"]
    pcie = GPUProperties("NVIDIA H100 PCIe", 9, 0, 114)
    keys = {gpu_target_key(g) for g in (h100, a100, pcie)}
    assert len(keys) == 3
    assert host_target_key(Options()) not in keys
    assert json.loads(gpu_target_key(h100))["arch"] == "sm_90"
    assert describe_target_key(gpu_target_key(h100)) == "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)"
    assert describe_target_key(host_target_key(Options())).startswith("CPU ")


def test_cpu_graphs_keep_the_cpu_target():
    target = detect_target(Options(), torch.device("cpu"))
    assert target.kind == "cpu" and target.gpu is None
    assert target.torch_device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA devices")
def test_machine_without_gpu_has_only_its_cpu_key():
    assert local_target_keys(Options()) == [host_target_key(Options())]
