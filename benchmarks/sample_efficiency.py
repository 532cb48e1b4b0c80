"""Sample efficiency of the tuners, side by side in one run: MetaSchedule's evolutionary search vs
MCTS with the built-in proposer vs MCTS with transfer from another shape of the same operator
(and MCTS with an LLM, or a model pool, when an endpoint is given), on serving kernels; and each
tuned kernel against PyTorch on the same shape.

Every kernel is a PyTorch module or function; its TIR is what torch_rc's own lowering produces
(``torch_rc.tune`` with one trial, in a scratch cache: weights lifted, operators fused), so the
kernels are the ones users get. For each kernel, method and seed: the best verified latency after
every measurement (a sample is a real build + check + timed run). Reported, with medians over
seeds:

* speedup over the untuned kernel at each budget (the paper's measure), and the ratio to
  evolutionary's at the same budget;
* samples each method needs to reach evolutionary's best at the full budget;
* the best tuned kernel against ``torch`` on the same shape (ratio > 1: TVM faster), and against
  torch_rc's default schedule (what an untuned build runs).
* the headroom at 64 samples: the fastest kernel found anywhere in the run over evolutionary's
  best at 64, the most any method could have been ahead of it there.

``mcts`` and ``mcts-transfer`` also start from the tiles :mod:`torch_rc.tuning.blocking` derives
from the machine (as a tuning session does); ``--ablate-blocking`` adds ``mcts-noblock``, the
same search without them (MCTS from the rules' pick of random states only). With ``--handoff N``
MCTS methods hand their remaining samples to MetaSchedule's evolution (seeded with the tree's
measurements) after N samples without a new best (option ``tune_handoff``; sessions do not by
default); ``--ablate-handoff`` then adds ``mcts-nohandoff``, the tree alone to the end. With
``--screen N`` MCTS methods score N random walks from their fastest measured states before each
measurement batch (option ``tune_screen``); ``--ablate-screen`` adds ``mcts-noscreen``, the same
search without it. ``--ablate-dedupe`` adds ``mcts-nodedupe``: MCTS measuring every state, even
one whose program (scheduled module) was measured under another state.

``mcts-transfer`` first tunes the kernel's *source* (the same operator at another shape, see
KERNELS) with MCTS for ``--source-samples`` samples (not counted: that is earlier work a cache
holds), then starts the target's search from the source's best trace adapted to the new extents.

    .venv/bin/python benchmarks/sample_efficiency.py --samples 512 --seeds 0,1,2 --out bench_out/se
    .venv/bin/python benchmarks/sample_efficiency.py --kernels gemv,softmax --samples 64 --seeds 0
    .venv/bin/python benchmarks/sample_efficiency.py --llm-url http://127.0.0.1:8080/v1 --llm-model gemma-3-270m

Writes results.json, summary.txt and curves.png (speedup vs samples, one panel per kernel).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_rc.options import Options

CHECKPOINTS = (8, 16, 32, 64, 128, 256, 512, 1024)
COLORS = {
    "evolutionary": "C0",
    "mcts": "C1",
    "mcts-transfer": "C2",
    "mcts-noblock": "C7",
    "mcts-nohandoff": "C8",
    "mcts-noscreen": "C9",
    "mcts-nodedupe": "tab:olive",
    "mcts-llm": "C3",
    "pool": "C4",
    "single-small": "C5",
    "single-large": "C6",
}


class Fn(nn.Module):
    """A function as a module (torch.compile and the timing treat both alike)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


def linear(m: int, k: int, n: int, *, bias: bool = False, gelu: bool = False) -> Any:
    def make() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        layers: list[nn.Module] = [nn.Linear(k, n, bias=bias)]
        if gelu:
            layers.append(nn.GELU())
        return nn.Sequential(*layers).eval(), (torch.randn(m, k),)

    return make


def bmm(b: int, m: int, k: int, n: int) -> Any:
    return lambda: (Fn(torch.bmm), (torch.randn(b, m, k), torch.randn(b, k, n)))


def conv(c: int, hw: int, o: int, *, groups: int = 1) -> Any:
    def make() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        layer = nn.Conv2d(c, o, 3, padding=1, groups=groups, bias=False).eval()
        return layer, (torch.randn(1, c, hw, hw),)

    return make


def softmax(rows: int, cols: int) -> Any:
    return lambda: (Fn(lambda x: torch.softmax(x, dim=-1)), (torch.randn(rows, cols),))


def layer_norm(rows: int, cols: int) -> Any:
    return lambda: (nn.LayerNorm(cols).eval(), (torch.randn(rows, cols),))


@dataclass(frozen=True)
class Kernel:
    make: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    source: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    about: str


KERNELS = {
    # Llama-style attention, 8 heads x 128 tokens x head dim 64: scores Q K^T and context P V.
    "attn_score": Kernel(bmm(8, 128, 64, 128), bmm(4, 64, 64, 64), "Q K^T, 8 heads x 128 tokens"),
    "attn_context": Kernel(bmm(8, 128, 128, 64), bmm(4, 64, 64, 64), "P V, 8 heads x 128 tokens"),
    "mlp_up": Kernel(linear(32, 512, 2048), linear(16, 256, 1024), "linear 32 tokens 512->2048"),
    "moe_gemm": Kernel(linear(16, 7168, 2048), linear(16, 4096, 1024), "MoE expert 16x7168->2048"),
    "conv2d": Kernel(conv(64, 28, 64), conv(32, 56, 32), "conv 3x3 64->64 at 28x28"),
    "bmm": Kernel(bmm(16, 64, 64, 64), bmm(8, 32, 32, 32), "batched GEMM 16 x 64^3"),
    "gemv": Kernel(linear(1, 2816, 1024), linear(1, 2048, 512), "decode GEMV 1 token 2816->1024"),
    "linear_gelu": Kernel(
        linear(64, 768, 3072, bias=True, gelu=True),
        linear(32, 512, 2048, bias=True, gelu=True),
        "linear+bias+GELU 64 tokens 768->3072",
    ),
    "softmax": Kernel(softmax(1024, 512), softmax(512, 256), "row softmax 1024 x 512"),
    "layernorm": Kernel(layer_norm(256, 768), layer_norm(128, 512), "layer norm 256 x 768"),
    "depthwise": Kernel(
        conv(64, 56, 64, groups=64), conv(32, 112, 32, groups=32), "depthwise 3x3 64ch 56x56"
    ),
}


def kernel_tir(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The heaviest fused kernel torch_rc's lowering makes of ``model`` (found by a one-trial
    ``torch_rc.tune`` in a scratch cache)."""
    import torch_rc

    with tempfile.TemporaryDirectory() as cache:
        report = torch_rc.tune(
            model,
            list(inputs),
            trials=1,
            options={
                "cache_dir": cache,
                "progress": False,
                "select": "tvm",
                "min_partition_size": 1,
            },
        )
    tasks = sorted(report.tasks, key=lambda t: t.flops * t.weight, reverse=True)
    if not tasks:
        raise RuntimeError("torch_rc lowered no TVM kernel for this model")
    return tasks[0].mod, len(tasks)


def torch_latency(model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int = 9) -> float:
    """Median seconds per call of ``model`` in eager PyTorch (each repeat at least 10 ms)."""
    with torch.no_grad():
        for _ in range(3):
            model(*inputs)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 0.01:
            model(*inputs)
            n += 1
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                model(*inputs)
            times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def _source_traces(source: Any, target: Any, hw: Any, seed: int, samples: int, args: Any) -> list:
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.rules import RuleProposer
    from torch_rc.tuning.space import DesignSpace
    from torch_rc.tuning.transfer import trace_json
    from torch_rc.tuning.tuner import tune_workload

    space = DesignSpace(source, target, seed=1 + seed)
    measurer = Measurer(target, repeats=args.repeats, min_repeat_ms=args.min_repeat_ms)
    result = tune_workload(
        space,
        measurer,
        proposer=RuleProposer(space, hw),
        hardware=hw,
        trials=samples,
        seed=seed,
        blocking=True,
        handoff=args.handoff,
        screen=args.screen,
    )
    if result.best_trace is None:
        return []
    return [("source", trace_json(result.best_trace))]


def _proposer(method: str, space: Any, hw: Any, args: Any, pool_models: list) -> Any:
    from torch_rc.tuning.llm_client import LLMClient, LLMConfig
    from torch_rc.tuning.llm_proposer import LLMProposer
    from torch_rc.tuning.rules import RuleProposer

    if method in ("pool", "single-small", "single-large"):
        from torch_rc.tuning.pool import PoolProposer

        chosen = {
            "pool": pool_models,
            "single-small": pool_models[:1],
            "single-large": pool_models[-1:],
        }[method]
        return PoolProposer(space, hw, chosen)
    if method == "mcts-llm":
        config = LLMConfig(
            base_url=args.llm_url, model=args.llm_model, api_key=args.llm_key, mode=args.llm_mode
        )
        return LLMProposer(space, hw, LLMClient(config), fallback=RuleProposer(space, hw))
    return RuleProposer(space, hw)


def run(args: Any) -> dict:
    from torch_rc.platform.hardware import host_hardware
    from torch_rc.platform.tvm_shim import tvm_api
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.session import _default_latency
    from torch_rc.tuning.space import DesignSpace
    from torch_rc.tuning.transfer import transferred_states
    from torch_rc.tuning.tuner import measure_untuned, tune_workload

    hw = host_hardware()
    torch.set_num_threads(hw.cores)
    target = tvm_api().cpu_target(hw.cores)
    methods = ["evolutionary", "mcts", "mcts-transfer"] + (["mcts-llm"] if args.llm_url else [])
    methods += ["mcts-noblock"] if args.ablate_blocking else []
    methods += ["mcts-nohandoff"] if args.ablate_handoff else []
    methods += ["mcts-noscreen"] if args.ablate_screen else []
    methods += ["mcts-nodedupe"] if args.ablate_dedupe else []
    pool_models: list = []
    if args.pool:
        from torch_rc.tuning.pool import parse_pool

        pool_models = _reachable(parse_pool(args.pool, mode=args.llm_mode))
        if pool_models:
            methods += ["pool", "single-small", "single-large"]
    methods = [m for m in methods if m not in args.skip]
    results: dict = {
        "hardware": hw.describe(),
        "samples": args.samples,
        "seeds": args.seeds,
        "source_samples": args.source_samples,
        "torch": torch.__version__,
        "rollout_depth": args.rollout_depth,
        "handoff": args.handoff,
        "screen": args.screen,
        "threads": hw.cores,
        "kernels": {},
    }
    for name in args.kernels:
        kernel = KERNELS[name]
        torch.manual_seed(0)
        model, inputs = kernel.make()
        mod, count = kernel_tir(model, inputs)
        measurer = Measurer(target, repeats=args.repeats, min_repeat_ms=args.min_repeat_ms)
        space = DesignSpace(mod, target, seed=1)
        untuned = measure_untuned(space, measurer)
        default = _default_latency(mod, measurer)
        torch_s = torch_latency(model, inputs)
        entry: dict = {
            "about": kernel.about,
            "kernels_in_model": count,
            "untuned_s": untuned,
            "default_s": default,
            "torch_s": torch_s,
            "runs": {},
        }
        results["kernels"][name] = entry  # filled run by run, written after each (see below)
        print(
            f"{name} ({kernel.about}; {count} kernel(s), the heaviest tuned): untuned "
            f"{untuned * 1e3:.3f} ms, torch_rc default {default * 1e3 if default else math.nan:.3f}"
            f" ms, torch {torch_s * 1e3:.3f} ms",
            flush=True,
        )
        source_mod = None
        for seed in args.seeds:
            for method in methods:
                space = DesignSpace(mod, target, seed=1 + seed)
                transfer: list = []
                extra: dict = {}
                if method == "mcts-transfer":
                    if source_mod is None:
                        torch.manual_seed(0)
                        source_mod, _ = kernel_tir(*kernel.source())
                    started = time.monotonic()
                    traces = _source_traces(source_mod, target, hw, seed, args.source_samples, args)
                    found = transferred_states(space, traces)
                    transfer = [t.state for t in found]
                    extra = {"transferred": len(transfer), "source_s": time.monotonic() - started}
                start = time.monotonic()
                result = tune_workload(
                    space,
                    measurer,
                    method="evolutionary" if method == "evolutionary" else "mcts",
                    proposer=_proposer(method, space, hw, args, pool_models),
                    hardware=hw,
                    trials=args.samples,
                    seed=seed,
                    transfer=transfer,
                    blocking=method != "mcts-noblock",
                    rollout_depth=args.rollout_depth,
                    handoff=0 if method == "mcts-nohandoff" else args.handoff,
                    screen=0 if method == "mcts-noscreen" else args.screen,
                    dedupe=method != "mcts-nodedupe",
                )
                seconds = time.monotonic() - start
                entry["runs"].setdefault(method, []).append(
                    {
                        "seed": seed,
                        "curve": result.curve,
                        "best_s": result.best_latency_s,
                        "seconds": seconds,
                        "stats": _jsonable(result.stats),
                        **extra,
                    }
                )
                best = result.best_latency_s or math.nan
                print(
                    f"  {method:13s} seed {seed}: best {best * 1e3:.4f} ms, {untuned / best:.1f}x "
                    f"untuned, {torch_s / best:.2f}x torch, {result.samples} samples, "
                    f"{seconds:.0f} s, screened {result.stats.get('screened', '-')}, "
                    f"reused {result.stats.get('reused', 0)}"
                    + (f", transferred {extra['transferred']}" if extra else ""),
                    flush=True,
                )
                if args.out:  # after every run: a stopped run keeps what it measured
                    partial = Path(args.out, "results.json.partial")
                    partial.write_text(json.dumps(results, indent=1))
                    partial.replace(Path(args.out, "results.json"))
    return results


def _jsonable(stats: dict) -> dict:
    return json.loads(json.dumps(stats, default=str))


def _reachable(models: list) -> list:
    """Pool entries whose endpoint answers /models; unreachable ones are reported and dropped."""
    import urllib.request

    from torch_rc.tuning.pool import _theta

    theta = _theta(models)
    ordered = sorted(models, key=lambda m: theta[m.name])
    out = []
    for m in ordered:
        url = (m.config.base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {m.config.api_key}"} if m.config.api_key else {}
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5).read()
            out.append(m)
            print(f"pool: {m.name} ({m.config.model}) reachable")
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable here
            print(f"pool: {m.name} ({m.config.model}) UNREACHABLE ({type(exc).__name__}); left out")
    if len(out) < 2:
        print("pool: fewer than two reachable models; pool methods skipped")
        return []
    return out


def best_after(curve: list, n: int) -> float | None:
    best = None
    for samples, latency in curve:
        if samples <= n:
            best = latency
    return best


def _geomean(values: list[float]) -> float:
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _headroom(results: dict, at: int) -> str:
    """How far ahead of evolutionary at ``at`` samples any method could have been: the fastest
    kernel found in this run (any method, seed or budget) over evolutionary's median best at ``at``
    samples, per kernel and as a geomean. A ratio near 1 means evolutionary had already found
    about the best schedule this run's search reached, so no search could be far ahead there."""
    parts, ratios = [], []
    for kernel, entry in results["kernels"].items():
        evo_runs = entry["runs"].get("evolutionary")
        found = [r["best_s"] for runs in entry["runs"].values() for r in runs if r["best_s"]]
        evo_at = [b for r in evo_runs or () if (b := best_after(r["curve"], at))]
        if not found or not evo_at:
            continue
        ratios.append(statistics.median(evo_at) / min(found))
        parts.append(f"{kernel} {ratios[-1]:.2f}x")
    return (
        f"headroom at {at}: fastest kernel found in this run / evolutionary's best at {at}: "
        f"geomean {_geomean(ratios):.2f}x ({', '.join(parts)})"
    )


def summarise(results: dict) -> str:
    budget = results["samples"]
    points = [c for c in CHECKPOINTS if c <= budget]
    if budget not in points:
        points.append(budget)
    lines = [
        f"{results['hardware']}; torch {results['torch']}, {results['threads']} threads; "
        f"seeds {results['seeds']}; transfer sources tuned with {results['source_samples']} samples",
        "",
        "speedup over the untuned kernel (median over seeds); reach = samples to evolutionary's "
        f"best at {budget} (median; '>' not reached); vs torch = best tuned kernel's speed / torch's;",
        "kept = what a tuning session keeps (the faster of the best tuned kernel and torch_rc's "
        "default schedule) / torch's",
        f"{'kernel':13s} {'method':13s} "
        + " ".join(f"{'@' + str(c):>8s}" for c in points)
        + f" {'reach':>6s} {'vs torch':>9s} {'kept':>6s}",
    ]
    geo: dict[str, dict[int, list[float]]] = {}
    reach: dict[str, list[float]] = {}
    vs_torch: dict[str, list[float]] = {}
    kept: dict[str, list[float]] = {}
    for kernel, entry in results["kernels"].items():
        untuned = entry["untuned_s"]
        evo_runs = entry["runs"].get("evolutionary")
        evo_best = statistics.median(r["best_s"] for r in evo_runs) if evo_runs else None
        for method, runs in entry["runs"].items():
            cells = []
            for c in points:
                values = [untuned / b for r in runs if (b := best_after(r["curve"], c))]
                cells.append(statistics.median(values) if values else math.nan)
                geo.setdefault(method, {}).setdefault(c, []).append(cells[-1])
            needed = []
            for r in runs:
                hit = None
                if evo_best is not None:
                    hit = next((n for n, lat in r["curve"] if lat <= evo_best), None)
                needed.append(hit if hit is not None else math.inf)
            median_needed = statistics.median(needed)
            reach.setdefault(method, []).append(median_needed)
            best = statistics.median(r["best_s"] for r in runs if r["best_s"])
            ratio = entry["torch_s"] / best
            vs_torch.setdefault(method, []).append(ratio)
            default = entry.get("default_s") or math.inf
            kept_ratio = entry["torch_s"] / min(best, default)
            kept.setdefault(method, []).append(kept_ratio)
            shown = f">{budget}" if median_needed == math.inf else str(int(median_needed))
            lines.append(
                f"{kernel:13s} {method:13s} "
                + " ".join(f"{s:7.1f}x" for s in cells)
                + f" {shown:>6s} {ratio:8.2f}x {kept_ratio:5.2f}x"
            )
    lines += [
        "",
        "geomean over kernels (speedup over untuned; ratio to evolutionary at each budget)",
    ]
    evo = geo.get("evolutionary", {})
    for method, by_budget in geo.items():
        cells = [_geomean(by_budget[c]) for c in points]
        ratios = [
            _geomean([a / b for a, b in zip(by_budget[c], evo.get(c, []), strict=True)])
            if evo
            else math.nan
            for c in points
        ]
        lines.append(
            f"{'':13s} {method:13s} "
            + " ".join(f"{s:7.1f}x" for s in cells)
            + f"   vs torch {_geomean(vs_torch[method]):.2f}x"
        )
        if method != "evolutionary" and evo:
            lines.append(f"{'':13s} {'  / evo':13s} " + " ".join(f"{r:7.2f}x" for r in ratios))
    lines += ["", "goals"]
    if evo and 64 in points:
        for method in geo:
            if method == "evolutionary":
                continue
            r64 = _geomean([a / b for a, b in zip(geo[method][64], evo[64], strict=True)])
            lines.append(f"  {method}: {r64:.2f}x evolutionary's speedup at 64 (goal >= 1.5x)")
        lines.append("  " + _headroom(results, 64))
    for method, needed in reach.items():
        if method == "evolutionary":
            continue
        within = sum(n <= budget / 5 for n in needed)
        lines.append(
            f"  {method}: reached evolutionary's {budget}-sample best within {budget // 5} samples "
            f"on {within} of {len(needed)} kernels (goal: all)"
        )
    for method, ratios in vs_torch.items():
        slow = [k for k, r in zip(results["kernels"], ratios, strict=True) if r < 0.8]
        lines.append(
            f"  {method}: {len(ratios) - len(slow)} of {len(ratios)} kernels within 0.8x of torch"
            + (f" (not: {', '.join(slow)})" if slow else "")
        )
        slow_kept = [k for k, r in zip(results["kernels"], kept[method], strict=True) if r < 0.8]
        lines.append(
            f"  {method}, as kept: {len(ratios) - len(slow_kept)} of {len(ratios)} kernels within "
            "0.8x of torch" + (f" (not: {', '.join(slow_kept)})" if slow_kept else "")
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = list(results["kernels"])
    cols = min(4, len(kernels))
    rows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, kernel in zip(axes.flat, kernels, strict=False):
        entry = results["kernels"][kernel]
        for method, runs in entry["runs"].items():
            for i, r in enumerate(runs):
                xs = [n for n, _ in r["curve"]]
                ys = [entry["untuned_s"] / latency for _, latency in r["curve"]]
                ax.step(
                    xs,
                    ys,
                    where="post",
                    label=method if i == 0 else None,
                    color=COLORS.get(method, "C9"),
                    alpha=0.7,
                )
        ax.axhline(entry["untuned_s"] / entry["torch_s"], color="k", ls="--", lw=1, label="torch")
        if entry.get("default_s"):
            ax.axhline(
                entry["untuned_s"] / entry["default_s"],
                color="0.5",
                ls=":",
                lw=1,
                label="torch_rc default",
            )
        ax.set_title(kernel, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("measured samples")
        ax.set_ylabel("speedup over untuned")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(kernels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kernels",
        default=",".join(KERNELS),
        help=f"comma-separated subset of {', '.join(KERNELS)}",
    )
    parser.add_argument(
        "--samples", type=int, default=512, help="real measurements per run (default 512)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--source-samples",
        type=int,
        default=64,
        help="samples spent tuning each transfer source (default 64; not counted)",
    )
    parser.add_argument(
        "--rollout-depth",
        type=int,
        default=0,
        help="MCTS cost-model rollout steps per new child (default 0, as tuning sessions: no "
        "screening)",
    )
    parser.add_argument(
        "--ablate-blocking",
        action="store_true",
        help="add mcts-noblock: MCTS without the starting tiles derived from the machine",
    )
    parser.add_argument(
        "--handoff",
        type=int,
        default=Options().tune_handoff,
        help="MCTS hands its remaining samples to MetaSchedule's evolution, seeded with what the "
        "tree measured, after this many samples without a new best (default "
        f"{Options().tune_handoff}, as tuning sessions: option tune_handoff; 0: never)",
    )
    parser.add_argument(
        "--ablate-handoff",
        action="store_true",
        help="add mcts-nohandoff: MCTS that never hands off to the evolution (needs --handoff)",
    )
    parser.add_argument(
        "--screen",
        type=int,
        default=Options().tune_screen,
        help="MCTS scores this many random walks from its fastest measured schedules before each "
        f"measurement batch (default {Options().tune_screen}, as tuning sessions: option "
        "tune_screen; 0: none)",
    )
    parser.add_argument(
        "--ablate-screen",
        action="store_true",
        help="add mcts-noscreen: MCTS without population screening (needs --screen)",
    )
    parser.add_argument(
        "--ablate-dedupe",
        action="store_true",
        help="add mcts-nodedupe: MCTS that measures every state, even one whose program was "
        "measured under another state",
    )
    parser.add_argument("--skip", default="", help="methods to leave out, e.g. evolutionary")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-repeat-ms", type=int, default=10)
    parser.add_argument(
        "--llm-url", default="", help="OpenAI-compatible endpoint; adds the mcts-llm method"
    )
    parser.add_argument("--llm-model", default="gemma-3-270m")
    parser.add_argument("--llm-key", default=os.environ.get("TORCH_RC_LLM_API_KEY", ""))
    parser.add_argument("--llm-mode", default="values", choices=["values", "mutators"])
    parser.add_argument(
        "--pool",
        default="",
        help="a model pool (JSON list or @file.json, see torch_rc/tuning/pool.py): "
        "adds pool, single-small and single-large",
    )
    parser.add_argument("--out", default="bench_out/sample_efficiency", help="output directory")
    parser.add_argument(
        "--summarise",
        default="",
        help="only summarise an earlier run (its results.json, or the folder holding it): print "
        "the table and rewrite summary.txt and curves.png beside it",
    )
    args = parser.parse_args()
    if args.handoff < 0:
        parser.error(f"--handoff must be >= 0, got {args.handoff}")
    if args.screen < 0:
        parser.error(f"--screen must be >= 0, got {args.screen}")
    if args.ablate_screen and not args.screen:
        parser.error("--ablate-screen compares against --screen N: give N > 0")
    if args.ablate_handoff and not args.handoff:
        parser.error("--ablate-handoff compares against --handoff N: give N > 0")
    if args.summarise:
        path = Path(args.summarise)
        path = path / "results.json" if path.is_dir() else path
        results = json.loads(path.read_text())
        table = summarise(results)
        (path.parent / "summary.txt").write_text(table + "\n")
        plot(results, path.parent / "curves.png")
        print(table)
        return
    args.kernels = [k for k in args.kernels.split(",") if k]
    unknown = set(args.kernels) - set(KERNELS)
    if unknown:
        parser.error(f"unknown kernels {sorted(unknown)}; known: {', '.join(KERNELS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.skip = {m for m in args.skip.split(",") if m}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    table = summarise(results)
    (out / "summary.txt").write_text(table + "\n")
    plot(results, out / "curves.png")
    print(table)
    print(f"wrote {out}/results.json, summary.txt, curves.png")


if __name__ == "__main__":
    main()
