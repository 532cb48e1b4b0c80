"""Rendering of run logs: the per-kernel table, the path, per-model pool accounting, the PNG."""

import json

import pytest
from rich.console import Console

from torch_rc.tuning.report import (
    _model_bars,
    add_graph_timings,
    load_run,
    plot_run,
    print_run,
    run_title,
)

RUN = {
    "method": "mcts",
    "proposer": "pool",
    "trials": 8,
    "seconds": 3.0,
    "interrupted": False,
    "hardware": "CPU",
    "projected": {"default_s": 6e-4, "tuned_s": 2e-4},
    "tasks": [
        {
            "name": "fused_matmul",
            "key": "k",
            "weight": 1,
            "flops": 1.0,
            "trials": 8,
            "status": "tuned",
            "error": "",
            "default_s": 2e-4,
            "samples": 8,
            "best_s": 1e-4,
            "untuned_s": None,
            "proposer": "pool",
            "curve": [[1, 3e-4], [4, 1e-4]],
            "steps": [
                {
                    "action": "set d7 = [4, 4, 1, 8]",
                    "source": "llm:small",
                    "rationale": "vectorise j",
                    "latency_s": 1e-4,
                }
            ],
            "stats": {
                "calls": 3,
                "prompt_tokens": 300,
                "completion_tokens": 60,
                "fallback_rate": 0.25,
                "improvements_by_source": {"llm:small": 1, "root": 1},
                "models": {
                    "small": {
                        "calls": 2,
                        "accepted": 3,
                        "errors": 0,
                        "prompt_tokens": 200,
                        "completion_tokens": 40,
                        "cost": 0.001,
                        "escalations": 0,
                        "kept_escalations": 0,
                    },
                    "large": {
                        "calls": 1,
                        "accepted": 1,
                        "errors": 0,
                        "prompt_tokens": 100,
                        "completion_tokens": 20,
                        "cost": 0.5,
                        "escalations": 1,
                        "kept_escalations": 1,
                    },
                },
            },
        }
    ],
}


def test_report_shows_results_path_rationale_and_pool_accounting(tmp_path):
    console = Console(record=True, width=200)
    print_run(RUN, console)
    text = console.export_text()
    assert "2.00x" in text and "vectorise j" in text and "[llm:small] set d7" in text
    assert "0.6000 ms with default schedules -> 0.2000 ms tuned (3.00x)" in text
    assert "model pool" in text and "67%" in text and "1 (1)" in text and "50%" in text
    assert run_title({**RUN, "created": 2_721_600}).startswith("tuning run 1970-02-01")
    assert "mcts, proposer pool, 8 trials, 3.0 s; CPU" in run_title(RUN)
    assert plot_run(RUN, tmp_path / "c.png") == 1
    log = tmp_path / "run.json"
    log.write_text(json.dumps(RUN))
    add_graph_timings(str(log), eager_ms=0.9, compiled_ms=0.3, choice="compiled")
    run = load_run(log)
    assert run["graph"] == {"eager_ms": 0.9, "compiled_ms": 0.3, "choice": "compiled"}
    console = Console(record=True, width=200)
    print_run(run, console)
    assert "compiled 0.3000 ms, eager 0.9000 ms (3.00x); it runs compiled" in console.export_text()
    assert [label for label, _ in _model_bars(run)] == [
        "kernels, default schedules",
        "kernels, tuned",
        "graph, eager (PyTorch)",
        "graph, compiled",
    ]
    assert plot_run(run, tmp_path / "m.png") == 1  # kernel panels; the model panel beside them
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_load_run_names_bad_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tuning run log"):
        load_run(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps(RUN))
    assert load_run(tmp_path / "y.json")["proposer"] == "pool"
