"""The decomposition table AOTAutograd traces with: PyTorch's core ATen set plus torch_rc's own.

torch_rc adds decompositions for fused inference fast paths that would otherwise reach the
partitioner as one opaque op (and so run entirely in PyTorch). Each returns ``NotImplemented`` for
the variants it does not cover, which keeps PyTorch's own kernel for them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["decomposition_table"]


def _transformer_encoder_layer_fwd(
    src: torch.Tensor,
    embed_dim: int,
    num_heads: int,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    use_gelu: bool,
    norm_first: bool,
    eps: float,
    norm_weight_1: torch.Tensor,
    norm_bias_1: torch.Tensor,
    norm_weight_2: torch.Tensor,
    norm_bias_2: torch.Tensor,
    ffn_weight_1: torch.Tensor,
    ffn_bias_1: torch.Tensor,
    ffn_weight_2: torch.Tensor,
    ffn_bias_2: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_type: int | None = None,
) -> Any:
    """``nn.TransformerEncoderLayer``'s inference fast path, in the order its C++ kernel uses
    (aten/src/ATen/native/transformers/transformer.cpp): attention, residual, norm, FFN, residual,
    norm (or the norms first with ``norm_first``). Only unmasked, dense, batched (3-D) inputs."""
    if mask is not None or src.is_nested or src.dim() != 3:
        return NotImplemented
    batch, length, _ = src.shape
    head_dim = embed_dim // num_heads

    def attention(x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, qkv_weight, qkv_bias).view(batch, length, 3, num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return F.linear(
            out.transpose(1, 2).reshape(batch, length, embed_dim), proj_weight, proj_bias
        )

    def feed_forward(x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(x, ffn_weight_1, ffn_bias_1)
        hidden = F.gelu(hidden) if use_gelu else F.relu(hidden)
        return F.linear(hidden, ffn_weight_2, ffn_bias_2)

    def norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (embed_dim,), weight, bias, eps)

    if norm_first:
        x = src + attention(norm(src, norm_weight_1, norm_bias_1))
        return x + feed_forward(norm(x, norm_weight_2, norm_bias_2))
    x = norm(src + attention(src), norm_weight_1, norm_bias_1)
    return norm(x + feed_forward(x), norm_weight_2, norm_bias_2)


@functools.cache
def decomposition_table() -> dict[Any, Any]:
    """Core ATen decompositions plus torch_rc's fast-path decompositions."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[torch.ops.aten._transformer_encoder_layer_fwd.default] = _transformer_encoder_layer_fwd
    return table
