"""Redshift bins: class indices, regression targets, soft labels and P(z) summaries."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from scipy import stats

import zfast
from zfast.bins import PzSummary


def test_paper_bin_edges():
    edges = zfast.redshift_bin_edges()
    assert edges.dtype == torch.float64 and edges.numel() == 801
    assert edges[0].item() == 1.0 and edges[-1].item() == 1.8
    torch.testing.assert_close(torch.diff(edges), torch.full((800,), 0.001, dtype=torch.float64), rtol=1e-9, atol=0)
    assert zfast.redshift_bin_edges(1.0, 1.8, 80).numel() == 81


def test_z_to_bin_half_open_bins(generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    z = torch.tensor([1.0, 1.00999, 1.01, 1.555, 1.79999, 1.8], dtype=torch.float64)
    assert zfast.bins.z_to_bin(z, edges).tolist() == [0, 0, 1, 55, 79, 79]
    random_z = 1.0 + 0.8 * torch.rand(1000, dtype=torch.float64, generator=generator)
    index = zfast.bins.z_to_bin(random_z, edges)
    assert torch.all(edges[index] <= random_z) and torch.all(random_z < edges[index + 1])


def test_regression_target_round_trip(generator):
    edges = zfast.redshift_bin_edges()
    z = 1.0 + 0.8 * torch.rand(100, dtype=torch.float64, generator=generator)
    target = zfast.bins.z_to_target(z, edges)
    assert target.min() >= 0 and target.max() < 1
    torch.testing.assert_close(zfast.bins.target_to_z(target, edges), z)


@pytest.mark.parametrize("kind", ["gaussian", "box"])
def test_soft_labels_rows_sum_to_one_and_match_scipy(generator, kind):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    z = 1.05 + 0.7 * torch.rand(64, dtype=torch.float64, generator=generator)
    sigma = 0.0015
    q = zfast.soft_labels(z, edges, sigma, kind=kind)
    assert q.shape == (64, 800) and q.dtype == torch.float64
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64, dtype=torch.float64))
    dist = stats.norm(z.numpy()[:, None], sigma) if kind == "gaussian" else stats.uniform(
        z.numpy()[:, None] - math.sqrt(3) * sigma, 2 * math.sqrt(3) * sigma
    )
    expected = dist.cdf(edges.numpy()[None, 1:]) - dist.cdf(edges.numpy()[None, :-1])
    expected /= expected.sum(axis=1, keepdims=True)
    torch.testing.assert_close(q, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)


def test_soft_label_mean_recovers_z_far_below_the_bin_width(generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)  # bins of 0.01
    z = 1.2 + 0.4 * torch.rand(200, dtype=torch.float64, generator=generator)
    q = zfast.soft_labels(z, edges, sigma=0.03)  # a kernel 3 bins wide
    centres = 0.5 * (edges[1:] + edges[:-1])
    assert (q @ centres - z).abs().max() < 1e-4  # 1 % of a bin


def test_gaussian_tails_do_not_cancel():
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    q = zfast.soft_labels(torch.tensor([1.1], dtype=torch.float64), edges, sigma=0.001)
    far = q[0, 200]  # 100 σ away: far below double precision of 1 - Φ, but the erfc form keeps it > 0 or 0
    near = q[0, 110]  # ~10 σ: Φ difference ~ 1e-23, representable only without cancellation
    assert far >= 0 and near > 0
    expected = stats.norm.sf((edges[110].item() - 1.1) / 0.001) - stats.norm.sf((edges[111].item() - 1.1) / 0.001)
    assert math.isclose(near.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("n_bins,sigma_in_bins", [(800, 1.5), (800, 4.0), (80, 1.0), (80, 3.0)])
def test_pz_summary_of_a_soft_label_returns_the_z_it_encodes(generator, n_bins, sigma_in_bins):
    edges = zfast.redshift_bin_edges(1.0, 1.8, n_bins)
    width = 0.8 / n_bins
    z = 1.2 + 0.4 * torch.rand(100, dtype=torch.float64, generator=generator)
    sigma = sigma_in_bins * width
    summary = zfast.pz_summary(zfast.soft_labels(z, edges, sigma), edges)
    assert isinstance(summary, PzSummary)
    assert (summary.z_mean - z).abs().max() < 0.02 * width
    assert (summary.z_mode - z).abs().max() < 0.05 * width
    # σ of a Gaussian binned into bins of width w: sqrt(σ² + w²/12) (Sheppard's correction, which holds
    # better the wider the kernel is in bins).
    expected_sigma = torch.full_like(z, math.sqrt(sigma**2 + width**2 / 12))
    torch.testing.assert_close(summary.sigma, expected_sigma, rtol=0.06 / sigma_in_bins, atol=0)
    for lo, hi, level in ((summary.lo68, summary.hi68, 0.84), (summary.lo95, summary.hi95, 0.975)):
        half = stats.norm.ppf(level) * sigma
        assert (lo - (z - half)).abs().max() < 0.25 * width + 0.05 * sigma
        assert (hi - (z + half)).abs().max() < 0.25 * width + 0.05 * sigma


def test_pz_summary_of_a_one_hot_and_at_the_range_ends():
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    probs = torch.zeros(3, 80)
    probs[0, 40] = 1.0  # one-hot: mode at the bin centre, interval inside the bin
    probs[1, 0] = 1.0  # first bin
    probs[2, 79] = 2.0  # last bin, unnormalised
    summary = zfast.pz_summary(probs, edges)
    torch.testing.assert_close(summary.z_mode, torch.tensor([1.405, 1.005, 1.795], dtype=torch.float64))
    torch.testing.assert_close(summary.z_mean, summary.z_mode)
    torch.testing.assert_close(summary.sigma, torch.full((3,), 0.01 / math.sqrt(12), dtype=torch.float64))
    torch.testing.assert_close(summary.lo68[0], torch.tensor(1.4016, dtype=torch.float64))
    torch.testing.assert_close(summary.hi95[0], torch.tensor(1.40975, dtype=torch.float64))


def test_pz_summary_bimodal_mode_picks_the_higher_peak():
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    q = 0.4 * zfast.soft_labels(torch.tensor([1.2]), edges, 0.02) + 0.6 * zfast.soft_labels(torch.tensor([1.6]), edges, 0.02)
    summary = zfast.pz_summary(q, edges)
    assert abs(summary.z_mode.item() - 1.6) < 0.005
    assert abs(summary.z_mean.item() - (0.4 * 1.2 + 0.6 * 1.6)) < 1e-3
    assert summary.lo95.item() < 1.2 < 1.6 < summary.hi95.item()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda e: zfast.bins.z_to_bin(torch.tensor([0.9]), e), ValueError, r"z\[0\] = 0.9 is outside the bins \[1, 1.8\]"),
        (lambda e: zfast.bins.z_to_bin(torch.tensor([1.2, math.nan]), e), ValueError, r"non-finite.*z\[1\]"),
        (lambda e: zfast.bins.z_to_bin(torch.tensor([1, 2]), e), TypeError, "floating-point"),
        (lambda e: zfast.bins.z_to_bin(torch.tensor([[1.2]]), e), ValueError, "1-D"),
        (lambda e: zfast.bins.z_to_bin(torch.tensor([1.2]), e.flip(0)), ValueError, "strictly increasing"),
        (lambda e: zfast.soft_labels(torch.tensor([1.2]), e, 0.0), ValueError, "sigma must be finite and > 0"),
        (lambda e: zfast.soft_labels(torch.tensor([1.2]), e, torch.ones(2)), ValueError, "sigma must be a number or a"),
        (lambda e: zfast.soft_labels(torch.tensor([1.2]), e, 0.01, kind="lorentz"), ValueError, "kind must be"),
        (lambda e: zfast.pz_summary(torch.ones(2, 79), e), ValueError, "C = 79 columns but bin_edges defines 80"),
        (lambda e: zfast.pz_summary(-torch.ones(2, 80), e), ValueError, "finite and >= 0"),
        (lambda e: zfast.pz_summary(torch.full((2, 80), math.nan), e), ValueError, "finite and >= 0"),
        (lambda e: zfast.pz_summary(torch.zeros(2, 80), e), ValueError, "row 0 sums to 0"),
        (lambda e: zfast.pz_summary(torch.ones(80), e), ValueError, "2-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    with pytest.raises(error, match=match):
        call(edges)


def _mass_reference(p, edges, lo, hi):
    """P(lo <= z < hi) of the piecewise-constant density: overlap length x density, bin by bin (float64)."""
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    return float((p * overlap / np.diff(edges)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pz_candidates_against_a_brute_force_reference(seed):
    from zfast.bins import pz_candidates

    rng = np.random.default_rng(seed)
    n_bins = int(rng.integers(50, 300))
    edges = np.sort(np.concatenate([[1.0, 1.8], rng.uniform(1.0, 1.8, n_bins - 1)]))
    centre = 0.5 * (edges[1:] + edges[:-1])
    rows = []
    for _ in range(6):
        density = sum(rng.uniform(0.1, 1) * np.exp(-0.5 * ((centre - rng.uniform(1, 1.8)) / rng.uniform(0.002, 0.05)) ** 2)
                      for _ in range(int(rng.integers(1, 4))))  # fmt: skip
        rows.append(density * np.diff(edges) + 1e-6 * rng.random(n_bins))
    p = np.array(rows)
    p /= p.sum(axis=1, keepdims=True)
    z = centre[p.argmax(axis=1)] + rng.uniform(-1e-3, 1e-3, len(p))
    got = pz_candidates(torch.tensor(p), torch.tensor(edges), torch.tensor(z), n=3, half_width=0.01)
    for b in range(len(p)):
        chosen = [z[b]]
        masses = [_mass_reference(p[b], edges, z[b] - 0.01 * (1 + z[b]), z[b] + 0.01 * (1 + z[b]))]
        for _ in range(2):
            best, best_mass, best_score = None, -1.0, -1.0
            for j, c in enumerate(centre):
                if any(abs(c - q) < 0.01 * (1 + c) + 0.01 * (1 + q) for q in chosen):
                    continue
                m = _mass_reference(p[b], edges, c - 0.01 * (1 + c), c + 0.01 * (1 + c))
                if m + 1e-9 * p[b, j] > best_score:
                    best, best_mass, best_score = c, m, m + 1e-9 * p[b, j]
            chosen.append(best)
            masses.append(best_mass)
        np.testing.assert_allclose(got.p[b].numpy(), masses, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.z[b].numpy(), chosen, rtol=0, atol=1e-12)
        assert sum(masses) <= 1 + 1e-9  # non-overlapping windows
        assert got.zprob[b] == got.p[b, 0]
        np.testing.assert_allclose(float(got.deltachi2[b]), 2 * np.log(max(masses[0], 1e-30) / max(masses[1], 1e-30)), rtol=1e-9)


def test_pz_candidates_single_sharp_peak_and_a_narrow_range():
    from zfast.bins import pz_candidates

    edges = torch.linspace(1.0, 1.8, 801, dtype=torch.float64)
    p = torch.zeros(2, 800, dtype=torch.float64)
    p[0, 400] = 1.0  # all mass in one bin: the second candidate holds nothing
    p[1, 100], p[1, 600] = 0.75, 0.25  # two peaks: ΔΧ² = 2 ln 3
    z = torch.tensor([1.4005, 1.1005], dtype=torch.float64)
    got = pz_candidates(p, edges, z)
    assert got.zprob.tolist() == pytest.approx([1.0, 0.75])
    assert float(got.p[0, 1]) == 0.0 and float(got.deltachi2[0]) == pytest.approx(2 * np.log(1e30))
    assert float(got.deltachi2[1]) == pytest.approx(2 * np.log(3.0))
    assert float(got.z[1, 1]) == pytest.approx(1.6005, abs=1e-12)
    narrow = pz_candidates(torch.full((1, 10), 0.1, dtype=torch.float64), torch.linspace(1.0, 1.01, 11, dtype=torch.float64),
                           torch.tensor([1.005], dtype=torch.float64))  # fmt: skip
    assert math.isnan(float(narrow.z[0, 1])) and float(narrow.p[0, 1]) == 0.0  # no second window fits in the range
