"""A partition whose inputs live on another device than the graph's target runs in PyTorch."""

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from torch_rc.backends.compiler import _device_mismatch
from torch_rc.options import Options
from torch_rc.platform.target import KNOWN_GPUS, TargetInfo, detect_target, gpu_target_key


def call_with(*values):
    graph = torch.fx.Graph()
    args = []
    for index, value in enumerate(values):
        node = graph.placeholder(f"x{index}")
        node.meta["val"] = value
        args.append(node)
    return graph.call_module("part", tuple(args))


def test_cuda_partition_with_a_cpu_input_is_named():
    gpu = KNOWN_GPUS["h100"]
    target = TargetInfo("cuda", 2, "h100", gpu_target_key(gpu), 0, gpu)
    with FakeTensorMode():
        on_gpu = torch.empty(4, 4, device="cuda")
        on_cpu = torch.empty((), device="cpu")
    assert _device_mismatch(call_with(on_gpu, on_gpu), target) == ""
    assert _device_mismatch(call_with(on_gpu, on_cpu), target) == (
        "inputs on cpu: a cuda kernel needs them all on cuda:0"
    )


def test_cpu_partition_inputs_on_cpu_pass():
    target = detect_target(Options())
    assert _device_mismatch(call_with(torch.empty(2), 3), target) == ""
