"""explain(): the decisions in force in a compiled model (with call counters), or a fresh
analysis of an uncompiled one."""

import pytest
import torch
from torch import nn

import torch_rc
from torch_rc.errors import TorchRCError


class TwoGraphs(nn.Module):
    """A graph break between two linears: two compiled graphs, the second through a resume
    function."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        y = torch.nn.functional.gelu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(y).softmax(-1)


def test_explain_of_a_compiled_model_agrees_with_what_it_runs():
    model = TwoGraphs().eval()
    compiled = torch.compile(model, backend="reasoning")
    with torch.no_grad():
        for _ in range(7):
            compiled(torch.randn(16, 64))
    report = torch_rc.explain(compiled, print_report=False)
    assert report.mode == "compiled model" and report.num_graphs == 2
    for graph, counters in zip(report.graphs, report.calls(), strict=True):
        assert graph.decision is not None
        ran = counters["graph"]
        # The side the report says runs is the side that ran after the first call, every time.
        assert ran[graph.choice] == 6 and sum(ran.values()) == 6
        for part in graph.partitions:
            calls = counters["partitions"][part.name]
            if graph.choice == "eager":
                assert calls == {"tvm": 0, "torch": 0}  # the original graph ran instead
            else:
                side = "tvm" if part.status == "tvm" else "torch"
                assert calls[side] == 6 and sum(calls.values()) == 6


def test_explain_with_inputs_calls_the_compiled_model_once_and_reads_its_decisions():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    compiled = torch.compile(model, backend="reasoning")
    report = torch_rc.explain(compiled, torch.randn(2, 8), print_report=False)
    assert report.num_graphs == 1 and report.graphs[0].choice in ("compiled", "eager")
    assert "compiled model" in str(report)


def test_explain_of_an_uncalled_compiled_model_says_what_to_do():
    compiled = torch.compile(nn.Linear(4, 4), backend="reasoning")
    with pytest.raises(TorchRCError, match="call it once"):
        torch_rc.explain(compiled, print_report=False)
    with pytest.raises(TorchRCError, match="fresh analysis"):
        torch_rc.explain(compiled, options={"trials": 4}, print_report=False)


def test_fresh_analysis_never_tunes_unless_asked(tmp_path):
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU()).eval()
    report = torch_rc.explain(
        model,
        torch.randn(4, 32),
        options={"trials": 16, "cache_dir": str(tmp_path)},
        print_report=False,
    )
    assert report.mode == "fresh analysis"
    assert all(graph.tuning is None for graph in report.graphs)


def test_explain_names_each_matrix_products_choice_and_tuned_kernels():
    from torch_rc.backends.compiler import GraphReport, PartitionReport
    from torch_rc.explain import CoverageReport

    graph = GraphReport(index=0, target="llvm")
    part = PartitionReport("p", 3, status="tvm")
    part.library = ["16x512x1024 +gelu: library (library 0.420 ms vs TVM 0.590 ms ...)"]
    graph.partitions.append(part)
    graph.tuned_kernels = 2
    text = str(CoverageReport([graph]))
    assert "matrix product 16x512x1024 +gelu: library" in text
    assert "kernels built from tuned records: 2" in text
