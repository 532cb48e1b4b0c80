"""The served model: a small transformer text classifier (deterministic weights from a seed, so
the warm-up machine, the replicas and the tests build the same model)."""

import torch

VOCAB = 1000


class TinyClassifier(torch.nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


def example_inputs() -> list[torch.Tensor]:
    return [torch.randint(0, VOCAB, (1, 16))]
