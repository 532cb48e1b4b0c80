"""The public model set the backend is tested on: (name, factory) pairs, each factory returning
``(model, example_inputs)`` with random weights and random, non-zero inputs."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    # Fresh BatchNorm stats are 0/1: make them non-trivial so a wrong formula shows.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mlp():
    model = nn.Sequential(
        nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.SiLU(), nn.LayerNorm(64)
    )
    return model.eval(), (torch.randn(8, 32),)


def cnn_bn():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return _randomize_bn(model), (torch.randn(2, 3, 16, 16),)


def residual():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResidualBlock(8), ResidualBlock(8))
    return _randomize_bn(model), (torch.randn(2, 3, 16, 16),)


def depthwise():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        nn.Conv2d(16, 8, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return _randomize_bn(model), (torch.randn(2, 3, 16, 16),)


def encoder_layer():
    model = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return model.eval(), (torch.randn(2, 8, 32),)


def _hf(cls_name: str, config_name: str, inputs, **config):
    import transformers

    config_cls = getattr(transformers, config_name)
    model = getattr(transformers, cls_name)(config_cls(**config))
    return model.eval(), inputs


def gpt2():
    return _hf(
        "GPT2Model",
        "GPT2Config",
        (torch.randint(0, 128, (2, 12)),),
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=128,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )


def bert():
    return _hf(
        "BertModel",
        "BertConfig",
        (torch.randint(0, 128, (2, 12)),),
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=32,
    )


def llama():
    return _hf(
        "LlamaModel",
        "LlamaConfig",
        (torch.randint(0, 128, (2, 12)),),
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=32,
    )


def vit():
    return _hf(
        "ViTModel",
        "ViTConfig",
        (torch.randn(2, 3, 16, 16),),
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
    )


def t5_encoder():
    return _hf(
        "T5EncoderModel",
        "T5Config",
        (torch.randint(0, 128, (2, 12)),),
        num_layers=2,
        d_model=32,
        num_heads=4,
        d_kv=8,
        d_ff=64,
        vocab_size=128,
    )


SMALL_MODELS = [mlp, cnn_bn, residual, depthwise, encoder_layer]
TRANSFORMERS = [gpt2, bert, llama, vit, t5_encoder]


class DecodeStep(nn.Module):
    """One decoding step of a Llama-style decoder: RMSNorm, rotary-free grouped attention over a
    KV cache given as inputs (not mutated), a SwiGLU MLP, and the LM head. Hidden 1024, MLP 2816,
    16 heads of 64, 2 layers, vocabulary 8192, cache length 128: the GEMVs (one token) and small
    GEMMs (a batch of sequences) of LLM serving."""

    def __init__(self, hidden=1024, mlp=2816, heads=16, layers=2, vocab=8192):
        super().__init__()
        self.heads, self.dim = heads, hidden // heads
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.RMSNorm(hidden),
                        "qkv": nn.Linear(hidden, 3 * hidden, bias=False),
                        "out": nn.Linear(hidden, hidden, bias=False),
                        "norm2": nn.RMSNorm(hidden),
                        "gate_up": nn.Linear(hidden, 2 * mlp, bias=False),
                        "down": nn.Linear(mlp, hidden, bias=False),
                    }
                )
            )
        self.norm = nn.RMSNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens, caches):
        x = self.embed(tokens)  # (B, 1, H)
        batch = x.shape[0]
        for layer, (k_cache, v_cache) in zip(self.layers, caches, strict=True):
            q, k, v = layer["qkv"](layer["norm1"](x)).chunk(3, dim=-1)
            q, k, v = (t.view(batch, 1, self.heads, self.dim).transpose(1, 2) for t in (q, k, v))
            keys = torch.cat([k_cache, k], dim=2)
            values = torch.cat([v_cache, v], dim=2)
            attn = torch.nn.functional.scaled_dot_product_attention(q, keys, values)
            x = x + layer["out"](attn.transpose(1, 2).reshape(batch, 1, -1))
            gate, up = layer["gate_up"](layer["norm2"](x)).chunk(2, dim=-1)
            x = x + layer["down"](torch.nn.functional.silu(gate) * up)
        return self.head(self.norm(x))


def _decode(batch: int, cache: int = 128):
    torch.manual_seed(0)
    model = DecodeStep().eval()
    caches = [
        (torch.randn(batch, 16, cache, 64), torch.randn(batch, 16, cache, 64)) for _ in model.layers
    ]
    return model, (torch.randint(0, 8192, (batch, 1)), caches)


def llama_decode_b1():
    return _decode(1)


def llama_decode_b8():
    return _decode(8)


# Heavier serving shapes, for benchmarks (not run by the test suite).
DECODERS = [llama_decode_b1, llama_decode_b8]
