"""Partitioning with unsupported ops, explain(), input checks and the first-call chooser."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import torch_rc
from torch_rc.backends.decisions import Machine
from torch_rc.backends.select import PartitionReport, SelectingPartition
from torch_rc.errors import InputMismatchError, VerificationError
from torch_rc.options import Options
from torch_rc.testing import STRICT_TVM, assert_matches_eager, assert_outputs_match


class WithUnsupported(nn.Module):
    """lgamma has no TVM converter: it must be split off and run by PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x):
        y = torch.relu(self.a(x)) * 2 + 1
        y = torch.lgamma(y.abs() + 1)
        return torch.tanh(self.b(y)) - y


def test_unsupported_op_is_split_off_and_explained():
    model, x = WithUnsupported().eval(), torch.randn(4, 16)
    report = torch_rc.explain(model, x, options=STRICT_TVM, print_report=False)
    assert report.num_partitions == 2
    fallbacks = {f.op: f for f in report.fallbacks()}
    assert list(fallbacks) == ["aten.lgamma.default"]
    assert fallbacks["aten.lgamma.default"].count == 1
    assert "no converter" in fallbacks["aten.lgamma.default"].reasons[0]
    assert 0 < report.lowered_fraction < 1
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)


def test_exclude_ops_forces_pytorch_with_reason():
    model, x = WithUnsupported().eval(), torch.randn(4, 16)
    report = torch_rc.explain(
        model, x, options={**STRICT_TVM, "exclude_ops": "tanh"}, print_report=False
    )
    reasons = {f.op: f.reasons for f in report.fallbacks()}
    assert reasons["aten.tanh.default"] == ("excluded by option 'exclude_ops'",)
    assert "aten.tanh.default" in str(report)


def test_explain_reports_measured_choice():
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    report = torch_rc.explain(
        model, torch.randn(16, 64), options={"strict": True}, print_report=False
    )
    (part,) = report.graphs[0].partitions
    assert part.status in ("tvm", "torch")
    assert part.tvm_ms is not None and part.torch_ms is not None
    assert part.decision is not None and part.decision.state in ("final", "provisional")
    # TVM runs only on a clear win, measured, never on a loss.
    if part.status == "tvm":
        assert part.tvm_ms < part.torch_ms and part.decision.state == "final"
        assert part.decision.comparison.high < 1 - 0.05
    graph = report.graphs[0]
    assert graph.choice in ("compiled", "eager")
    assert graph.decision is not None


def test_input_of_other_shape_recompiles_through_guards():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM, dynamic=False)
    with torch.no_grad():
        for batch in (2, 5):
            assert_matches_eager(compiled, model, torch.randn(batch, 8))


def _build_kernel(fn, *example, weights=()):
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_rc.backends.lower import lower_partition
    from torch_rc.backends.runtime import KernelSignature, TVMKernel
    from torch_rc.passes.build import build_executable
    from torch_rc.platform.target import detect_target

    gm = make_fx(fn)(*example)
    vals = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
    lowered = lower_partition(gm, vals, weights)
    target = detect_target(Options())
    ex = build_executable(lowered.mod, target, Options())
    signature = KernelSignature(
        tuple(lowered.inputs), tuple(lowered.outputs), lowered.single_output, lowered.weights
    )
    return TVMKernel.from_executable(ex, signature, "k", target)


def test_kernel_rejects_wrong_shape_with_both_shapes_named():
    x, w = torch.randn(3, 8), torch.randn(8, 4)
    kernel = _build_kernel(lambda a, b: torch.relu(a @ b), x, w)
    assert_outputs_match(kernel(x, w), torch.relu(x @ w))
    with pytest.raises(
        InputMismatchError,
        match=r"input 0 was compiled for \(3, 8\) float32 but received \(7, 8\) float32",
    ):
        kernel(torch.randn(7, 8), w)
    with pytest.raises(InputMismatchError, match="float64"):
        kernel(x.double(), w)
    # A CPU kernel never reads another device's memory (a CUDA tensor's pointer, say).
    with pytest.raises(
        InputMismatchError, match="input 1 is on meta but the kernel was compiled for cpu"
    ):
        kernel(x, torch.empty(8, 4, device="meta"))


def test_kernel_returns_tuples_and_takes_noncontiguous_inputs():
    x = torch.randn(8, 6)
    kernel = _build_kernel(lambda a: (a.sin(), a.cos() * 2), x)
    xt = torch.randn(6, 8).t()  # same shape, not contiguous
    sin, cos2 = kernel(xt)
    torch.testing.assert_close(sin, xt.sin())
    torch.testing.assert_close(cos2, xt.cos() * 2)


_MACHINE = Machine("test-cpu", 2)


class _WrongKernel:
    """A kernel that returns wrong numbers on demand (a fault the real TVM path cannot be asked for)."""

    def __call__(self, *args):
        return args[0] * 0 + 1.0


def test_mismatching_kernel_falls_back_or_raises_in_strict():
    eager = torch.fx.symbolic_trace(nn.ReLU())
    x = torch.randn(4, 4)
    report = PartitionReport(name="p", num_ops=1)
    part = SelectingPartition(eager, _WrongKernel(), report, Options(select="tvm"), _MACHINE)
    torch.testing.assert_close(part(x), torch.relu(x))
    assert report.status == "failed" and "differs from PyTorch" in report.reason
    torch.testing.assert_close(part(x), torch.relu(x))  # stays on PyTorch afterwards

    strict = SelectingPartition(
        eager, _WrongKernel(), PartitionReport(name="p", num_ops=1), Options(strict=True), _MACHINE
    )
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        strict(x)


def test_weight_only_work_runs_once_per_weight_version():
    # The transpose of w depends only on the weight: it is lifted out of the per-call function
    # and redone only when the weight is replaced or changed in place.
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    kernel = _build_kernel(lambda a, b: torch.relu(a @ b.t()), x, w, weights=(1,))
    assert kernel.signature.weights == (1,) and kernel.signature.runtime == (0,)
    assert_outputs_match(kernel(x, w), torch.relu(x @ w.t()))
    transformed = kernel._transformed
    assert_outputs_match(kernel(x * 2, w), torch.relu(2 * x @ w.t()))
    assert kernel._transformed is transformed  # not recomputed for a new activation
    with torch.no_grad():
        w.mul_(-1)  # in place: its version changes
    assert_outputs_match(kernel(x, w), torch.relu(x @ w.t()))
    assert kernel._transformed is not transformed
    other = torch.randn(4, 8)  # another tensor object
    assert_outputs_match(kernel(x, other), torch.relu(x @ other.t()))


def test_outputs_are_not_reused_between_calls():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)).eval()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    x1, x2 = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        first = compiled(x1)
        kept = first.clone()
        compiled(x2)
        torch.testing.assert_close(first, kept)


def test_entry_point_works_without_importing_torch_rc():
    code = (
        "import sys, torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)).eval()\n"
        "x = torch.randn(2, 8)\n"
        "with torch.no_grad():\n"
        "    y = torch.compile(m, backend='reasoning', options={'strict': True, 'select': 'tvm'})(x)\n"
        "torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-4)\n"
        "print('reasoning' in torch._dynamo.list_backends())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("True")


def test_bad_option_fails_compile_with_named_key():
    model = nn.Linear(4, 4)
    compiled = torch.compile(model, backend="reasoning", options={"selekt": "tvm"})
    with pytest.raises(Exception, match="did you mean 'select'"):
        compiled(torch.randn(2, 4))


def test_weight_transforms_run_once_not_on_every_call():
    # Counted in the VM: the weight transposes of the two linears run in main_transform_params
    # once per weight version, never among the kernels of a call.
    import tvm_ffi

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    x = torch.randn(4, 16)
    with torch.no_grad():
        compiled(x)
    (graph,) = torch_rc.explain(compiled, print_report=False).compiled
    (kernel,) = graph.kernels.values()
    assert kernel.signature.weights  # the linears' weights and biases
    calls = []
    kernel._vm["set_instrument"](
        tvm_ffi.convert(lambda func, name, before, ret, *args: calls.append(name) if before else 0)
    )
    with torch.no_grad():
        with torch.no_grad():
            model[0].weight.mul_(1.0)  # a new weight version: transforms run again, once
        for _ in range(3):
            assert_matches_eager(compiled, model, x)
    kernels = [name for name in calls if not name.startswith("vm.builtin")]
    transposes = [name for name in kernels if "transpose" in name]
    assert transposes and len(transposes) == len(set(transposes))  # each one ran once
    per_call = len(kernels) - len(transposes)
    assert per_call % 3 == 0 and per_call > 0  # the same kernels on each of the 3 calls


EMBEDDING_CHILD = """
import sys, torch
from torch import nn
from torch_rc.testing import STRICT_TVM, assert_outputs_match
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4)).eval()
compiled = torch.compile(model, backend="reasoning", options={**STRICT_TVM, "cache_dir": sys.argv[1]})
ids = torch.randint(0, 50, (2, 6))
with torch.no_grad():
    assert_outputs_match(compiled(ids), model(ids))
    for bad in (50, 10_000_000, -1):
        try:
            compiled(torch.tensor([[1, bad, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5]]))
        except IndexError as exc:
            print("raised:", exc)
"""


def test_an_out_of_range_embedding_index_raises_like_pytorch(tmp_path):
    # TVM builds the lookup in "fast mode": out of range it read other memory (a wrong answer,
    # or a crash for a large index). The kernel checks its index inputs first; the bounds are
    # part of the stored signature, so a process that loads the kernel from the cache checks too.
    script = tmp_path / "child.py"
    script.write_text(EMBEDDING_CHILD)
    for _ in range(2):  # built, then loaded from the cache
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line for line in result.stdout.splitlines() if line.startswith("raised:")]
        assert len(lines) == 3 and all("index out of range in self" in line for line in lines)
