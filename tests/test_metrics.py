"""Redshift metrics: σ_NMAD, outlier fractions, R², interval coverage, PIT and per-group splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import zfast
from zfast.metrics import (
    ew_groups,
    grouped_metrics,
    ks_uniform,
    pit_histogram,
    pit_values,
    redshift_metrics,
    snr_groups,
)

BASE_KEYS = {"n", "mse", "mae", "r2", "bias", "sigma_nmad", "outlier_003", "outlier_01"}


def random_z(generator, n, lo=0.9, hi=1.8):
    return lo + (hi - lo) * torch.rand(n, dtype=torch.float64, generator=generator)


def test_sigma_nmad_of_gaussian_errors(generator):
    z_true = random_z(generator, 100_000)
    delta = 0.001 * torch.randn(100_000, dtype=torch.float64, generator=generator)
    z_pred = z_true + delta * (1 + z_true)
    metrics = redshift_metrics(z_true, z_pred)
    assert set(metrics) == BASE_KEYS
    assert metrics["n"] == 100_000
    assert metrics["sigma_nmad"] == pytest.approx(0.001, rel=0.02)
    # The median of δ is 0 to ~1.25σ/√n ≈ 4e-6.
    assert abs(metrics["bias"]) < 2e-5
    # A constant offset moves the bias, not σ_NMAD.
    shifted = redshift_metrics(z_true, z_pred + 0.002 * (1 + z_true))
    assert shifted["bias"] == pytest.approx(metrics["bias"] + 0.002, abs=1e-9)
    assert shifted["sigma_nmad"] == pytest.approx(metrics["sigma_nmad"], rel=1e-6)


def test_sigma_nmad_and_bias_against_numpy(generator):
    # Odd and even lengths: the median of an even count averages the two middle values (numpy's convention).
    for n in (7, 8):
        z_true = random_z(generator, n)
        z_pred = z_true + 0.01 * torch.randn(n, dtype=torch.float64, generator=generator)
        delta = ((z_pred - z_true) / (1 + z_true)).numpy()
        metrics = redshift_metrics(z_true, z_pred)
        assert metrics["bias"] == pytest.approx(np.median(delta), rel=1e-12, abs=1e-15)
        expected = 1.4826 * np.median(np.abs(delta - np.median(delta)))
        assert metrics["sigma_nmad"] == pytest.approx(expected, rel=1e-12)
        assert metrics["mse"] == pytest.approx(np.mean((z_pred - z_true).numpy() ** 2), rel=1e-12)
        assert metrics["mae"] == pytest.approx(np.mean(np.abs((z_pred - z_true).numpy())), rel=1e-12)


def test_outlier_fractions_on_constructed_errors():
    z_true = torch.full((10,), 1.5, dtype=torch.float64)
    # |δ| values: 4 below 0.003, 3 in (0.003, 0.01], 3 above 0.01; signs mixed.
    delta = torch.tensor([0.0, 0.001, -0.002, 0.0029, 0.0031, -0.005, 0.0099, -0.0101, 0.05, 0.3], dtype=torch.float64)
    z_pred = z_true + delta * (1 + z_true)
    metrics = redshift_metrics(z_true, z_pred)
    assert metrics["outlier_003"] == pytest.approx(0.6)
    assert metrics["outlier_01"] == pytest.approx(0.3)
    # δ is normalised by 1 + z_true: the same Δz = 0.02 is an outlier at z = 0.5 (δ = 0.0133) and at z = 2
    # (δ = 0.0067) only for the 0.003 threshold.
    z_true = torch.tensor([0.5, 2.0], dtype=torch.float64)
    metrics = redshift_metrics(z_true, z_true + 0.02)
    assert metrics["outlier_003"] == 1.0 and metrics["outlier_01"] == 0.5


def test_r2_perfect_and_mean_predictions(generator):
    z_true = random_z(generator, 1000)
    perfect = redshift_metrics(z_true, z_true.clone())
    assert perfect["r2"] == 1.0
    assert perfect["mse"] == 0.0 and perfect["mae"] == 0.0 and perfect["sigma_nmad"] == 0.0
    assert perfect["outlier_003"] == 0.0 and perfect["outlier_01"] == 0.0
    mean = redshift_metrics(z_true, torch.full_like(z_true, z_true.mean().item()))
    assert mean["r2"] == pytest.approx(0.0, abs=1e-12)
    assert mean["mse"] == pytest.approx(z_true.var(unbiased=False).item(), rel=1e-12)
    # Worse than the mean is negative; constant z_true leaves R² undefined.
    assert redshift_metrics(z_true, z_true.flip(0))["r2"] < 0
    assert math.isnan(redshift_metrics(torch.ones(5, dtype=torch.float64), torch.ones(5))["r2"])


def test_coverage_of_exact_gaussian_intervals(generator):
    n = 50_000
    z_true = random_z(generator, n)
    sigma = 0.002 * (1 + z_true)
    z_pred = z_true + sigma * torch.randn(n, dtype=torch.float64, generator=generator)
    one, two = stats.norm.ppf(0.84), stats.norm.ppf(0.975)
    metrics = redshift_metrics(
        z_true, z_pred, lo68=z_pred - one * sigma, hi68=z_pred + one * sigma, lo95=z_pred - two * sigma,
        hi95=z_pred + two * sigma,
    )
    # Binomial standard errors: 0.0021 and 0.001.
    assert metrics["coverage68"] == pytest.approx(0.68, abs=0.01)
    assert metrics["coverage95"] == pytest.approx(0.95, abs=0.005)
    # Intervals half as wide cover less: the check can fail.
    narrow = redshift_metrics(z_true, z_pred, lo68=z_pred - one * sigma / 2, hi68=z_pred + one * sigma / 2)
    assert narrow["coverage68"] < 0.45 and "coverage95" not in narrow
    with pytest.raises(ValueError, match="lo95 and hi95"):
        redshift_metrics(z_true, z_pred, lo95=z_pred)


def test_empty_input_gives_nan_not_an_exception():
    empty = torch.zeros(0, dtype=torch.float64)
    metrics = redshift_metrics(empty, empty, lo68=empty, hi68=empty, pit=empty)
    assert metrics["n"] == 0
    assert set(metrics) == BASE_KEYS | {"coverage68", "pit_ks"}
    assert all(math.isnan(value) for key, value in metrics.items() if key != "n")
    assert pit_histogram(empty).tolist() == [0.0] * 10
    assert pit_values(torch.zeros(0, 5), zfast.redshift_bin_edges(1.0, 1.5, 5), empty).numel() == 0


def test_single_spectrum_and_numpy_input():
    metrics = redshift_metrics(np.array([1.2]), np.array([1.2 + 0.0198]))
    assert metrics["n"] == 1
    assert metrics["bias"] == pytest.approx(0.009) and metrics["sigma_nmad"] == 0.0
    assert metrics["outlier_003"] == 1.0 and metrics["outlier_01"] == 0.0
    assert math.isnan(metrics["r2"])


def test_nonfinite_predictions_give_nan_and_bad_truth_raises():
    z_true = torch.tensor([1.0, 1.2, 1.4], dtype=torch.float64)
    metrics = redshift_metrics(z_true, torch.tensor([1.0, math.nan, 1.4]))
    assert metrics["n"] == 3
    assert all(math.isnan(metrics[key]) for key in BASE_KEYS - {"n"})
    with pytest.raises(ValueError, match=r"z_true\[1\]"):
        redshift_metrics(torch.tensor([1.0, math.inf]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="z_pred has 2 values"):
        redshift_metrics(z_true, z_true[:2])
    with pytest.raises(ValueError, match="1-D"):
        redshift_metrics(z_true[None], z_true[None])


def test_pit_of_soft_label_centred_on_truth_is_one_half(generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    z_true = random_z(generator, 200, lo=1.1, hi=1.7)
    probs = zfast.soft_labels(z_true, edges, sigma=0.005)
    pit = pit_values(probs, edges, z_true)
    assert pit.dtype == torch.float64 and pit.shape == (200,)
    torch.testing.assert_close(pit, torch.full_like(pit, 0.5), atol=2e-3, rtol=0)
    # Truth one σ above the centre of the P(z): PIT = Φ(1).
    pit_shifted = pit_values(probs, edges, z_true + 0.005)
    torch.testing.assert_close(pit_shifted, torch.full_like(pit, stats.norm.cdf(1.0)), atol=2e-3, rtol=0)


def test_pit_outside_the_bins_and_unnormalised_rows():
    edges = torch.tensor([1.0, 1.1, 1.3, 1.4], dtype=torch.float64)  # non-uniform bins
    probs = torch.tensor([[2.0, 4.0, 2.0]] * 6)  # unnormalised: 0.25, 0.5, 0.25
    z = torch.tensor([0.5, 1.0, 1.05, 1.2, 1.4, 2.5], dtype=torch.float64)
    expected = [0.0, 0.0, 0.125, 0.5, 1.0, 1.0]
    torch.testing.assert_close(pit_values(probs, edges, z), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="row 1 sums to 0"):
        pit_values(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), edges, z[:2])
    with pytest.raises(ValueError, match="C = 2 columns"):
        pit_values(torch.ones(2, 2), edges, z[:2])
    with pytest.raises(ValueError, match="z_true has 3 values"):
        pit_values(probs, edges, z[:3])


def test_pit_against_scipy_for_random_histograms(generator):
    n_bins = 37
    edges = torch.sort(torch.rand(n_bins + 1, dtype=torch.float64, generator=generator)).values * 0.9 + 0.9
    probs = torch.rand(64, n_bins, dtype=torch.float64, generator=generator)
    probs[:, ::5] = 0.0  # empty bins too
    z = 0.8 + 1.1 * torch.rand(64, dtype=torch.float64, generator=generator)  # some outside the bins
    pit = pit_values(probs, edges, z)
    for row in range(64):
        density = stats.rv_histogram((probs[row].numpy(), edges.numpy()), density=False)
        assert pit[row].item() == pytest.approx(density.cdf(z[row].item()), abs=1e-12)


def draw_from_histograms(probs, edges, generator):
    """One z per row from the piecewise-constant P(z): a bin by its probability, then uniform inside it."""
    bins = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    u = torch.rand(bins.numel(), dtype=torch.float64, generator=generator)
    return edges[bins] + u * (edges[bins + 1] - edges[bins])


def test_pit_uniform_for_calibrated_draws(generator):
    n = 20_000
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    centres = random_z(generator, n, lo=1.1, hi=1.7)
    probs = zfast.soft_labels(centres, edges, sigma=0.03)
    z_true = draw_from_histograms(probs, edges, generator)
    pit = pit_values(probs, edges, z_true)
    ks = redshift_metrics(z_true, centres, pit=pit)["pit_ks"]
    # Critical KS distance at the 0.1 % level: 1.95/√n ≈ 0.014.
    assert ks < 0.014
    histogram = pit_histogram(pit)
    assert histogram.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(histogram, torch.full((10,), 0.1, dtype=torch.float64), atol=0.01, rtol=0)
    # Overconfident P(z) (σ a third of the truth's spread) fail: a U-shaped PIT.
    narrow = zfast.soft_labels(centres, edges, sigma=0.01)
    pit_narrow = pit_values(narrow, edges, z_true)
    assert ks_uniform(pit_narrow) > 0.1
    tails = pit_histogram(pit_narrow)
    assert tails[0] > 0.2 and tails[-1] > 0.2


def test_ks_uniform_matches_scipy(generator):
    for n in (1, 2, 13, 1000):
        x = torch.rand(n, dtype=torch.float64, generator=generator) ** 1.3
        assert ks_uniform(x) == pytest.approx(stats.kstest(x.numpy(), "uniform").statistic, abs=1e-12)


def test_pit_histogram_bins_and_edges():
    pit = torch.tensor([0.0, 0.05, 0.1, 0.55, 0.999, 1.0, math.nan])
    histogram = pit_histogram(pit, n_bins=10)
    expected = torch.tensor([2, 1, 0, 0, 0, 1, 0, 0, 0, 2], dtype=torch.float64) / 6
    torch.testing.assert_close(histogram, expected)
    assert pit_histogram(pit, n_bins=1).tolist() == [1.0]
    with pytest.raises(ValueError, match="n_bins"):
        pit_histogram(pit, n_bins=0)


def test_grouped_metrics_match_the_subsets(generator):
    n = 1000
    z_true = random_z(generator, n)
    z_pred = z_true + 0.005 * torch.randn(n, dtype=torch.float64, generator=generator)
    lo, hi = z_pred - 0.005, z_pred + 0.005
    pit = torch.rand(n, dtype=torch.float64, generator=generator)
    ew = 60.0 * torch.rand(n, dtype=torch.float64, generator=generator)
    snr = 50.0 * torch.rand(n, dtype=torch.float64, generator=generator)
    groups = {**ew_groups(ew), **snr_groups(snr), "none": torch.zeros(n, dtype=torch.bool)}
    results = grouped_metrics(z_true, z_pred, groups, lo68=lo, hi68=hi, pit=pit)
    assert list(results) == ["all", "ew<20", "ew>=20", "snr 0-5", "snr 5-10", "snr 10-30", "snr 30-inf", "none"]
    assert results["all"] == redshift_metrics(z_true, z_pred, lo68=lo, hi68=hi, pit=pit)
    mask = groups["ew>=20"]
    assert results["ew>=20"] == redshift_metrics(z_true[mask], z_pred[mask], lo68=lo[mask], hi68=hi[mask], pit=pit[mask])
    assert results["ew<20"]["n"] + results["ew>=20"]["n"] == n
    assert sum(results[name]["n"] for name in results if name.startswith("snr")) == n
    assert results["none"]["n"] == 0 and math.isnan(results["none"]["sigma_nmad"])
    with pytest.raises(ValueError, match="bool mask"):
        grouped_metrics(z_true, z_pred, {"bad": torch.ones(n)})
    with pytest.raises(ValueError, match='called "all"'):
        grouped_metrics(z_true, z_pred, {"all": torch.ones(n, dtype=torch.bool)})
    with pytest.raises(TypeError, match="unexpected keyword"):
        grouped_metrics(z_true, z_pred, {}, lo99=lo)


def test_group_helpers_boundaries():
    ew = torch.tensor([0.0, 19.99, 20.0, 150.0, math.nan])
    groups = ew_groups(ew)
    assert groups["ew<20"].tolist() == [True, True, False, False, False]
    assert groups["ew>=20"].tolist() == [False, False, True, True, False]
    assert list(ew_groups(ew, threshold=7.5)) == ["ew<7.5", "ew>=7.5"]
    snr = torch.tensor([-1.0, 0.0, 4.99, 5.0, 10.0, 29.9, 30.0, math.inf, math.nan])
    groups = snr_groups(snr)
    assert list(groups) == ["snr 0-5", "snr 5-10", "snr 10-30", "snr 30-inf"]
    assert groups["snr 0-5"].tolist() == [False, True, True, False, False, False, False, False, False]
    assert groups["snr 5-10"].tolist() == [False, False, False, True, False, False, False, False, False]
    assert groups["snr 10-30"].tolist() == [False, False, False, False, True, True, False, False, False]
    assert groups["snr 30-inf"].tolist() == [False, False, False, False, False, False, True, True, False]
    assert list(snr_groups(snr, edges=(0, 3))) == ["snr 0-3"]
    with pytest.raises(ValueError, match="strictly increasing"):
        snr_groups(snr, edges=(5, 5))
