"""Sample efficiency of the tuners: MetaSchedule evolutionary search vs MCTS (built-in rules) vs
MCTS with an LLM, on a suite of serving kernels, side by side in one run.

For each kernel, method and seed: the best verified latency after 8, 16, 32, ... samples (real
measurements), reported in the paper's terms: speedup = untuned latency / tuned latency; sample
efficiency = speedup / samples; samples each method needs to reach evolutionary search's best at the
full budget; speedup at equal budgets. Writes JSON and a PNG (best latency vs samples per kernel).

    .venv/bin/python benchmarks/sample_efficiency.py --samples 128 --seeds 0,1 --out bench_out
    .venv/bin/python benchmarks/sample_efficiency.py --llm-url http://127.0.0.1:8080/v1 --llm-model gemma-3-270m
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from torch_rc.platform.hardware import host_hardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.llm_client import LLMClient, LLMConfig
from torch_rc.tuning.llm_proposer import LLMProposer
from torch_rc.tuning.measure import Measurer
from torch_rc.tuning.rules import RuleProposer
from torch_rc.tuning.space import DesignSpace
from torch_rc.tuning.tuner import measure_untuned, tune_workload

CHECKPOINTS = (8, 16, 32, 64, 128, 256)


def _func(*tensors):
    return tvm_api().tvm.IRModule({"main": tvm_api().tvm.te.create_prim_func(list(tensors))})


def matmul(m, n, k, batch=None, transpose_b=False):
    te = tvm_api().tvm.te
    if batch is None:
        a = te.placeholder((m, k), name="A")
        b = te.placeholder((n, k) if transpose_b else (k, n), name="B")
        r = te.reduce_axis((0, k), name="k")
        c = te.compute(
            (m, n),
            lambda i, j: te.sum(a[i, r] * (b[j, r] if transpose_b else b[r, j]), axis=r),
            name="C",
        )
    else:
        a = te.placeholder((batch, m, k), name="A")
        b = te.placeholder((batch, n, k) if transpose_b else (batch, k, n), name="B")
        r = te.reduce_axis((0, k), name="k")
        c = te.compute(
            (batch, m, n),
            lambda h, i, j: te.sum(
                a[h, i, r] * (b[h, j, r] if transpose_b else b[h, r, j]), axis=r
            ),
            name="C",
        )
    return _func(a, b, c)


def conv2d(n, c, h, w, o, kh):
    te = tvm_api().tvm.te
    x = te.placeholder((n, c, h + kh - 1, w + kh - 1), name="X")
    k = te.placeholder((o, c, kh, kh), name="W")
    rc, ry, rx = (
        te.reduce_axis((0, c), "rc"),
        te.reduce_axis((0, kh), "ry"),
        te.reduce_axis((0, kh), "rx"),
    )
    y = te.compute(
        (n, o, h, w),
        lambda b, f, i, j: te.sum(x[b, rc, i + ry, j + rx] * k[f, rc, ry, rx], axis=[rc, ry, rx]),
        name="Y",
    )
    return _func(x, k, y)


KERNELS = {
    # Llama-style attention, 8 heads x 128 tokens x head dim 64: scores Q K^T and context P V.
    "attn_score": lambda: matmul(128, 128, 64, batch=8, transpose_b=True),
    "attn_context": lambda: matmul(128, 64, 128, batch=8),
    # MLP up projection of a small model: 32 tokens, 512 -> 2048.
    "mlp_up": lambda: matmul(32, 2048, 512),
    # The paper's MoE expert GEMM: A(1, 16, 7168) x B(7168, 2048), fp32.
    "moe_gemm": lambda: matmul(16, 2048, 7168, batch=1),
    # A vision conv: 1 x 64 x 28 x 28, 64 filters 3x3.
    "conv2d": lambda: conv2d(1, 64, 28, 28, 64, 3),
    # Batched GEMM.
    "bmm": lambda: matmul(64, 64, 64, batch=16),
}


def run(args) -> dict:
    hw = host_hardware()
    target = tvm_api().cpu_target(hw.cores)
    methods = ["evolutionary", "mcts-builtin"] + (["mcts-llm"] if args.llm_url else [])
    pool_models = []
    if args.pool:
        from torch_rc.tuning.pool import parse_pool

        pool_models = _reachable(parse_pool(args.pool, mode=args.llm_mode))
        if pool_models:
            methods += ["pool", "single-small", "single-large"]
    results: dict = {
        "hardware": hw.describe(),
        "samples": args.samples,
        "seeds": args.seeds,
        "kernels": {},
    }
    for name in args.kernels:
        space = DesignSpace(KERNELS[name](), target, seed=1)
        measurer = Measurer(target, repeats=args.repeats, min_repeat_ms=args.min_repeat_ms)
        untuned = measure_untuned(space, measurer)
        entry = {"untuned_s": untuned, "runs": {}}
        print(f"{name}: untuned {untuned * 1e3:.3f} ms", flush=True)
        for method in methods:
            for seed in args.seeds:
                space = DesignSpace(KERNELS[name](), target, seed=1 + seed)
                proposer = RuleProposer(space, hw)
                if method in ("pool", "single-small", "single-large"):
                    from torch_rc.tuning.pool import PoolProposer

                    chosen = {
                        "pool": pool_models,
                        "single-small": pool_models[:1],
                        "single-large": pool_models[-1:],
                    }[method]
                    proposer = PoolProposer(space, hw, chosen)
                if method == "mcts-llm":
                    config = LLMConfig(
                        base_url=args.llm_url,
                        model=args.llm_model,
                        api_key=args.llm_key,
                        mode=args.llm_mode,
                    )
                    proposer = LLMProposer(space, hw, LLMClient(config))
                start = time.monotonic()
                result = tune_workload(
                    space,
                    measurer,
                    method="evolutionary" if method == "evolutionary" else "mcts",
                    proposer=proposer,
                    hardware=hw,
                    trials=args.samples,
                    seed=seed,
                )
                if method in ("pool", "single-small", "single-large", "mcts-llm"):
                    st = result.stats
                    print(
                        f"    calls {st.get('calls')}, tokens {st.get('prompt_tokens', 0) + st.get('completion_tokens', 0)}, cost {st.get('cost', 0)}, fallback {st.get('fallback_rate')}"
                    )
                entry["runs"].setdefault(method, []).append(
                    {
                        "seed": seed,
                        "curve": result.curve,
                        "best_s": result.best_latency_s,
                        "seconds": time.monotonic() - start,
                        "stats": result.stats,
                    }
                )
                best = result.best_latency_s
                print(
                    f"  {method:13s} seed {seed}: best {best * 1e3:.3f} ms, speedup {untuned / best:.1f}x, {result.samples} samples, {time.monotonic() - start:.0f} s",
                    flush=True,
                )
        results["kernels"][name] = entry
    return results


def _reachable(models):
    """Pool entries whose endpoint answers /models; unreachable ones are reported and dropped."""
    import urllib.request

    from torch_rc.tuning.pool import _theta

    theta = _theta(models)
    ordered = sorted(models, key=lambda m: theta[m.name])
    out = []
    for m in ordered:
        url = (m.config.base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {m.config.api_key}"} if m.config.api_key else {}
        )
        try:
            urllib.request.urlopen(request, timeout=5).read()
            out.append(m)
            print(f"pool: {m.name} ({m.config.model}) reachable")
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable here
            print(f"pool: {m.name} ({m.config.model}) UNREACHABLE ({type(exc).__name__}); left out")
    if len(out) < 2:
        print("pool: fewer than two reachable models; pool methods skipped")
        return []
    return out


def best_after(curve, n):
    best = None
    for samples, latency in curve:
        if samples <= n:
            best = latency
    return best


def summarise(results: dict) -> str:
    budget = results["samples"]
    points = [c for c in CHECKPOINTS if c <= budget]
    lines = []
    header = (
        f"{'kernel':13s} {'method':13s} "
        + " ".join(f"{'@' + str(c):>7s}" for c in points)
        + "  samples-to-evo-best  eff@32"
    )
    lines.append("speedup over untuned (median over seeds)")
    lines.append(header)
    geo: dict[str, dict[int, list[float]]] = {}
    reach: dict[str, list[float]] = {}
    for kernel, entry in results["kernels"].items():
        untuned = entry["untuned_s"]
        evo_best = statistics.median(r["best_s"] for r in entry["runs"]["evolutionary"])
        for method, runs in entry["runs"].items():
            speedups = []
            for c in points:
                values = [untuned / b for r in runs if (b := best_after(r["curve"], c))]
                speedups.append(statistics.median(values) if values else float("nan"))
                geo.setdefault(method, {}).setdefault(c, []).append(speedups[-1])
            needed = []
            for r in runs:
                hit = next((n for n, latency in r["curve"] if latency <= evo_best), None)
                needed.append(hit if hit is not None else math.inf)
            reach.setdefault(method, []).append(statistics.median(needed))
            shown = statistics.median(needed)
            eff = speedups[points.index(32)] / 32 if 32 in points else float("nan")
            lines.append(
                f"{kernel:13s} {method:13s} "
                + " ".join(f"{s:6.1f}x" for s in speedups)
                + f"  {('>' + str(budget)) if shown == math.inf else int(shown):>18}  {eff:6.3f}"
            )
    lines.append("")
    lines.append("geomean speedup over kernels")
    for method, by_budget in geo.items():
        cells = []
        for c in points:
            values = [v for v in by_budget[c] if v == v and v > 0]
            cells.append(
                math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")
            )
        lines.append(f"{'':13s} {method:13s} " + " ".join(f"{s:6.1f}x" for s in cells))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = list(results["kernels"])
    cols = min(3, len(kernels))
    rows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
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
                    color={
                        "evolutionary": "C0",
                        "mcts-builtin": "C1",
                        "mcts-llm": "C2",
                        "pool": "C3",
                        "single-small": "C4",
                        "single-large": "C5",
                    }[method],
                    alpha=0.8,
                )
        ax.set_title(kernel)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("measured samples")
        ax.set_ylabel("speedup over untuned")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
        "--samples", type=int, default=128, help="real measurements per run (default 128)"
    )
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-repeat-ms", type=int, default=10)
    parser.add_argument(
        "--llm-url", default="", help="OpenAI-compatible endpoint; adds the mcts-llm method"
    )
    parser.add_argument("--llm-model", default="gemma-3-270m")
    parser.add_argument("--llm-key", default="")
    parser.add_argument("--llm-mode", default="values", choices=["values", "mutators"])
    parser.add_argument(
        "--pool",
        default="",
        help="a model pool (JSON list or @file.json, see torch_rc/tuning/pool.py): adds pool, single-small and single-large",
    )
    parser.add_argument("--out", default="bench_out/sample_efficiency", help="output directory")
    args = parser.parse_args()
    args.kernels = [k for k in args.kernels.split(",") if k]
    unknown = set(args.kernels) - set(KERNELS)
    if unknown:
        parser.error(f"unknown kernels {sorted(unknown)}; known: {', '.join(KERNELS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = summarise(results)
    (out / "summary.txt").write_text(table + "\n")
    plot(results, out / "curves.png")
    print(table)
    print(f"wrote {out}/results.json, summary.txt, curves.png")


if __name__ == "__main__":
    main()
