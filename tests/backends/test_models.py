"""Real models through torch.compile(backend="reasoning"), every partition forced onto TVM."""

import pytest
import torch

import torch_rc
from torch_rc.testing import STRICT_TVM, assert_matches_eager, assert_outputs_match

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
    assert_outputs_match(out, ref)
    out.sum().backward()
    ref.sum().backward()
    assert_outputs_match(x1.grad, x2.grad)


def factory_encoder():
    from .models import encoder_layer

    return encoder_layer()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_fast_path_is_decomposed_onto_tvm(norm_first, activation):
    layer = torch.nn.TransformerEncoderLayer(
        32, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first, activation=activation
    )
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 8, 32)
    report = torch_rc.explain(model, x, options=STRICT_TVM, print_report=False)
    assert report.lowered_fraction == 1.0, str(report)
    torch._dynamo.reset()
    with torch.no_grad():
        assert_matches_eager(
            torch.compile(model, backend="reasoning", options=STRICT_TVM), model, x
        )


def test_masked_encoder_fast_path_stays_in_pytorch_and_matches():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    x = torch.randn(2, 8, 32)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[1, 5:] = True
    with torch.no_grad():
        compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
        out = compiled(x, src_key_padding_mask=pad)
        assert_outputs_match(out, model(x, src_key_padding_mask=pad))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_other_float_dtypes_match_eager(dtype):
    model = (
        torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
        .to(dtype)
        .eval()
    )
    x = torch.randn(4, 16, dtype=dtype)
    compiled = torch.compile(model, backend="reasoning", options=STRICT_TVM)
    with torch.no_grad():
        assert_matches_eager(compiled, model, x)


def test_float64_convolution_stays_in_pytorch_with_reason():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    report = torch_rc.explain(model, x, options=STRICT_TVM, print_report=False)
    reasons = {f.op: f.reasons for f in report.fallbacks()}
    assert "float32 only" in reasons["aten.convolution.default"][0]
    torch._dynamo.reset()
    with torch.no_grad():
        assert_matches_eager(
            torch.compile(model, backend="reasoning", options=STRICT_TVM), model, x
        )
