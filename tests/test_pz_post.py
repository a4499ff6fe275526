"""zfast.ops.pz_post (the native P(z) post-processing of zfast.predict) against its torch spec
(zfast.calibration.calibrated_probs, zfast.bins.pz_summary / refined_mode / pz_candidates) on fresh random inputs:
odd sizes, sharp and flat P(z), huge logits, NaN SNR, calibrations with and without peak groups; op machinery
(opcheck) and validation."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from zfast.bins import pz_candidates, pz_summary, pz_summary_and_candidates, redshift_bin_edges, refined_mode
from zfast.calibration import calibrated_probs, plain_and_calibrated
from zfast.ops import pz_post

predict_module = importlib.import_module("zfast.predict")

SIZES = [(1, 800), (257, 800), (5, 7), (3, 2), (9, 3), (31, 101)]


def random_logits(generator, batch, n_bins, width=3.0, noise=2.0, dtype=torch.float32):
    """A Gaussian bump at a random bin (a random width in bins) plus noise: P(z) from sharp to flat."""
    centre = torch.randint(0, n_bins, (batch, 1), generator=generator).double()
    widths = width * (0.2 + 3 * torch.rand(batch, 1, dtype=torch.float64, generator=generator))
    k = torch.arange(n_bins, dtype=torch.float64)[None]
    noise = noise * torch.randn(batch, n_bins, dtype=torch.float64, generator=generator)
    return (-0.5 * ((k - centre) / widths) ** 2 + noise).to(dtype)


def random_calibration(generator, grouped: bool) -> dict:
    n_snr, n_groups = 4, 3
    shape = (n_groups, n_snr) if grouped else (n_snr,)
    calibration = dict(snr_edges=torch.tensor([0.0, 5.0, 10.0, 30.0, math.inf], dtype=torch.float64),
                       temperatures=0.4 + 1.5 * torch.rand(shape, dtype=torch.float64, generator=generator))  # fmt: skip
    if grouped:
        calibration["peak_edges"] = torch.tensor([0.0, 0.3, 0.7, 1.0001], dtype=torch.float64)
    return calibration


def random_snr(generator, batch):
    snr = 40 * torch.rand(batch, dtype=torch.float64, generator=generator)
    snr[:: max(1, batch // 3)] = math.nan  # no valid pixel: the first SNR bin
    if batch > 1:
        snr[1] = math.inf  # noiseless: the last
    return snr


def edges_and_centres(n_bins):
    edges = redshift_bin_edges(1.0, 1.8, n_bins).double()
    return edges, 0.5 * (edges[1:] + edges[:-1])


def spec_post(calibrated, plain, edges, n):
    summary = pz_summary(calibrated, edges)._replace(z_mode=refined_mode(plain, edges))
    return summary, pz_candidates(calibrated, edges, summary.z_mode, n=n)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calibrate_matches_the_spec(generator, grouped, dtype):
    for batch, n_bins in SIZES:
        edges, centres = edges_and_centres(n_bins)
        logits = random_logits(generator, batch, n_bins, dtype=dtype)
        snr = random_snr(generator, batch)
        calibration = random_calibration(generator, grouped)
        plain, calibrated = pz_post.pz_calibrate(logits, centres, snr, calibration["snr_edges"], calibration["temperatures"],
                                                 calibration.get("peak_edges"))  # fmt: skip
        expected = calibrated_probs(logits, snr, calibration, edges)
        torch.testing.assert_close(plain, torch.softmax(logits.double(), dim=1), rtol=1e-13, atol=1e-300)
        # Relative to each value, tiny ones included: exp(x/T - m/T) in another rounding order.
        torch.testing.assert_close(calibrated, expected, rtol=1e-11, atol=1e-300)
        alone, none = pz_post.pz_calibrate(logits, centres)
        assert none is None and torch.equal(alone, plain)


def test_calibrate_huge_logits_and_bad_rows(generator):
    edges, centres = edges_and_centres(50)
    logits = 1e4 * torch.randn(6, 50, dtype=torch.float64, generator=generator)
    logits[2, 7] = math.nan
    logits[3, 9] = math.inf
    logits[4, :] = -math.inf
    logits[4, 5] = 0.0  # -inf elsewhere is allowed: probability 0
    calibration = random_calibration(generator, True)
    snr = random_snr(generator, 6)
    plain, calibrated = pz_post.pz_calibrate(logits, centres, snr, calibration["snr_edges"], calibration["temperatures"],
                                             calibration["peak_edges"])  # fmt: skip
    good = [0, 1, 4, 5]
    torch.testing.assert_close(plain[good], torch.softmax(logits[good], dim=1), rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(calibrated[good], calibrated_probs(logits[good], snr[good], calibration, edges), rtol=1e-11, atol=1e-300)
    assert plain[2].isnan().all() and plain[3].isnan().all() and calibrated[2:4].isnan().all()
    assert plain[4, 5] == 1.0 and plain[4].sum() == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_summarise_matches_the_spec(generator, n):
    compared = 0
    for batch, n_bins in SIZES:
        edges, centres = edges_and_centres(n_bins)
        logits = random_logits(generator, batch, n_bins, dtype=torch.float64)
        plain = torch.softmax(logits, dim=1)
        calibrated = torch.softmax(logits / (0.5 + torch.rand(batch, 1, dtype=torch.float64, generator=generator)), dim=1)
        calibrated = calibrated * (0.1 + torch.rand(batch, 1, dtype=torch.float64, generator=generator))  # unnormalised rows
        for mode in (plain, None):
            out = pz_post.pz_summarise(calibrated, edges, mode, n=n)
            summary, candidates = spec_post(calibrated, calibrated if mode is None else plain, edges, n)
            expected = torch.stack(list(summary), dim=1)
            others = [0, 1, 3, 4, 5, 6]
            torch.testing.assert_close(out.summary[:, others], expected[:, others], rtol=1e-12, atol=1e-14)
            # sigma is sqrt(E[z^2] - E[z]^2): the cancellation leaves ~1e-16 absolute in the variance.
            torch.testing.assert_close(out.summary[:, 2] ** 2, expected[:, 2] ** 2, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(out.p_cand, candidates.p, rtol=0, atol=1e-14)
            # A candidate is decided by window masses; the spec's own rounding (~1e-16: differences of a CDF near
            # 1) decides between windows holding less than that, so compare where every mass stands above it.
            # (candidate j is compared where the masses of candidates 0..j all stand above it).
            clear = torch.cummin(candidates.p > 1e-10, dim=1).values
            compared += int(clear[:, 1].sum()) if n > 1 else int(clear.sum())
            torch.testing.assert_close(out.z_cand[clear], candidates.z[clear], rtol=0, atol=1e-12)
            if n > 1:
                both = clear[:, 1]
                # 2 ln(P0/P1) moves by ~2 dP/P1 for a rounding dP ~1e-16 of the masses.
                error = (out.deltachi2[both] - candidates.deltachi2[both]).abs()
                assert (error <= 1e-13 / candidates.p[both, 1] + 1e-9).all(), error.max()
    assert compared > 100  # second candidates (or first, for n = 1) actually compared


def test_summarise_one_peak_and_plateaus():
    """Exact structure the candidates must find: a P(z) of three separated boxes of known masses (their centres
    and masses are the candidates), a single bin (the next candidates are empty windows, mass 0), and three bins
    asked for five candidates (after three, no free window is left: NaN and 0)."""
    edges, centres = edges_and_centres(400)
    p = torch.zeros(2, 400, dtype=torch.float64)
    p[0, 100:103], p[0, 250:252], p[0, 330] = 0.6 / 3, 0.3 / 2, 0.1
    p[1, 200] = 1.0
    out = pz_post.pz_summarise(p, edges, None, n=4)
    summary, candidates = spec_post(p, p, edges, 4)
    torch.testing.assert_close(out.z_cand, candidates.z, rtol=0, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(out.p_cand[0, :3], torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), rtol=0, atol=1e-12)
    assert out.z_cand[0, 1] == pytest.approx(float(centres[250:252].mean()), abs=0.0011)  # on the plateau's peak bin
    assert not out.z_cand[1].isnan().any() and (out.p_cand[1, 1:] == 0).all()
    few_edges, few_centres = edges_and_centres(3)
    few = pz_post.pz_summarise(torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64), few_edges, None, n=5)
    assert few.z_cand[0, 3:].isnan().all() and (few.p_cand[0, 3:] == 0).all()
    torch.testing.assert_close(few.z_cand[0, 1:3], few_centres[[2, 0]], rtol=0, atol=1e-15)
    torch.testing.assert_close(few.z_cand, spec_post(few_probs := torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64),
                                                     few_probs, few_edges, 5)[1].z, rtol=0, atol=1e-15, equal_nan=True)  # fmt: skip
    assert out.deltachi2[0] == pytest.approx(2 * math.log(2.0), rel=1e-9)
    assert out.deltachi2[1] == pytest.approx(2 * (0 - math.log(1e-30)), rel=1e-12)


def test_summarise_rejects_bad_rows():
    edges, _ = edges_and_centres(10)
    good = torch.full((3, 10), 0.1, dtype=torch.float64)
    for value, message in ((math.nan, "finite"), (-0.1, "finite"), (math.inf, "finite")):
        p = good.clone()
        p[1, 4] = value
        with pytest.raises(ValueError, match=message):
            pz_post.pz_summarise(p, edges)
    p = good.clone()
    p[2] = 0.0
    with pytest.raises(ValueError, match="row 2 sums to 0"):
        pz_post.pz_summarise(p, edges)
    with pytest.raises(ValueError, match="bin_edges defines 9 bins"):
        pz_post.pz_summarise(good, edges[:-1])
    with pytest.raises(TypeError, match="probs must be torch.float64"):
        pz_post.pz_summarise(good.float(), edges)
    with pytest.raises(ValueError, match="mode_probs must have"):
        pz_post.pz_summarise(good, edges, good[:2])
    with pytest.raises(ValueError, match=r"temperatures must have shape \(3, 4\)"):
        calibration = random_calibration(torch.Generator().manual_seed(0), True)
        pz_post.pz_calibrate(torch.zeros(3, 10), edges[1:], torch.ones(3, dtype=torch.float64), calibration["snr_edges"],
                             calibration["temperatures"][:, :2], calibration["peak_edges"])  # fmt: skip


def test_thread_count_does_not_change_a_bit(generator):
    edges, centres = edges_and_centres(800)
    logits = random_logits(generator, 300, 800)
    snr = random_snr(generator, 300)
    calibration = random_calibration(generator, True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            plain, calibrated = pz_post.pz_calibrate(logits, centres, snr, calibration["snr_edges"], calibration["temperatures"],
                                                     calibration["peak_edges"])  # fmt: skip
            results.append((plain, calibrated, *pz_post.pz_summarise(calibrated, edges, plain)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0))


def test_opcheck(generator):
    edges, centres = edges_and_centres(17)
    logits = random_logits(generator, 5, 17)
    calibration = random_calibration(generator, True)
    snr = random_snr(generator, 5)
    torch.library.opcheck(torch.ops.zfast.pz_calibrate.default,
                          (logits, centres, snr, calibration["snr_edges"], calibration["temperatures"], calibration["peak_edges"], 0.01))  # fmt: skip
    torch.library.opcheck(torch.ops.zfast.pz_calibrate.default,
                          (logits.double(), centres, torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64),
                           torch.empty(0, dtype=torch.float64), None, 0.01))  # fmt: skip
    probs = torch.softmax(logits.double(), dim=1)
    torch.library.opcheck(torch.ops.zfast.pz_summarise.default, (probs, probs.clone(), edges, 3, 0.01))
    torch.library.opcheck(torch.ops.zfast.pz_summarise.default, (probs, None, edges, 1, 0.02))


def test_dispatchers_match_the_spec_on_and_off_the_native_op(generator, monkeypatch):
    """plain_and_calibrated and pz_summary_and_candidates (what zfast.predict calls) give the spec's answer with the
    native op and without it (the fallback off the CPU)."""
    edges, _ = edges_and_centres(800)
    logits = random_logits(generator, 64, 800)
    snr = random_snr(generator, 64)
    calibration = random_calibration(generator, True)
    native = plain_and_calibrated(logits, snr, calibration, edges)
    native_post = pz_summary_and_candidates(native[1], edges, native[0], n=3)
    monkeypatch.setattr(pz_post, "available", lambda device: False)
    spec = plain_and_calibrated(logits, snr, calibration, edges)
    spec_out = pz_summary_and_candidates(spec[1], edges, spec[0], n=3)
    for a, b in zip(native, spec):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-300)
    for name, a, b in zip(native_post[0]._fields, native_post[0], spec_out[0]):
        if name == "sigma":
            a, b = a**2, b**2  # see test_summarise_matches_the_spec
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(native_post[1].p, spec_out[1].p, rtol=0, atol=1e-14)
    assert predict_module.pz_summary_and_candidates is pz_summary_and_candidates  # predict takes this path
