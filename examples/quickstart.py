"""torch_rc quickstart: compile a small transformer and a CNN with backend="reasoning".

Prints, for each model, eager vs reasoning latency, whether the outputs match, and the coverage
report (what runs on TVM, what falls back to PyTorch and why). No ``import torch_rc`` is needed
for torch.compile itself; it is imported here only for ``explain``.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import torch_rc


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * dim),
                    "proj": nn.Linear(dim, dim),
                    "norm2": nn.LayerNorm(dim),
                    "up": nn.Linear(dim, 4 * dim),
                    "down": nn.Linear(4 * dim, dim),
                }
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        b, t, d = x.shape
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["norm1"](x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + blk["proj"](att.transpose(1, 2).reshape(b, t, d))
            x = x + blk["down"](F.gelu(blk["up"](blk["norm2"](x))))
        return self.head(x)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def median_ms(fn, *args, runs: int = 20) -> float:
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    models = {
        "tiny transformer": (TinyTransformer().eval(), (torch.randint(0, 1000, (2, 32)),)),
        "small CNN": (small_cnn().eval(), (torch.randn(4, 3, 32, 32),)),
    }
    for name, (model, inputs) in models.items():
        print(f"\n=== {name} ===")
        with torch.no_grad():
            torch._dynamo.reset()
            start = time.perf_counter()
            compiled = torch.compile(model, backend="reasoning")
            out = compiled(*inputs)
            first_call = time.perf_counter() - start
            torch.testing.assert_close(out, model(*inputs), rtol=1e-4, atol=1e-4)
            eager = median_ms(model, *inputs)
            reasoning = median_ms(compiled, *inputs)
        print(f"matches eager: yes   first call (compile + choose): {first_call:.1f} s")
        print(
            f"latency: eager {eager:.3f} ms   reasoning {reasoning:.3f} ms   ({eager / reasoning:.2f}x)"
        )
        torch._dynamo.reset()
        torch_rc.explain(model, *inputs)


if __name__ == "__main__":
    main()
