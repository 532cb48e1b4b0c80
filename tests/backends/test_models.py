"""Real models through torch.compile(backend="reasoning"), every partition forced onto TVM."""

import pytest
import torch

import torch_rc
from torch_rc.testing import STRICT_TVM, assert_matches_eager

from .models import SMALL_MODELS, TRANSFORMERS


@pytest.mark.parametrize("factory", SMALL_MODELS, ids=lambda f: f.__name__)
def test_small_models_match_eager_on_tvm(factory):
    model, inputs = factory()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    with torch.no_grad():
        assert_matches_eager(compiled, model, *inputs)


@pytest.mark.slow
@pytest.mark.parametrize("factory", TRANSFORMERS, ids=lambda f: f.__name__)
def test_transformers_match_eager_with_full_coverage(factory):
    model, inputs = factory()
    with torch.no_grad():
        report = torch_rc.explain(model, *inputs, options=STRICT_TVM, print_report=False)
        assert report.num_graphs == 1
        assert report.lowered_fraction >= 0.8, str(report)
        assert report.executed_fraction == report.lowered_fraction, str(report)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
        assert_matches_eager(compiled, model, *inputs)


def test_encoder_layer_with_grad_enabled_matches_and_backpropagates():
    # With grad enabled PyTorch does not take the fused fast path, so the layer decomposes into
    # ops TVM lowers; the backward runs in PyTorch through AOTAutograd.
    model, (x,) = factory_encoder()
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    out = compiled(x1)
    ref = model(x2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)


def factory_encoder():
    from .models import encoder_layer

    return encoder_layer()
