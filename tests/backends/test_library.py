"""Library kernels inside TVM programs: a large matrix product as PyTorch's kernel, small ones and
the epilogues in TVM, in one compiled graph, matching eager."""

import torch
import tvm_ffi
from torch import nn

import torch_rc
from torch_rc.backends.library import MIN_MACS
from torch_rc.testing import STRICT_TVM, assert_matches_eager


class BigAndSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = nn.Linear(512, 1024)  # 16 x 512 x 1024 = 8M multiply-adds: a library candidate
        self.small = nn.Linear(1024, 8)  # 128K: stays in TVM

    def forward(self, x):
        return self.small(torch.nn.functional.gelu(self.big(x)))


def _kernel_calls(compiled, model, x):
    (graph,) = torch_rc.explain(compiled, print_report=False).compiled
    (kernel,) = graph.kernels.values()
    names = []
    kernel._vm["set_instrument"](
        tvm_ffi.convert(lambda func, name, before, ret, *a: names.append(name) if before else 0)
    )
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)
    return kernel, [n for n in names if not n.startswith("vm.builtin")]


def test_library_and_tvm_products_coexist_in_one_graph_and_match_eager():
    assert 16 * 512 * 1024 >= MIN_MACS > 16 * 1024 * 8
    model, x = BigAndSmall().eval(), torch.randn(16, 512)
    compiled = torch.compile(
        model, backend="reasoning", options={**STRICT_TVM, "library": "always"}
    )
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)
    kernel, calls = _kernel_calls(compiled, model, x)
    assert kernel.signature.library == ("addmm 16x512 @ 512x1024 float32",)
    assert calls.count("torch_rc.library.mm") == 1  # the big product, from inside the VM
    tvm_kernels = [n for n in calls if not n.startswith("torch_rc.")]
    assert any("gelu" in n for n in tvm_kernels)  # its epilogue, in TVM
    assert any("matmul" in n for n in tvm_kernels)  # the small product, in TVM


def test_never_keeps_every_product_in_tvm():
    model, x = BigAndSmall().eval(), torch.randn(16, 512)
    compiled = torch.compile(model, backend="reasoning", options={**STRICT_TVM, "library": "never"})
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)
    kernel, calls = _kernel_calls(compiled, model, x)
    assert kernel.signature.library == () and not any(n.startswith("torch_rc.") for n in calls)


def test_measured_choice_is_reported_with_its_numbers_and_a_cached_kernel_reloads(tmp_path):
    model, x = BigAndSmall().eval(), torch.randn(16, 512)
    options = {**STRICT_TVM, "cache_dir": str(tmp_path)}
    compiled = torch.compile(model, backend="reasoning", options=options)
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)
    (part,) = torch_rc.explain(compiled, print_report=False).graphs[0].partitions
    (reason,) = part.library
    assert reason.startswith("addmm 16x512 @ 512x1024 float32 with gelu: ")
    assert "library" in reason and "TVM" in reason and "ms" in reason
    torch._dynamo.reset()  # a second compile loads the stored kernel (library calls included)
    again = torch.compile(model, backend="reasoning", options=options)
    with torch.no_grad():
        assert_matches_eager(again, model, x)
