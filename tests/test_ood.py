"""The OOD score of zfast-predict (zfast.ood: ood_features, fit_ood, ood_scores) on known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from zfast import checkpoint, ood
from zfast.ood import OODStats
from zfast.models import PaperCNN, ResNet1D


def correlated_gaussian(generator, n, dim, shift=0.0):
    """n samples of a fixed correlated Gaussian in ``dim`` dimensions (the same for every call), mean + shift."""
    fixed = torch.Generator().manual_seed(dim)
    mixing = torch.randn(dim, dim, generator=fixed, dtype=torch.float64) / dim**0.5 + torch.eye(
        dim, dtype=torch.float64
    )
    mean = torch.randn(dim, generator=fixed, dtype=torch.float64)
    return (torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing.T + mean + shift).float()


def test_scores_are_mahalanobis_distances_over_the_validation_median(generator):
    train_layers = [correlated_gaussian(generator, 4000, 6), correlated_gaussian(generator, 4000, 11)]
    val_layers = [correlated_gaussian(generator, 1000, 6), correlated_gaussian(generator, 1000, 11)]
    stats = ood.fit_ood(train_layers, val_layers)
    probe = [correlated_gaussian(generator, 5, 6, shift=0.5), correlated_gaussian(generator, 5, 11)]
    expected = []
    for layer, features in enumerate(probe):
        mean = stats.means[layer].numpy()
        precision = stats.precisions[layer].numpy()
        # scipy's distance with our (shrunk) precision, squared, over the dimension and the layer's scale.
        d2 = np.array([mahalanobis(f, mean, precision) ** 2 for f in features.double().numpy()])
        expected.append(d2 / features.shape[1] / float(stats.scales[layer]))
    np.testing.assert_allclose(ood.ood_scores(probe, stats).numpy(), np.maximum(*expected), rtol=1e-9)
    # In distribution, squared distance / dimension averages ~1 (chi-square / dof), so each scale is ~ its median.
    for layer, dim in enumerate((6, 11)):
        assert 0.7 < float(stats.scales[layer]) < 1.1, (dim, float(stats.scales[layer]))


def test_threshold_keeps_the_validation_quantile_and_any_shifted_layer_is_flagged(generator):
    train_layers = [correlated_gaussian(generator, 4000, 8), correlated_gaussian(generator, 4000, 16)]
    val_layers = [correlated_gaussian(generator, 2000, 8), correlated_gaussian(generator, 2000, 16)]
    stats = ood.fit_ood(train_layers, val_layers)
    threshold = stats.threshold
    val_rate = (ood.ood_scores(val_layers, stats) > threshold).double().mean().item()
    assert val_rate == pytest.approx(1 - ood.OOD_QUANTILE, abs=1.5e-3)
    fresh = [correlated_gaussian(generator, 2000, 8), correlated_gaussian(generator, 2000, 16)]
    assert (ood.ood_scores(fresh, stats) > threshold).double().mean().item() < 0.02
    # Shift one layer by 3 standard deviations in every dimension, leave the other: flagged through the max.
    for shifted in (0, 1):
        layers = [
            correlated_gaussian(generator, 500, dim, shift=3.0 if i == shifted else 0.0)
            for i, dim in enumerate((8, 16))
        ]
        assert (ood.ood_scores(layers, stats) > threshold).double().mean().item() > 0.99


def test_checkpoints_with_penultimate_statistics_only_still_score(generator):
    """Older checkpoints stored ood_mean / ood_precision of the penultimate features: converted, scored on the last block."""
    train_layer, val_layer = correlated_gaussian(generator, 3000, 5), correlated_gaussian(generator, 500, 5)
    new = ood.fit_ood([train_layer], [val_layer])
    legacy = {"ood_mean": new.means[0], "ood_precision": new.precisions[0], "ood_threshold": 1.0}
    old = OODStats.from_dict(checkpoint.upgrade_v1({"version": 1, "config": {}, "model": {}, "predict_stats": legacy})["stats"]["ood"])
    probe = [torch.randn(7, 3), correlated_gaussian(generator, 7, 5)]
    torch.testing.assert_close(
        ood.ood_scores(probe, old), ood.ood_scores(probe[-1:], new) * float(new.scales[0])
    )
    with pytest.raises(ValueError, match="cover 1 layers, the network gave 2"):
        ood.ood_scores(probe, new)
    with pytest.raises(ValueError, match="2 training feature blocks but 1 validation"):
        ood.fit_ood([train_layer, train_layer], [val_layer])


@pytest.mark.parametrize("network", [PaperCNN(301, 9), ResNet1D(301, 9)], ids=["paper-cnn", "resnet1d"])
def test_ood_features_are_channel_statistics_of_the_taps_and_the_penultimate_features(generator, network):
    network.eval()
    flux = torch.randn(4, 301, generator=generator)
    activations = []
    handles = [
        m.register_forward_hook(lambda module, inputs, output: activations.append(output)) for m in network.ood_taps()
    ]
    with torch.no_grad():
        expected_output = network(flux)
        for handle in handles:
            handle.remove()
        layers, output = ood.ood_features(network, flux)
    torch.testing.assert_close(output, expected_output)
    assert len(layers) == len(network.ood_taps()) + 1 >= 4
    for features, activation in zip(layers[:-1], activations):
        a = activation.double().numpy()
        np.testing.assert_allclose(
            features.numpy(), np.concatenate([a.mean(-1), a.std(-1)], axis=1), rtol=1e-4, atol=1e-5
        )
    penultimate, _ = ood.features_and_outputs(network, flux)
    torch.testing.assert_close(layers[-1], penultimate)
    assert penultimate.shape[1] == [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1].in_features
