"""Per-SNR temperature calibration of P(z) (zfast.calibration): fitted temperatures make 68 % intervals cover 68 %."""

from __future__ import annotations

import math

import pytest
import torch

from zfast.bins import pz_summary, redshift_bin_edges
from zfast.calibration import SNR_EDGES, calibrated_probs, calibrated_summary, fit_temperatures, spectrum_snr


def _gaussian_logits(mu: torch.Tensor, sigma: float, edges: torch.Tensor) -> torch.Tensor:
    centres = 0.5 * (edges[1:] + edges[:-1])
    return -((centres[None] - mu[:, None]) ** 2) / (2 * sigma**2)


def _coverage(probs, edges, z):
    s = pz_summary(probs, edges)
    return ((s.lo68 <= z) & (z <= s.hi68)).double().mean().item()


def test_each_snr_bin_gets_the_temperature_that_calibrates_it():
    g = torch.Generator().manual_seed(0)
    edges = redshift_bin_edges(1.0, 1.8, 800)
    n = 3000
    # Two noise regimes: predicted P(z) 3x too wide at SNR 7, 2x too narrow at SNR 25 (true error σ = 0.004).
    snr = torch.where(torch.arange(n) % 2 == 0, 7.0, 25.0).double()
    z = 1.2 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64)
    mu = z + 0.004 * torch.randn(n, generator=g, dtype=torch.float64)  # the network's centre, off by the error
    sigma_pred = torch.where(snr < 10, 0.012, 0.002)
    logits = torch.cat([_gaussian_logits(mu[i:i + 1], float(sigma_pred[i]), edges) for i in range(n)])
    raw = torch.softmax(logits, dim=1)
    low, high = snr < 10, snr >= 10
    assert _coverage(raw[low], edges, z[low]) > 0.95 and _coverage(raw[high], edges, z[high]) < 0.45
    calibration = fit_temperatures(logits, z, edges, snr, by_peak=False)
    t = calibration["temperatures"]
    k_low = [i for i in range(len(SNR_EDGES) - 1) if SNR_EDGES[i] <= 7 < SNR_EDGES[i + 1]][0]
    k_high = [i for i in range(len(SNR_EDGES) - 1) if SNR_EDGES[i] <= 25 < SNR_EDGES[i + 1]][0]
    # logits / T widens a Gaussian by sqrt(T): T = (σ_true/σ_pred)² = 1/9 and 4.
    assert t[k_low] == pytest.approx(1 / 9, rel=0.25) and t[k_high] == pytest.approx(4.0, rel=0.25)
    # Empty bins take the nearest fitted bin's temperature (the lower one on a tie); with no data at all, T = 1.
    assert calibration["counts"][0] == 0 and calibration["counts"][-1] == 0
    assert t[0] == t[k_low] and t[-1] == t[k_high]
    empty = fit_temperatures(logits[:10], z[:10], edges, snr[:10], by_peak=False)
    assert torch.equal(empty["temperatures"], torch.ones(len(SNR_EDGES) - 1))
    fresh_mu = z + 0.004 * torch.randn(n, generator=g, dtype=torch.float64)  # fresh errors: no fitting to noise
    fresh = torch.cat([_gaussian_logits(fresh_mu[i:i + 1], float(sigma_pred[i]), edges) for i in range(n)])
    probs = calibrated_probs(fresh, snr, calibration)
    assert abs(_coverage(probs[low], edges, z[low]) - 0.68) < 0.03
    assert abs(_coverage(probs[high], edges, z[high]) - 0.68) < 0.03


def test_a_flat_uninformative_p_is_never_the_calibration():
    # Distribution-like logits: a sharp peak on the truth over a floor (far bins ~e^-25 each), truths within 0.2
    # bin of a bin centre. Every informative temperature covers ~100 % (even a one-bin P: its 68 % interval is the
    # bin's middle 68 %); at T ~ 10 the floor's 800 bins outweigh the peak, P(z) is nearly flat and its central
    # 68 % of the range "covers" ~68 % of uniform redshifts: closer to 68 %, and useless.
    g = torch.Generator().manual_seed(1)
    edges = redshift_bin_edges(1.0, 1.8, 800)
    centres = 0.5 * (edges[1:] + edges[:-1])
    n = 400
    z = centres[torch.randint(0, 800, (n,), generator=g)] + 0.0002 * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    logits = -(((centres[None] - z[:, None]) / 0.002) ** 2).clamp(max=25.0)
    flat = torch.softmax(logits / 10.0, dim=1)
    s = pz_summary(flat, edges)
    assert (s.hi68 - s.lo68).median() > 0.3 and abs(_coverage(flat, edges, z) - 0.68) < 0.1
    assert _coverage(torch.softmax(logits / 0.001, dim=1), edges, z) > 0.95
    calibration = fit_temperatures(logits, z, edges, torch.full((n,), 25.0, dtype=torch.float64), by_peak=False)
    k = next(i for i in range(len(SNR_EDGES) - 1) if SNR_EDGES[i] <= 25 < SNR_EDGES[i + 1])
    t = float(calibration["temperatures"][k])
    s = pz_summary(torch.softmax(logits / t, dim=1), edges)
    assert t < 1.0 and (s.hi68 - s.lo68).median() < 0.01


def test_without_calibration_it_is_a_softmax_and_snr_reads_the_continuum():
    logits = torch.randn(5, 80, dtype=torch.float64)
    torch.testing.assert_close(calibrated_probs(logits, torch.ones(5), None), torch.softmax(logits, dim=1))
    ivar = torch.full((4, 100), 100.0)
    ivar[1] = math.inf
    ivar[2, :60] = 0.0
    ivar[2, 60:] = 4.0
    ivar[3] = 0.0
    snr = spectrum_snr(ivar)
    assert snr[0] == 10.0 and math.isinf(snr[1]) and snr[2] == 2.0 and math.isnan(snr[3])


def test_a_temperature_never_moves_the_point_estimate():
    """calibrated_summary: intervals from the calibrated P(z), z_mode from the plain softmax — even where a small
    T underflows the peak's neighbours (a refinement on them would fall back to a coarser parabola)."""
    g = torch.Generator().manual_seed(3)
    edges = redshift_bin_edges(1.0, 1.8, 800)
    z = 1.05 + 0.7 * torch.rand(200, generator=g, dtype=torch.float64)
    logits = _gaussian_logits(z, 0.0001, edges) + 0.01 * torch.randn(200, 800, generator=g, dtype=torch.float64)  # sharp
    snr = torch.full((200,), math.inf)
    calibration = {"snr_edges": torch.tensor(SNR_EDGES, dtype=torch.float64),
                   "temperatures": torch.full((len(SNR_EDGES) - 1,), 0.02, dtype=torch.float64)}  # fmt: skip
    probs, summary = calibrated_summary(logits, snr, calibration, edges)
    plain = pz_summary(torch.softmax(logits, dim=1), edges)
    sharp = pz_summary(probs, edges)
    torch.testing.assert_close(summary.z_mode, plain.z_mode, rtol=0, atol=0)
    torch.testing.assert_close(summary.lo68, sharp.lo68, rtol=0, atol=0)
    assert (plain.z_mode - z).abs().max() < 2e-5  # the plain refinement: a fiftieth of a bin here
    assert (sharp.z_mode - z).abs().max() > (plain.z_mode - z).abs().max()  # the sharpened one is not
    probs, summary = calibrated_summary(logits, None, calibration, edges)  # no SNR: plain softmax
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))


def test_peak_groups_calibrate_two_kinds_of_p_at_one_snr():
    """At one SNR, single-peaked P(z) that are 2x too narrow and two-peaked P(z) whose truth is in the lesser peak half
    the time: one temperature per SNR bin cannot cover 68 % of both, one per peak group (``peak_share``) can."""
    from zfast.calibration import PEAK_EDGES, peak_share

    g = torch.Generator().manual_seed(4)
    edges = redshift_bin_edges(1.0, 1.8, 800)
    n = 4000
    single = torch.arange(n) < n // 2
    z = 1.1 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    mu = z + torch.where(single, 0.004, 0.002) * torch.randn(n, generator=g, dtype=torch.float64)
    flip = ~single & (torch.rand(n, generator=g) < 0.5)
    first = torch.where(flip, mu + 0.15, mu)  # the bigger peak: on the truth, or 0.15 away from it
    logits = torch.cat([torch.logaddexp(_gaussian_logits(first[i:i + 1], 0.002, edges),
                                        _gaussian_logits(first[i:i + 1] - 0.15 if flip[i] else first[i:i + 1] + 0.15, 0.002, edges)
                                        + (-1e3 if single[i] else math.log(0.4 / 0.6)))
                        for i in range(n)])  # fmt: skip
    probs = torch.softmax(logits, dim=1)
    share = peak_share(probs, edges)
    assert (share[single] > 0.99).all() and ((share[~single] > 0.5) & (share[~single] < 0.9)).all()
    snr = torch.full((n,), 7.0, dtype=torch.float64)

    def coverages(p):
        s = pz_summary(p, edges)
        covered = ((s.lo68 <= z) & (z <= s.hi68)).double()
        return covered[single].mean().item(), covered[~single].mean().item()

    per_snr = fit_temperatures(logits, z, edges, snr, by_peak=False)
    assert max(abs(c - 0.68) for c in coverages(calibrated_probs(logits, snr, per_snr))) > 0.05
    grouped = fit_temperatures(logits, z, edges, snr)
    assert grouped["temperatures"].shape == (len(PEAK_EDGES) - 1, len(SNR_EDGES) - 1)
    assert all(abs(c - 0.68) < 0.03 for c in coverages(calibrated_probs(logits, snr, grouped, edges)))
    with pytest.raises(ValueError, match="bin_edges"):
        calibrated_probs(logits, snr, grouped)


def test_interval_coverage_is_the_quantile_interval_test(generator):
    """The CDF-at-z shortcut agrees with the interval from pz_summary's quantiles, at every temperature."""
    from zfast.bins import cdf_quantiles
    from zfast.calibration import interval_coverage

    edges = torch.linspace(1.0, 1.8, 38, dtype=torch.float64)  # an odd number of bins
    logits = 3 * torch.randn(501, 37, generator=generator, dtype=torch.float64)
    logits[:50, 5] += 40.0  # sharp peaks: tiny temperatures make them one-hot
    z = 0.95 + 0.9 * torch.rand(501, generator=generator, dtype=torch.float64)  # some outside the bins
    temperatures = (0.001, 0.03, 0.3, 1.0, 4.0, 10.0)
    fast = interval_coverage(logits, z, edges, temperatures, chunk=97)
    for t, temperature in enumerate(temperatures):
        p = torch.softmax(logits / temperature, dim=1)
        lo, hi = cdf_quantiles(p, edges, (0.16, 0.84)).unbind(dim=1)
        slow = ((lo <= z) & (z <= hi)).double()
        assert torch.equal(fast[t], slow), (temperature, int((fast[t] != slow).sum()))
    assert 0.05 < fast.mean() < 0.95
