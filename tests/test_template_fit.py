"""The information-limit χ² fit (zfast.template_fit): exact on noiseless spectra, honest about noise and masks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_cuda

import zfast
from zfast.template_fit import template_fit_redshift


def _spectra(noise, n=24, seed=0):
    library = zfast.SEDLibrary.default()
    instrument = zfast.Instrument.preset("euclid-nisp-red", noise)
    data = zfast.AugmentedSpectra(library, instrument, split="test", batch_size=n, seed=seed)
    return library, instrument, *next(data)


def test_noiseless_spectra_give_back_their_redshift_to_the_fine_grid():
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("none"))
    assert torch.isinf(ivar).all()
    z_fit = template_fit_redshift(library, instrument, sed, flux, ivar)
    assert (z_fit - z).abs().max() < 5e-6  # the final grid step is 2.5e-6
    # A wrong template does not fit as well: the χ² needs the true SED (here: every spectrum's neighbour's).
    wrong = template_fit_redshift(library, instrument, sed.roll(1), flux, ivar)
    assert (wrong - z).abs().max() > 1e-4


def test_masked_pixels_are_ignored_and_noise_spreads_the_fit():
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(30.0, 30.0)), n=32, seed=3)
    junk = flux.clone()
    junk[:, 200:260] = 1e6  # garbage where ivar is 0 must not matter
    masked_ivar = ivar.clone()
    masked_ivar[:, 200:260] = 0
    a = template_fit_redshift(library, instrument, sed, junk, masked_ivar)
    b = template_fit_redshift(library, instrument, sed, flux, masked_ivar)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    error = ((a - z) / (1 + z)).abs()
    assert error.median() < 1e-3 and error.median() > 0  # noise: close but no longer exact


def _reference_grid(library, instrument, seds, flux, ivar, grid):
    """min over SEDs of χ² - Σwf² at each z, float64, one (SED, z) at a time."""
    weight = torch.where(torch.isinf(ivar), 1.0, ivar).double()
    out = torch.empty(flux.shape[0], grid.numel(), dtype=torch.float64)
    for k, zk in enumerate(grid.tolist()):
        t = instrument.convolve_lsf(library.redshift_resample(seds, torch.full((seds.numel(),), zk), instrument.wave_edges)).double()
        cross = (weight * flux.double()) @ t.T
        power = weight @ t.square().T
        out[:, k] = (-cross.square() / power).min(dim=1).values
    return out


def test_library_fit_finds_redshift_and_sed_without_being_told_the_template():
    from zfast.template_fit import library_fit_redshift

    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("none"), n=12, seed=4)
    candidates = torch.unique(torch.cat([sed, torch.randperm(len(library), generator=torch.Generator().manual_seed(1))[:30]]))
    fit = library_fit_redshift(library, instrument, flux, ivar, candidates, step=4e-3)
    # Noiseless spectra with their SED among the candidates: that SED and its z, to the fine grid (step 1e-5).
    assert torch.equal(fit["sed"], sed)
    assert (fit["z"] - z.double()).abs().max() < 2e-5
    # The coarse χ² grid is the float64 brute force over (SED, z), to float32 precision.
    reference = _reference_grid(library, instrument, candidates, flux, ivar, fit["z_grid"])
    torch.testing.assert_close(fit["chi2_grid"].double(), reference, rtol=2e-5, atol=1e-3)
    # With the true SED alone it is the information-limit fit (template_fit_redshift) up to its finer final grid.
    one = library_fit_redshift(library, instrument, flux[:1], ivar[:1], sed[:1], step=4e-3)
    assert abs(one["z"].item() - template_fit_redshift(library, instrument, sed[:1], flux[:1], ivar[:1]).item()) < 2e-5
    # Without its SED a spectrum is fitted by another candidate; noise and masks as template_fit_redshift treats them.
    others = candidates[~torch.isin(candidates, sed[:1])]
    away = library_fit_redshift(library, instrument, flux[:1], ivar[:1], others, step=4e-3)
    assert away["sed"].item() != sed[0].item() and away["chi2"].item() > one["chi2"].item()


def test_library_fit_checks_its_inputs_and_ignores_masked_pixels():
    from zfast.template_fit import library_fit_redshift

    library, instrument, flux, ivar, _, _ = _spectra(zfast.NoiseModel("white", snr=(30.0, 30.0)), n=6, seed=2)
    seds = torch.arange(0, len(library), 10)
    junk, masked = flux.clone(), ivar.clone()
    junk[:, 100:140], masked[:, 100:140] = 1e6, 0
    a = library_fit_redshift(library, instrument, junk, masked, seds, step=5e-3)
    b = library_fit_redshift(library, instrument, flux, masked, seds, step=5e-3)
    torch.testing.assert_close(a["z"], b["z"], rtol=0, atol=0)
    # Physical units (f_λ ~ 3e-17, ivar ~ 1e33) give the same fit: the float32 stage works on scaled copies.
    physical = library_fit_redshift(library, instrument, 3e-17 * flux, masked / 9e-34, seds, step=5e-3)
    torch.testing.assert_close(physical["z"], b["z"], rtol=0, atol=1e-9)
    assert torch.equal(physical["sed"], b["sed"])
    torch.testing.assert_close(physical["chi2"], b["chi2"], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="flux and ivar must be"):
        library_fit_redshift(library, instrument, flux[:, :-1], ivar[:, :-1], seds)
    with pytest.raises(ValueError, match="no SEDs"):
        library_fit_redshift(library, instrument, flux, ivar, seds[:0])
    with pytest.raises(ValueError, match="z_range"):
        library_fit_redshift(library, instrument, flux, ivar, seds, z_range=(1.5, 1.2))


@requires_cuda
def test_library_fit_on_cuda_matches_the_cpu():
    from zfast.template_fit import library_fit_redshift

    library, instrument, flux, ivar, z, _ = _spectra(zfast.NoiseModel("white", snr=(10.0, 10.0)), n=40, seed=7)
    ivar[:3, 50:90] = 0  # masked stretches too
    seds = torch.arange(0, len(library), 7)
    cpu = library_fit_redshift(library, instrument, flux, ivar, seds, step=4e-3)
    gpu = library_fit_redshift(library.to("cuda"), instrument, flux.cuda(), ivar.cuda(), seds.cuda(), step=4e-3)
    torch.testing.assert_close(gpu["chi2_grid"].cpu(), cpu["chi2_grid"], rtol=1e-4, atol=1e-2)
    same = gpu["sed"].cpu() == cpu["sed"]
    assert same.float().mean() > 0.9  # float32 near-ties may pick another SED; then z still agrees
    torch.testing.assert_close(gpu["z"].cpu()[same], cpu["z"][same], rtol=0, atol=1e-9)
    assert ((gpu["z"].cpu() - cpu["z"]).abs() / (1 + z) < 1e-3).all()


def test_z_err_is_the_delta_chi2_of_one_half_width():
    from zfast.template_fit import fit_weights, library_fit_redshift, template_chi2

    library, instrument, flux, ivar, _, _ = _spectra(zfast.NoiseModel("white", snr=(5.0, 20.0)), n=16, seed=11)
    fit = library_fit_redshift(library, instrument, flux, ivar, torch.arange(0, len(library), 5))
    assert (fit["z_err"] > 0).all()
    weight, f = fit_weights(flux.double(), ivar.double())
    # Brute force (float64, the best SED): the χ² minimum on a 1e-7 grid, then χ² at that minimum ± z_err rises by
    # one on average over the two sides (a valley's sides differ; its widths here run from 5e-6 to 2e-3).
    offsets = torch.linspace(-1e-4, 1e-4, 2001, dtype=torch.float64)
    dense = template_chi2(library, instrument, fit["sed"], f, weight, fit["z"][:, None] + offsets)
    z_min = fit["z"] + offsets[dense.argmin(dim=1)]
    grid = torch.stack([z_min, z_min - fit["z_err"], z_min + fit["z_err"]], dim=1)
    chi = template_chi2(library, instrument, fit["sed"], f, weight, grid)
    rise = (chi[:, 1:] - chi[:, :1]).mean(dim=1)
    assert fit["z_err"].max() > 3e-4 and fit["z_err"].min() < 3e-5  # narrow and wide valleys both checked
    torch.testing.assert_close(rise, torch.ones_like(rise), rtol=0.2, atol=0)
    # The modes: every refined pair (2 of the chosen valley, the 4 best of the grid), the winner among them.
    assert fit["modes"]["z"].shape == (16, 6)
    assert (fit["modes"]["chi2"] == fit["chi2"][:, None]).any(dim=1).all()


def test_library_fit_picks_the_valley_of_the_sed_marginalised_likelihood():
    from zfast.template_fit import library_fit_redshift

    library, instrument, flux, ivar, _, _ = _spectra(zfast.NoiseModel("white", snr=(2.0, 2.0)), n=48, seed=21)
    seds = torch.arange(0, len(library), 3)
    step = 4e-3
    fit = library_fit_redshift(library, instrument, flux, ivar, seds, step=step)
    # float64 brute force: log Σ_s exp(-χ²_s(z)/2) at each coarse z, up to a constant per spectrum.
    weight = ivar.double()
    reference = torch.empty(flux.shape[0], fit["z_grid"].numel(), dtype=torch.float64)
    profile = torch.empty_like(reference)
    for k, zk in enumerate(fit["z_grid"].tolist()):
        t = instrument.convolve_lsf(library.redshift_resample(seds, torch.full((seds.numel(),), zk), instrument.wave_edges)).double()
        chi = -((weight * flux.double()) @ t.T).square() / (weight @ t.square().T)
        reference[:, k] = torch.logsumexp(-chi / 2, dim=1)
        profile[:, k] = chi.min(dim=1).values
    got = fit["log_like_grid"].double()
    torch.testing.assert_close(got - got.max(dim=1, keepdim=True).values, reference - reference.max(dim=1, keepdim=True).values,
                               rtol=0, atol=0.05)  # fmt: skip
    chosen = fit["z_grid"][reference.argmax(dim=1)]
    assert ((fit["z"] - chosen).abs() <= 2 * step + 1e-9).all()
    # At this SNR the marginal and the best SED alone disagree on the valley for some spectra: the test sees both.
    assert (fit["z_grid"][profile.argmin(dim=1)] - chosen).abs().gt(0.02).sum() >= 2


def _modes(z, chi2, sigma, sed):
    t = lambda v, dtype=torch.float64: torch.tensor(v, dtype=dtype)
    return {"modes": {"z": t(z), "chi2": t(chi2), "sigma": t(sigma), "sed": t(sed, torch.int64)}}


def test_fit_quantiles_of_the_tempered_chi2_mixture():
    from zfast.template_fit import fit_quantiles

    sigma = 1e-4
    # One valley: normal quantiles, widened by sqrt(T).
    fit = _modes([[1.3, 1.6]], [[0.0, 400.0]], [[sigma, sigma]], [[0, 1]])
    for temperature in (0.25, 1.0, 4.0):
        q = fit_quantiles(fit, temperature, (0.16, 0.5, 0.84))[0]
        expected = 1.3 + sigma * temperature**0.5 * torch.special.ndtri(torch.tensor([0.16, 0.5, 0.84], dtype=torch.float64))
        torch.testing.assert_close(q, expected, rtol=0, atol=1e-9)
    # Two valleys, Δχ² = 2 apart: the worse one (z = 1.1) holds 1 / (1 + e^(Δ/2T)) of the mass.
    fit = _modes([[1.1, 1.5]], [[2.0, 0.0]], [[sigma, sigma]], [[3, 4]])
    for temperature in (1.0, 3.0):
        w = 1 / (1 + math.exp(1 / temperature))
        lo = fit_quantiles(fit, temperature, (0.16,))[0, 0]
        expected = 1.1 + sigma * temperature**0.5 * torch.special.ndtri(torch.tensor(0.16 / w, dtype=torch.float64))
        torch.testing.assert_close(lo, expected, rtol=0, atol=1e-9)
    # A pair refined twice to the same minimum with the same SED counts once (else 2/3 of the mass would sit there).
    fit = _modes([[1.2, 1.2, 1.4]], [[0.0, 0.0, 0.0]], [[sigma] * 3], [[7, 7, 8]])
    median = fit_quantiles(fit, 1.0, (0.5,))[0, 0]
    assert 1.2 + 5 * sigma < median < 1.4 - 5 * sigma  # anywhere in the gap between the two valleys
    # ... but another SED at the same z is another template: it adds its mass.
    fit = _modes([[1.2, 1.2, 1.4]], [[0.0, 0.0, 0.0]], [[sigma] * 3], [[7, 9, 8]])
    assert fit_quantiles(fit, 1.0, (0.5,))[0, 0] < 1.2 + 2 * sigma


def test_fit_temperatures_recover_the_width_that_covers_68_percent():
    from zfast.template_fit import calibrate_fit_temperatures, fit_quantiles, fit_temperature

    g = torch.Generator().manual_seed(5)
    n = 3000
    sigma = torch.full((n, 1), 2e-4, dtype=torch.float64)
    centre = 1.0 + 0.8 * torch.rand(n, 1, dtype=torch.float64, generator=g)
    snr = torch.where(torch.arange(n) < n // 2, 10.0, math.inf).double()  # two SNR bins: SNR 10 and noiseless
    scale = torch.where(snr < math.inf, 2.0, 0.5)[:, None]  # true errors 2x and 0.5x the formal σ
    z = (centre + scale * sigma * torch.randn(n, 1, dtype=torch.float64, generator=g))[:, 0]
    fit = {"modes": {"z": centre, "chi2": torch.zeros(n, 1, dtype=torch.float64), "sigma": sigma, "sed": torch.zeros(n, 1, dtype=torch.int64)}}
    calibration = calibrate_fit_temperatures(fit, z, snr)
    t = fit_temperature(calibration, snr)
    assert 3.0 < t[0] < 5.3 and 0.18 < t[-1] < 0.33  # T = scale²: 4 and 0.25
    lo, hi = fit_quantiles(fit, t).unbind(dim=1)
    for part in (snr < math.inf, snr == math.inf):
        coverage = ((lo <= z) & (z <= hi))[part].double().mean()
        assert abs(coverage - 0.68) < 0.03


def test_fit_confidence_is_the_likelihood_share_of_the_chosen_valley():
    from zfast.template_fit import fit_confidence

    grid = 1.0 + 2e-3 * (torch.arange(400, dtype=torch.float64) + 0.5)
    g = torch.Generator().manual_seed(11)
    share = 0.2 + 0.75 * torch.rand(5, dtype=torch.float64, generator=g)
    z1 = 1.05 + 0.3 * torch.rand(5, dtype=torch.float64, generator=g)
    z2 = z1 + 0.3  # far outside ±0.01(1 + z)
    like = (share[:, None] * torch.exp(-0.5 * ((grid - z1[:, None]) / 3e-3) ** 2)
            + (1 - share[:, None]) * torch.exp(-0.5 * ((grid - z2[:, None]) / 3e-3) ** 2))
    log_like = (like + 1e-300).log() + 123.0  # any constant per spectrum
    log_like = torch.cat([log_like, torch.full((1, 400), math.nan, dtype=torch.float64)])
    fit = {"log_like_grid": log_like.float(), "z_grid": grid, "z": torch.cat([z1, torch.tensor([1.3], dtype=torch.float64)])}
    confidence = fit_confidence(fit)
    torch.testing.assert_close(confidence[:5], share, rtol=0, atol=2e-3)
    assert confidence[5] == 1.0  # not marginalised: no competing valleys known
    # A narrower window holds less of a 3e-3-wide valley: ±0.001·(1 + z) ≈ ±0.7σ of it.
    narrow = fit_confidence(fit, width=0.001)[:5] / share
    assert (narrow > 0.35).all() and (narrow < 0.75).all()


def test_calibration_groups_calibrate_two_populations_at_one_snr():
    """At one SNR, spectra with one valley (true errors 0.5x the formal σ) and spectra whose valley is wrong half the
    time (the true z 30σ away): one temperature per SNR bin cannot cover 68 % of both; one per group (``fit_groups``: confidence bins) can."""
    from zfast.template_fit import N_GROUPS, calibrate_fit_temperatures, fit_quantiles, fit_temperature

    g = torch.Generator().manual_seed(6)
    n = 4000
    sigma = torch.full((n, 2), 2e-4, dtype=torch.float64)
    centre = 1.1 + 0.6 * torch.rand(n, 1, dtype=torch.float64, generator=g)
    other = centre + 0.1
    sure = torch.arange(n) < n // 2
    groups = torch.where(sure, 3, 1)  # confidence > 0.99 and 0.5-0.9
    snr = torch.full((n,), 1.5, dtype=torch.float64)
    wrong = ~sure & (torch.rand(n, generator=g) < 0.5)
    truth = torch.where(wrong[:, None], other, centre)
    z = (truth + torch.where(sure, 0.5, 1.0)[:, None] * 2e-4 * torch.randn(n, 1, dtype=torch.float64, generator=g))[:, 0]
    chi2 = torch.stack([torch.zeros(n, dtype=torch.float64), torch.where(sure, 40.0, 1.0).double()], dim=1)
    fit = {"modes": {"z": torch.cat([centre, other], dim=1), "chi2": chi2, "sigma": sigma, "sed": torch.tensor([[0, 1]]).expand(n, 2)}}

    def coverages(t):
        lo, hi = fit_quantiles(fit, t).unbind(dim=1)
        covered = ((lo <= z) & (z <= hi)).double()
        return covered[sure].mean().item(), covered[~sure].mean().item()

    per_snr = calibrate_fit_temperatures(fit, z, snr)
    both = calibrate_fit_temperatures(fit, z, snr, groups)
    assert both["temperatures"].shape == (N_GROUPS, 8) and both["counts"].sum() == n
    assert max(abs(c - 0.68) for c in coverages(fit_temperature(per_snr, snr))) > 0.05
    t = fit_temperature(both, snr, groups)
    assert all(abs(c - 0.68) < 0.03 for c in coverages(t))
    assert t[sure].max() < t[~sure].min()
    # Groups without spectra take the nearest fitted group of their kind; a scale multiplies the temperature.
    assert torch.equal(both["temperatures"][0], both["temperatures"][1]) and torch.equal(both["temperatures"][2], both["temperatures"][3])
    torch.testing.assert_close(fit_temperature(both, snr, groups, torch.full((n,), 3.0, dtype=torch.float64)), 3 * t)
    with pytest.raises(ValueError, match="groups"):
        fit_temperature(both, snr)


def test_fit_groups_and_scale():
    from zfast.template_fit import fit_groups, fit_scale

    grid = 1.0 + 2e-3 * (torch.arange(400, dtype=torch.float64) + 0.5)
    z = torch.tensor([1.2, 1.2, 1.5, 1.5, 1.5], dtype=torch.float64)
    log_like = -0.5 * ((grid - 1.2) / 2e-3) ** 2 + torch.zeros(5, 1, dtype=torch.float64)  # one valley at 1.2
    log_like[1] = torch.logaddexp(log_like[1], -0.5 * ((grid - 1.6) / 2e-3) ** 2 + math.log(0.4 / 0.6))  # 60 % at 1.2
    log_like[2:] = math.nan  # noiseless rows
    rchi2 = torch.tensor([1.5, 0.9, 1e-4, 8e-4, 5e-3], dtype=torch.float64)
    fit = {"log_like_grid": log_like.float(), "z_grid": grid, "z": z, "rchi2": rchi2}
    assert fit_groups(fit).tolist() == [3, 1, 4, 6, 7]
    assert fit_scale(fit).tolist() == [1.5, 0.9, 1.0, 1.0, 1.0]


def test_fit_deltachi2_is_the_best_chi2_outside_the_window_less_the_fits():
    from zfast.template_fit import fit_deltachi2, library_fit_redshift

    library, instrument, flux, ivar, z, _ = _spectra(zfast.NoiseModel("white", snr=(2.0, 8.0)), n=40, seed=int(torch.randint(0, 10**6, ()).item()))
    seds = torch.arange(0, len(library), 4)
    fit = library_fit_redshift(library, instrument, flux, ivar, seds, step=4e-3)
    profile = _reference_grid(library, instrument, seds, flux, ivar, fit["z_grid"])  # float64, one (SED, z) at a time
    far = (fit["z_grid"][None, :] - fit["z"][:, None]).abs() > 0.01 * (1 + fit["z"][:, None])
    expected = profile.masked_fill(~far, math.inf).min(dim=1).values - fit["chi2"].double()
    got = fit_deltachi2(fit)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(profile.abs().max()))
    # What it is for: at low SNR the spectra whose fit is wrong are those with a small Δχ².
    wrong = ((fit["z"] - z) / (1 + z)).abs() > 0.01
    assert wrong.any() and (~wrong).any()
    assert got[wrong].median() < got[~wrong].median()


def test_fit_deltachi2_is_large_for_a_noiseless_true_template_and_inf_without_another_z():
    from zfast.template_fit import fit_deltachi2, library_fit_redshift

    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(50.0, 50.0)), n=6, seed=5)
    fit = library_fit_redshift(library, instrument, flux, ivar, sed.unique(), step=4e-3)
    assert (fit_deltachi2(fit) > 25).all()  # one SED family and one z: no other redshift comes close at SNR 50
    narrow = library_fit_redshift(library, instrument, flux, ivar, sed.unique(), z_range=(1.3, 1.305), step=4e-3)
    assert torch.isinf(fit_deltachi2(narrow)).all()
