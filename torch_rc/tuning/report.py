"""Render a tuning run log (``<cache_dir>/runs/*.json``): tables, the chosen transformations with
their rationale, and a PNG of best latency vs measured samples per kernel."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["latest_run", "load_run", "print_run", "plot_run"]


def latest_run(directory: Path) -> Path | None:
    runs = sorted(directory.glob("run-*.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def load_run(path: Path) -> dict[str, Any]:
    """The run log at ``path``.

    Raises:
        ValueError: Not a tuning run log (the message names the file).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable tuning run log: {exc}") from None
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError(f"{path} is not a tuning run log (no 'tasks')")
    return data


def _ms(value: float | None) -> str:
    return f"{value * 1e3:.4f}" if value else "-"


def print_run(run: dict[str, Any], console: Console, steps: int = 8) -> None:
    console.print(
        f"[bold]tuning run[/] method {run['method']}, proposer {run['proposer']}, "
        f"{run['trials']} trials budget, {run['seconds']} s"
        + (" [yellow](interrupted)[/]" if run.get("interrupted") else "")
    )
    console.print(run.get("hardware", ""))
    projected = run.get("projected") or {}
    if projected.get("default_s") and projected.get("tuned_s"):
        before, after = projected["default_s"], projected["tuned_s"]
        console.print(
            f"kernel time per inference (each kernel's latency x its calls per inference): "
            f"{_ms(before)} ms with default schedules -> {_ms(after)} ms tuned "
            f"({before / after:.2f}x)"
        )
    measuring = run.get("measuring") or {}
    if measuring.get("where") == "rpc":
        spread = ", ".join(f"{k} {v}" for k, v in (measuring.get("by_server") or {}).items())
        faults = ", ".join(
            f"{measuring[k]} {k}" for k in ("retries", "timeouts", "refused") if measuring.get(k)
        )
        console.print(
            f"measured through the RPC tracker {measuring.get('tracker')} (key "
            f"{measuring.get('key')}): {measuring.get('measured', 0)} measurements in "
            f"{measuring.get('seconds', 0)} s on {spread or 'no server'}"
            + (f"; {faults}" if faults else "")
        )
    if run.get("stopped"):
        console.print(f"[yellow]stopped early: {run['stopped']}[/]")
    graph = run.get("graph") or {}
    if graph.get("eager_ms") and graph.get("compiled_ms"):
        console.print(
            f"the tuned graph: compiled {graph['compiled_ms']:.4f} ms, eager "
            f"{graph['eager_ms']:.4f} ms ({graph['eager_ms'] / graph['compiled_ms']:.2f}x); "
            f"it runs {graph.get('choice', '?')}"
        )
    table = Table(
        "kernel",
        "status",
        "samples",
        "default ms",
        "tuned ms",
        "vs default",
        "proposer",
        "LLM calls",
        "tokens",
        "fallback",
    )
    for task in run["tasks"]:
        stats = task.get("stats") or {}
        best, default = task.get("best_s"), task.get("default_s")
        ratio = f"{default / best:.2f}x" if best and default else "-"
        table.add_row(
            task["name"],
            task["status"] + (f" ({task['error']})" if task.get("error") else ""),
            str(task.get("samples", 0)),
            _ms(default),
            _ms(best),
            ratio,
            task.get("proposer", "-"),
            str(stats.get("calls", "-")),
            str(stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0))
            if "calls" in stats
            else "-",
            f"{stats['fallback_rate']:.0%}" if "fallback_rate" in stats else "-",
        )
    console.print(table)
    pools = [t for t in run["tasks"] if isinstance((t.get("stats") or {}).get("models"), dict)]
    if pools:
        _print_pool(pools, console)
    for task in run["tasks"]:
        if not task.get("steps"):
            continue
        console.print(f"[bold]{task['name']}[/]: path to the best schedule")
        for step in task["steps"][:steps]:
            latency = f"{step['latency_s'] * 1e3:.4f} ms" if step.get("latency_s") else "predicted"
            # LLM text and sources like "[llm:small]" must not be read as rich markup.
            console.print(escape(f"  [{step['source']}] {step['action']} -> {latency}"))
            if step.get("rationale"):
                console.print(escape(f"      why: {step['rationale']}"))
        if len(task["steps"]) > steps:
            console.print(f"  ... {len(task['steps']) - steps} more steps")


def _print_pool(tasks: list[dict[str, Any]], console: Console) -> None:
    """Per-model accounting of a model pool, summed over kernels."""
    totals: dict[str, dict[str, float]] = {}
    improvements: dict[str, int] = {}
    for task in tasks:
        for name, m in task["stats"]["models"].items():
            row = totals.setdefault(name, {})
            for key in (
                "calls",
                "accepted",
                "errors",
                "prompt_tokens",
                "completion_tokens",
                "cost",
                "escalations",
                "kept_escalations",
            ):
                row[key] = row.get(key, 0) + m.get(key, 0)
        for source, n in (task["stats"].get("improvements_by_source") or {}).items():
            improvements[source.removeprefix("llm:")] = (
                improvements.get(source.removeprefix("llm:"), 0) + n
            )
    calls = sum(r["calls"] for r in totals.values()) or 1
    found = sum(improvements.values()) or 1
    table = Table(
        "model",
        "calls",
        "share",
        "accepted",
        "errors",
        "tokens",
        "cost",
        "escalations (kept)",
        "improvements",
    )
    for name, r in totals.items():
        table.add_row(
            name,
            str(int(r["calls"])),
            f"{r['calls'] / calls:.0%}",
            str(int(r["accepted"])),
            str(int(r["errors"])),
            str(int(r["prompt_tokens"] + r["completion_tokens"])),
            f"{r['cost']:.4f}",
            f"{int(r['escalations'])} ({int(r['kept_escalations'])})",
            f"{improvements.get(name, 0) / found:.0%}",
        )
    console.print(
        "[bold]model pool[/] (improvements: share of new bests each model's proposals made)"
    )
    console.print(table)


def add_graph_timings(
    log_path: str, *, eager_ms: float | None, compiled_ms: float | None, choice: str
) -> None:
    """Record, in a run's log, the tuned graph's first-call timings against eager (known only
    after the run, when the compiled model is first called). A log that cannot be rewritten is
    left as it was."""
    path = Path(log_path)
    try:
        run = json.loads(path.read_text())
        run["graph"] = {"eager_ms": eager_ms, "compiled_ms": compiled_ms, "choice": choice}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, indent=1))
        tmp.replace(path)
    except (OSError, ValueError):
        pass


def _model_bars(run: dict[str, Any]) -> list[tuple[str, float]]:
    """The run's model-level numbers, as (label, ms): kernel time per inference with default
    schedules and tuned, and the tuned graph against eager (when the log has them)."""
    bars = []
    projected = run.get("projected") or {}
    if projected.get("default_s") and projected.get("tuned_s"):
        bars += [
            ("kernels, default schedules", projected["default_s"] * 1e3),
            ("kernels, tuned", projected["tuned_s"] * 1e3),
        ]
    graph = run.get("graph") or {}
    if graph.get("eager_ms") and graph.get("compiled_ms"):
        bars += [
            ("graph, eager (PyTorch)", graph["eager_ms"]),
            ("graph, compiled", graph["compiled_ms"]),
        ]
    return bars


def run_title(run: dict[str, Any]) -> str:
    """One line naming a run: when, how, how much, on what."""
    when = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created"]))
        if run.get("created")
        else ""
    )
    return (
        f"tuning run {when}: {run['method']}, proposer {run['proposer']}, {run['trials']} trials, "
        f"{run['seconds']} s; {str(run.get('hardware', '')).split(':')[0]}"
    ).replace("run :", "run:")


def plot_run(run: dict[str, Any], path: Path) -> int:
    """Best latency vs samples, one panel per tuned kernel; returns the number of panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in run["tasks"] if t.get("curve")]
    if not tasks:
        return 0
    model_panel = _model_bars(run)
    panels = len(tasks) + (1 if model_panel else 0)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        xs = [n for n, _ in task["curve"]]
        ys = [latency * 1e3 for _, latency in task["curve"]]
        ax.step(xs, ys, where="post", label=f"{task.get('proposer', '')} ({run['method']})")
        if task.get("default_s"):
            ax.axhline(
                task["default_s"] * 1e3, color="gray", linestyle="--", label="default schedule"
            )
        ax.set_title(task["name"], fontsize=9)
        ax.set_xlabel("measured samples")
        ax.set_ylabel("best latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if model_panel:
        ax = list(axes.flat)[len(tasks)]
        labels, values = zip(*model_panel, strict=True)
        ax.barh(labels, values, color=["gray", "tab:blue", "black", "tab:green"][: len(values)])
        ax.set_title("the model: kernels per inference, and the graph vs eager", fontsize=9)
        ax.set_xlabel("ms")
        ax.invert_yaxis()
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.suptitle(run_title(run), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(tasks)
