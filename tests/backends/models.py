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
