"""The networks: the paper's layer stack, shapes for the presets' pixel counts, heads per estimator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zfast.models import PaperCNN, ResNet1D, build_model, head_size


def test_paper_cnn_is_the_published_stack():
    model = PaperCNN(1780, 800)
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.ConstantPad1d, nn.Conv1d, nn.ReLU, nn.MaxPool1d, nn.BatchNorm1d] * 3
    for pad, conv in zip(model.features[0::5], model.features[1::5]):
        assert pad.padding == (3, 4) and conv.out_channels == 16 and conv.kernel_size == (8,)  # Keras "same"
    for pool in model.features[3::5]:
        assert pool.kernel_size == 3 and pool.stride == 2
    x = torch.randn(2, 1780)
    assert model.features[:2](x[:, None, :]).shape == (2, 16, 1780)  # same length out
    linear = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linear] == [(16 * 221, 512), (512, 800)]  # 1780->889->444->221
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.classifier) == 2


@pytest.mark.parametrize("model_class", [PaperCNN, ResNet1D])
@pytest.mark.parametrize("n_pixels", [512, 1780, 333])
def test_shapes_and_gradients(model_class, n_pixels):
    model = model_class(n_pixels, 80)
    flux = torch.randn(5, n_pixels)
    out = model(flux)
    assert out.shape == (5, 80)
    assert torch.equal(model.eval()(flux), model(flux[:, None, :]))
    model.train()
    model(flux).logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet_is_small_enough_for_cpu_training_and_position_aware():
    model = ResNet1D(512, 800)
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 2e5 < n_parameters < 1.5e6
    assert not any(isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) for m in model.modules())
    # A line moved along the spectrum changes the output (no translation-invariant pooling).
    model.eval()
    a, b = torch.zeros(1, 512), torch.zeros(1, 512)
    a[0, 100], b[0, 300] = 5.0, 5.0
    assert not torch.allclose(model(a), model(b))


def test_heads_per_estimator():
    assert head_size("regression", 800) == 1
    assert head_size("classification", 80) == 80 and head_size("distribution", 800) == 800
    assert build_model("resnet1d", 512, "regression", 800)(torch.randn(2, 512)).shape == (2, 1)
    assert build_model("paper-cnn", 512, "distribution", 800)(torch.randn(2, 512)).shape == (2, 800)
    wide = build_model("resnet1d-wide", 512, "classification", 800, outside=True)
    assert wide(torch.randn(2, 512)).shape == (2, 801)
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv1d)][-1] == 128
    assert 1.5e6 < sum(p.numel() for p in wide.parameters()) < 2.5e6
    with pytest.raises(ValueError, match="estimator must be one of"):
        head_size("ranking", 8)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("transformer", 512, "regression", 8)
    with pytest.raises(ValueError, match="too short"):
        PaperCNN(4, 8)
