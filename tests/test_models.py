"""The networks: the paper's layer stack, shapes for the presets' pixel counts, heads per estimator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zfast.models import PaperCNN, ResNet1D, build_model, head_size
from zfast.models.shift_resnet import correlate


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


@pytest.mark.parametrize("estimator", ["regression", "classification"])
@pytest.mark.parametrize("outside", [False, True])
def test_split_outside_undoes_build_models_outside_logit(estimator, outside):
    """One definition (zfast.models.registry): the head build_model adds for ``outside`` is what split_outside removes."""
    from zfast.models import registry, split_outside

    assert split_outside is registry.split_outside
    out = build_model("paper-cnn", 128, estimator, 40, outside=outside).eval()(torch.randn(3, 128))
    assert out.shape == (3, head_size(estimator, 40) + outside)
    estimate, logit = split_outside(out, outside)
    assert estimate.shape == (3, head_size(estimator, 40))
    if outside:
        assert logit.shape == (3,) and torch.equal(torch.cat([estimate, logit[:, None]], dim=1), out)
    else:
        assert logit is None and estimate is out


def test_log_grid_resnet_resamples_onto_log_lambda_conserving_flux():
    from zfast.data.instrument import Instrument
    from zfast.models import LogGridResNet1D

    instrument = Instrument.preset("euclid-nisp-red")
    edges = instrument.wave_edges
    model = build_model("resnet1d-log", 512, "distribution", 800, wave_edges=edges)
    assert isinstance(model, LogGridResNet1D)
    resample = model.resample.double()
    n_log = resample.shape[1]
    # Enough log pixels to keep the reddest (finest in ln λ) instrument pixel: ln(18920/12060) / ln(18920/18906.6).
    span = math.log(edges[-1].item() / edges[0].item())
    assert span / n_log <= math.log(edges[-1].item() / edges[-2].item()) * (1 + 1e-9)
    assert span / n_log > 0.95 * math.log(edges[-1].item() / edges[-2].item())
    log_edges = edges[0] * torch.exp(torch.arange(n_log + 1, dtype=torch.float64) * span / n_log)
    # Flux conserved: ∫ f dλ over the log pixels = over the instrument pixels, for random spectra.
    flux = torch.rand(5, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    total_in = (flux * (edges[1:] - edges[:-1])).sum(dim=1)
    total_out = ((flux @ resample) * (log_edges[1:] - log_edges[:-1])).sum(dim=1)
    torch.testing.assert_close(total_out, total_in, rtol=1e-6, atol=0)
    # A constant stays that constant everywhere; one instrument pixel's flux lands only on the log pixels that
    # overlap it, in proportion to the overlap.
    torch.testing.assert_close(torch.full((1, 512), 2.5, dtype=torch.float64) @ resample,
                               torch.full((1, n_log), 2.5, dtype=torch.float64), rtol=1e-6, atol=0)  # fmt: skip
    for i in (0, 137, 511):
        lo, hi = edges[i], edges[i + 1]
        overlap = (torch.minimum(log_edges[1:], hi) - torch.maximum(log_edges[:-1], lo)).clamp_min(0)
        torch.testing.assert_close(resample[i], overlap / (log_edges[1:] - log_edges[:-1]), rtol=1e-5, atol=1e-7)
    # Forward on [B, M] and [B, 1, M]; the buffer is not in the state dict (checkpoints hold weights only).
    model.eval()
    x = torch.randn(2, 512)
    assert model(x).shape == (2, 800)
    torch.testing.assert_close(model(x[:, None, :]), model(x))
    assert "resample" not in model.state_dict()
    with pytest.raises(ValueError, match="wave_edges"):
        build_model("resnet1d-log", 512, "distribution", 800)
    with pytest.raises(ValueError, match="513 increasing"):
        build_model("resnet1d-log", 512, "distribution", 800, wave_edges=edges.flip(0))


def test_log_grid_keeps_masked_pixels_clean_zeros():
    """Masked pixels (exact zeros) do not leak into their valid neighbours on the log grid: each log pixel is the
    overlap-weighted mean of the valid instrument pixels under it (float64 reference from the pixel edges), 0
    where none is valid; without masks, the plain flux-conserving resampling."""
    from zfast.data.instrument import Instrument

    edges = Instrument.preset("euclid-nisp-red").wave_edges
    model = build_model("resnet1d-log", 512, "distribution", 800, wave_edges=edges)
    n_log = model.resample.shape[1]
    span = math.log(edges[-1].item() / edges[0].item())
    log_edges = edges[0] * torch.exp(torch.arange(n_log + 1, dtype=torch.float64) * span / n_log)
    log_edges[-1] = edges[-1]
    overlap = (torch.minimum(log_edges[None, 1:], edges[1:, None]) - torch.maximum(log_edges[None, :-1], edges[:-1, None])).clamp_min(0)
    g = torch.Generator().manual_seed(11)
    flux = 1 + 0.3 * torch.randn(6, 512, dtype=torch.float64, generator=g)
    valid = torch.rand(6, 512, generator=g) > torch.tensor([0.0, 0.02, 0.1, 0.3, 0.7, 1.0])[:, None]
    valid[2, 200:241] = False  # a gap as well as scattered pixels
    flux = torch.where(valid, flux, 0.0)
    weight = valid.double() @ overlap
    expected = torch.where(weight > 0, (flux @ overlap) / weight.clamp_min(1e-300), 0.0)
    got = model.to_log_grid(flux.float()).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert bool(got[5].eq(0).all()) and bool(got[2, (log_edges[1:] > edges[201]) & (log_edges[:-1] < edges[240])].eq(0).all())
    # A masked constant stays that constant on every log pixel touching a valid pixel (no partial dips toward 0).
    constant = model.to_log_grid(torch.where(valid, 2.5, 0.0).float()).double()
    torch.testing.assert_close(constant[weight > 0], torch.full_like(constant[weight > 0], 2.5), rtol=1e-5, atol=0)
    assert int((weight > 0).sum()) > 0.5 * 6 * n_log
    plain = (flux.float() @ model.resample).double()
    assert (plain - got).abs().max() > 0.1  # the masks do make a difference ...
    torch.testing.assert_close(got[0], plain[0], rtol=1e-5, atol=1e-5)  # ... and none without masks


def test_shift_resnet_branch_is_redshift_equivariant_and_starts_at_zero():
    from zfast.bins import redshift_bin_edges
    from zfast.data.instrument import Instrument
    from zfast.models import ShiftResNet1D

    edges = Instrument.preset("euclid-nisp-red").wave_edges
    model = build_model("resnet1d-shift", 512, "distribution", 800, outside=True, wave_edges=edges, z_range=(1.0, 1.8))
    assert isinstance(model, ShiftResNet1D)
    model.eval()
    x = torch.randn(3, 512)
    out = model(x)
    assert out.shape == (3, 801)
    # Zero templates at the start: exactly the log-grid network's outputs.
    plain = model.head(model.features(((x @ model.resample)[:, None, :])))
    torch.testing.assert_close(out, plain)
    # The interpolation onto the bins: each bin a convex pair of neighbouring fine-grid points at its ln(1 + z).
    interp = model.interp.double()
    torch.testing.assert_close(interp.sum(dim=0), torch.ones(800, dtype=torch.float64))
    assert int((interp > 0).sum(dim=0).max()) <= 2
    n_log = model.resample.shape[1]
    step = math.log(edges[-1].item() / edges[0].item()) / n_log
    fine = torch.arange(interp.shape[0], dtype=torch.float64) * 8 * step / model.n_sub
    centres = torch.log1p(0.5 * (redshift_bin_edges(1.0, 1.8, 800)[1:] + redshift_bin_edges(1.0, 1.8, 800)[:-1]))
    # the fine grid's positions, interpolated, recover each bin's ln(1 + z) (up to the grid's common offset)
    recovered = fine @ interp
    torch.testing.assert_close(recovered - recovered[0], centres - centres[0], rtol=0, atol=1e-7)  # float32 weights
    # Equivariance: a spectrum moved redward by one coarse step (8 log pixels) moves every template score by one
    # trial shift, exactly (a localised random spectrum, so nothing crosses the ends; random templates).
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.templates.normal_(generator=generator)
        model.project.bias.zero_()
    spectrum = torch.zeros(1, n_log)
    spectrum[0, 150:330] = torch.randn(180, generator=generator)

    def scores(log_flux):
        return model.template_scores(model.project(model.features[: model.tap](log_flux[:, None, :])))

    with torch.no_grad():
        a, b = scores(spectrum), scores(torch.roll(spectrum, 8, dims=1))
    assert a.abs().max() > 0.01
    torch.testing.assert_close(b[:, :, 1:], a[:, :, :-1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(b, a, rtol=1e-3, atol=1e-4)
    # The FFT correlation is the direct one: conv1d of the padded features with the templates (float64 reference),
    # values and gradients, on fresh random features and templates.
    projected = torch.randn(4, model.project.out_channels, model.length, generator=generator, requires_grad=True)
    templates = model.templates.detach().clone().requires_grad_(True)  # the reference's own leaf, same values
    reference = nn.functional.conv1d(nn.functional.pad(projected.double(), (model.n_shifts - 1, model.n_shifts - 1)),
                                     templates.double())  # fmt: skip
    fast = model.template_scores(projected)
    assert fast.shape == reference.shape == (4, model.n_sub, model.n_shifts)
    torch.testing.assert_close(fast.double(), reference, rtol=0, atol=1e-5 * float(reference.detach().abs().max()))
    weights = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    grad_f, grad_w = torch.autograd.grad((fast.double() * weights).sum(), [projected, model.templates])
    ref_f, ref_w = torch.autograd.grad((reference * weights).sum(), [projected, templates])
    torch.testing.assert_close(grad_f.double(), ref_f.double(), rtol=0, atol=1e-5 * float(ref_f.abs().max()))
    torch.testing.assert_close(grad_w.double(), ref_w.double(), rtol=0, atol=1e-5 * float(ref_w.abs().max()))
    # The whole forward pass against the branch written with nn.Conv1d (the projection) and conv1d (the correlation).
    batch = torch.randn(5, 512, generator=generator)
    with torch.no_grad():
        mid = model.features[: model.tap]((batch @ model.resample)[:, None, :])
        padded = nn.functional.pad(model.project(mid), (model.n_shifts - 1, model.n_shifts - 1))
        direct = nn.functional.conv1d(padded, model.templates)
        logits = model.head(model.features[model.tap :](mid))
        expected = logits.clone()
        expected[:, : model.n_bins] += direct.transpose(1, 2).reshape(5, -1) @ model.interp
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="binned estimator"):
        build_model("resnet1d-shift", 512, "regression", 800, wave_edges=edges, z_range=(1.0, 1.8))
    with pytest.raises(ValueError, match="binned estimator"):
        build_model("resnet1d-shift", 512, "classification", 800, wave_edges=edges)


def test_shift_resnet_fine_branch_adds_its_scores_and_is_equivariant_by_two_log_pixels():
    """resnet1d-shift-fine: the same trunk, coarse branch and state-dict names as resnet1d-shift plus the fine
    branch; its forward equals both branches written with nn.Conv1d / conv1d (float64 reference) and its scores
    move by one trial shift when the spectrum moves by its stride (2 log pixels); the fine grid's interpolation
    recovers each bin's ln(1 + z)."""
    from zfast.bins import redshift_bin_edges
    from zfast.data.instrument import Instrument

    edges = Instrument.preset("euclid-nisp-red").wave_edges
    torch.manual_seed(0)
    plain = build_model("resnet1d-shift", 512, "classification", 800, outside=True, wave_edges=edges, z_range=(1.0, 1.8), n_log=512)
    torch.manual_seed(0)
    model = build_model("resnet1d-shift-fine", 512, "classification", 800, outside=True, wave_edges=edges, z_range=(1.0, 1.8),
                        n_log=512)  # fmt: skip
    assert set(plain.state_dict()) < set(model.state_dict())
    assert {k for k in model.state_dict() if k not in plain.state_dict()} == {"fine_project.weight", "fine_project.bias", "fine_templates"}
    model.eval()
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        model.templates.normal_(generator=generator)
        model.fine_templates.normal_(generator=generator)
    batch = torch.randn(4, 512, generator=generator)
    with torch.no_grad():
        x = (batch @ model.resample)[:, None, :]
        stem = model.features[: model.fine_tap](x)
        mid = model.features[model.fine_tap : model.tap](stem)
        expected = model.head(model.features[model.tap :](mid)).double()
        for features, project, templates, n_shifts, interp in (
            (mid, model.project, model.templates, model.n_shifts, model.interp),
            (stem, model.fine_project, model.fine_templates, model.fine_shifts, model.fine_interp),
        ):
            padded = nn.functional.pad(project(features).double(), (n_shifts - 1, n_shifts - 1))
            direct = nn.functional.conv1d(padded, templates.double())
            expected[:, : model.n_bins] += direct.transpose(1, 2).reshape(4, -1) @ interp.double()
        torch.testing.assert_close(model(batch).double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # The fine grid: stride 2, fine_sub sub-steps; interpolated positions recover the bins' ln(1 + z).
    n_log = model.resample.shape[1]
    step = math.log(edges[-1].item() / edges[0].item()) / n_log
    fine = torch.arange(model.fine_interp.shape[0], dtype=torch.float64) * 2 * step / model.fine_sub
    centres = torch.log1p(0.5 * (redshift_bin_edges(1.0, 1.8, 800)[1:] + redshift_bin_edges(1.0, 1.8, 800)[:-1]))
    recovered = fine @ model.fine_interp.double()
    torch.testing.assert_close(recovered - recovered[0], centres - centres[0], rtol=0, atol=1e-7)
    # Equivariance of the fine scores: a localised spectrum moved by 2 log pixels moves them by one trial shift.
    with torch.no_grad():
        model.fine_project.bias.zero_()
        spectrum = torch.zeros(1, n_log)
        spectrum[0, 150:330] = torch.randn(180, generator=generator)

        def scores(log_flux):
            projected = model.fine_project(model.features[: model.fine_tap](log_flux[:, None, :]))
            return correlate(projected, model.fine_templates, model.fine_shifts)

        a, b = scores(spectrum), scores(torch.roll(spectrum, 2, dims=1))
    assert a.abs().max() > 0.01
    torch.testing.assert_close(b[:, :, 1:], a[:, :, :-1], rtol=0, atol=1e-5 * float(a.abs().max()))  # FFT rounding
    assert not torch.allclose(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("stride, kernel, length", [(1, 5, 37), (2, 5, 64), (2, 7, 101), (2, 1, 33)])
def test_channels_last_layers_compute_what_conv1d_and_batchnorm1d_compute(stride, kernel, length):
    """Conv1dNHWC / BatchNorm1dNHWC: the same state dict, outputs and gradients as the plain torch layers
    (float64 against float64), in training and in eval mode, odd lengths included."""
    from zfast.models import BatchNorm1dNHWC, Conv1dNHWC

    g = torch.Generator().manual_seed(length)
    fast = torch.nn.Sequential(Conv1dNHWC(3, 6, kernel, stride=stride, padding=kernel // 2, bias=False),
                               BatchNorm1dNHWC(6), torch.nn.SiLU()).double()  # fmt: skip
    plain = torch.nn.Sequential(torch.nn.Conv1d(3, 6, kernel, stride=stride, padding=kernel // 2, bias=False),
                                torch.nn.BatchNorm1d(6), torch.nn.SiLU()).double()  # fmt: skip
    with torch.no_grad():
        fast[0].weight.copy_(torch.randn(fast[0].weight.shape, generator=g, dtype=torch.float64))
        fast[1].weight.copy_(1 + torch.rand(6, generator=g, dtype=torch.float64))
        fast[1].bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    plain.load_state_dict(fast.state_dict())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(5, 3, length, generator=g, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), plain(xb)
    assert ya.shape == yb.shape == (5, 6, (length + 2 * (kernel // 2) - kernel) // stride + 1)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    weights = torch.randn(ya.shape, generator=g, dtype=torch.float64)
    (ya * weights).sum().backward()
    (yb * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[0].weight.grad, plain[0].weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[1].running_mean, plain[1].running_mean)
    fast.eval(), plain.eval()
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["resnet1d", "resnet1d-wide", "paper-cnn"])
def test_fold_batchnorm_computes_what_the_network_computed(name):
    """fold_batchnorm: the folded eval-mode network gives the unfolded one's outputs (float64 against float64, random
    weights and running statistics far from the identity), and no BatchNorm directly after a conv is left; PaperCNN's
    BatchNorms (after the pooling) stay. load_model applies it."""
    import copy

    from zfast.models import MODELS, fold_batchnorm

    if name not in MODELS:
        pytest.skip(f"no {name} model")
    g = torch.Generator().manual_seed(7)
    network = build_model(name, 512, "classification", 40).double()
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
                m.running_var.copy_(0.1 + 3 * torch.rand(m.num_features, generator=g, dtype=torch.float64))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
    network.eval()
    before = sum(isinstance(m, torch.nn.BatchNorm1d) for m in network.modules())
    folded = fold_batchnorm(copy.deepcopy(network))
    x = 1 + 0.3 * torch.randn(6, 512, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), network(x), rtol=1e-10, atol=1e-10)
    left = sum(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    assert (left == before) if name == "paper-cnn" else (left == 0 and before > 0)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(network.train())


def test_shift_resnet_fft_length_is_the_smallest_5_smooth_that_holds_the_templates():
    import bisect

    from zfast.data.instrument import Instrument
    from zfast.models.shift_resnet import smooth_length

    smooth = sorted({2**a * 3**b * 5**c for a in range(11) for b in range(7) for c in range(5)})
    for k in range(1, 700):
        assert smooth_length(k) == smooth[bisect.bisect_left(smooth, k)], k
    # The circular correlation of that length is the direct one on other geometries too (odd L, few / many
    # shifts): fresh random features and templates against conv1d in float64.
    edges = Instrument.preset("euclid-nisp-red").wave_edges
    generator = torch.Generator().manual_seed(17)
    for z_range, n_bins in (((1.0, 1.05), 50), ((0.6, 2.4), 900)):
        model = build_model("resnet1d-shift", 512, "distribution", n_bins, wave_edges=edges, z_range=z_range)
        for length in (model.length, 37):
            model.templates = nn.Parameter(torch.randn(model.n_sub, 4, length + model.n_shifts - 1, generator=generator))
            projected = torch.randn(3, 4, length, generator=generator)
            padded = nn.functional.pad(projected.double(), (model.n_shifts - 1, model.n_shifts - 1))
            reference = nn.functional.conv1d(padded, model.templates.double())
            fast = model.template_scores(projected)
            assert fast.shape == reference.shape
            torch.testing.assert_close(fast.double(), reference, rtol=0, atol=1e-5 * float(reference.detach().abs().max()))


def test_activation_option_swaps_every_silu_and_survives_the_checkpoint_config():
    """activation="hardswish": every SiLU of the residual networks becomes Hardswish (same state dict, other
    outputs), the OOD taps keep their count, build_network reads it from a run's config (absent: SiLU), and bad
    names or the paper's CNN are refused."""
    from zfast.checkpoint import build_network
    from zfast.data.instrument import Instrument
    from zfast.training.config import PRESETS, TrainConfig

    edges = Instrument.preset("euclid-nisp-red").wave_edges
    torch.manual_seed(0)
    silu = build_model("resnet1d-shift", 512, "classification", 800, outside=True, wave_edges=edges, z_range=(1.0, 1.8))
    torch.manual_seed(0)
    hard = build_model("resnet1d-shift", 512, "classification", 800, outside=True, wave_edges=edges, z_range=(1.0, 1.8),
                       activation="hardswish")  # fmt: skip
    kinds = lambda m, kind: sum(isinstance(x, kind) for x in m.modules())  # noqa: E731
    assert kinds(hard, nn.SiLU) == 0 and kinds(hard, nn.Hardswish) == kinds(silu, nn.SiLU) == 14
    assert len(hard.ood_taps()) == len(silu.ood_taps())
    hard.load_state_dict(silu.state_dict())  # the same parameters and buffers
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
    silu.eval(), hard.eval()
    with torch.no_grad():
        log_x = (x @ silu.resample)[:, None, :]
        a, b = silu.features(log_x), hard.features(log_x)
        assert (a - b).abs().max() > 1e-2 * a.abs().max()  # another function of the same weights
    config = {**TrainConfig().__dict__, **PRESETS["quick"]}
    assert kinds(build_network({**config, "activation": "hardswish"})[0], nn.Hardswish) == 14
    legacy = {k: v for k, v in config.items() if k != "activation"}
    assert kinds(build_network(legacy)[0], nn.SiLU) == 14
    with pytest.raises(ValueError, match="activation must be one of"):
        build_model("resnet1d", 512, "classification", 80, activation="gelu")
    with pytest.raises(ValueError, match="paper's CNN"):
        build_model("paper-cnn", 512, "classification", 80, activation="hardswish")
