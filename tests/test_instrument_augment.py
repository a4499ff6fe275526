"""Instruments (pixels, LSF, noise), normalisation, SED splits and the augmentation pipeline."""

from __future__ import annotations

import math

import pytest
import torch

import zfast
from conftest import log_uniform_centres, random_library, requires_cuda


def line_library(line=6564.61, sigma=0.2, continuum=0.0):
    """One SED: a narrow Gaussian line (integrated exactly over each rest pixel) on a flat continuum."""
    wave = log_uniform_centres(3500.0, 10600.0, 1 / 20000)
    grid = zfast.SEDLibrary(wave, torch.ones(1, wave.numel(), dtype=torch.float64))
    edges = grid.edges
    cdf = 0.5 * (1 + torch.erf((edges - line) / (sigma * math.sqrt(2))))
    flux = continuum + 100.0 * (cdf[1:] - cdf[:-1]) / (edges[1:] - edges[:-1])
    return zfast.SEDLibrary(grid.wavelength, flux[None] + 1e-6)


def test_presets():
    nisp = zfast.Instrument.preset("euclid-nisp-red")
    assert nisp.n_pixels == 512 and nisp.wave_edges[0] == 12060.0
    assert math.isclose(nisp.wave_edges[-1].item(), 18920.8, rel_tol=1e-12)
    assert math.isclose(nisp.lsf_fwhm, 16000 / 450)
    paper = zfast.Instrument.preset("paper")
    assert paper.n_pixels == 1780 and paper.wavelength[0] == 11000.0 and paper.wavelength[-1] == 19895.0
    assert paper.lsf_fwhm is None
    log = zfast.Instrument.log("log", 12000.0, 19000.0, 300)
    torch.testing.assert_close(torch.diff(torch.log(log.wave_edges)), torch.full((300,), math.log(19 / 12) / 300, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown instrument preset"):
        zfast.Instrument.preset("jwst")


def test_lsf_keeps_constants_conserves_flux_and_has_the_right_width():
    nisp = zfast.Instrument.preset("euclid-nisp-red")
    flat = torch.full((2, 512), 3.0)
    torch.testing.assert_close(nisp.convolve_lsf(flat), flat)
    spike = torch.zeros(1, 512, dtype=torch.float64)
    spike[0, 250] = 1.0
    blurred = nisp.convolve_lsf(spike)[0]
    assert math.isclose(blurred.sum().item(), 1.0, rel_tol=1e-12)
    offsets = (torch.arange(512, dtype=torch.float64) - 250) * 13.4
    sigma = math.sqrt((blurred * offsets**2).sum().item())
    # The kernel integrates the Gaussian over whole pixels: σ² = σ_LSF² + pixel²/12.
    assert math.isclose(sigma, math.sqrt((nisp.lsf_fwhm / 2.3548200450309493) ** 2 + 13.4**2 / 12), rel_tol=1e-3)


def test_single_line_through_the_pipeline_peaks_at_its_pixel(generator):
    library = line_library()
    pipeline = zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), split=torch.tensor([0]),
                                      batch_size=64, seed=int(torch.randint(0, 1000, (1,), generator=generator)))  # fmt: skip
    flux, ivar, z, sed_index = next(pipeline)
    assert flux.shape == (64, 512) and flux.dtype == torch.float32 and z.dtype == torch.float64
    assert torch.isinf(ivar).all() and (sed_index == 0).all()
    observed = 6564.61 * (1 + z)
    expected_pixel = torch.bucketize(observed, pipeline.wave_edges, right=True) - 1
    peak = flux.argmax(dim=1)
    # A line within 3σ (rest σ = 0.2 Å) of a pixel edge splits its flux almost evenly: either side may win there.
    edges = pipeline.wave_edges
    to_lower, to_upper = observed - edges[expected_pixel], edges[expected_pixel + 1] - observed
    near = 3 * 0.2 * (1 + z)
    allowed = (peak == expected_pixel) | ((to_lower < near) & (peak == expected_pixel - 1)) | ((to_upper < near) & (peak == expected_pixel + 1))
    assert allowed.all(), (peak[~allowed], expected_pixel[~allowed])
    assert (peak == expected_pixel).float().mean() > 0.8


def test_white_noise_reaches_the_requested_snr(generator):
    wave = log_uniform_centres(3500.0, 10600.0, 1 / 2000)
    library = zfast.SEDLibrary(wave, torch.full((3, wave.numel()), 2.0, dtype=torch.float64))
    for snr in (3.0, 10.0):
        instrument = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white", snr=(snr, snr)))
        pipeline = zfast.AugmentedSpectra(library, instrument, split=torch.arange(3), batch_size=2000, seed=5)
        flux, ivar, z, _ = next(pipeline)
        # Normalised by the median |flux| of the noisy spectrum: the continuum sits near 1, σ near 1/SNR.
        measured = flux.std(dim=1).mean().item()
        assert math.isclose(measured, 1 / snr, rel_tol=0.05), (snr, measured)
        assert math.isclose(ivar.mean().item() ** -0.5, 1 / snr, rel_tol=0.05)


def test_snr_is_drawn_log_uniform_in_the_range():
    flux = torch.ones(20000, 8, dtype=torch.float64)
    noise = zfast.NoiseModel("white", snr=(3.0, 30.0))
    _, ivar = noise.apply(flux, torch.Generator().manual_seed(0))
    log_snr = 0.5 * torch.log(ivar[:, 0])
    assert log_snr.min() >= math.log(3) - 1e-9 and log_snr.max() <= math.log(30) + 1e-9
    assert math.isclose(log_snr.mean().item(), 0.5 * (math.log(3) + math.log(30)), rel_tol=0.01)


def test_normalise_is_finite_for_zero_negative_and_sparse_spectra():
    flux = torch.tensor([[0.0, 0.0, 0.0], [-2.0, -4.0, -6.0], [0.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    ivar = torch.ones_like(flux)
    normed, normed_ivar, scale = zfast.data.normalise(flux, ivar)
    assert torch.isfinite(normed).all() and torch.isfinite(normed_ivar).all()
    torch.testing.assert_close(scale.flatten(), torch.tensor([1.0, 4.0, 5.0, 2.0]))
    torch.testing.assert_close(normed[3], torch.tensor([0.5, 1.0, 1.5]))
    torch.testing.assert_close(normed_ivar[3], torch.full((3,), 4.0))


def test_normalise_masks_pixels_and_takes_the_level_from_valid_ones_only():
    g = torch.Generator().manual_seed(3)
    flux = 2.0 + torch.rand(4, 640, generator=g, dtype=torch.float64)
    ivar = torch.full_like(flux, 4.0)
    flux[0, :300] = math.nan  # non-finite flux
    ivar[1, 100:400] = 0.0  # zero inverse variance (its flux is junk)
    flux[1, 100:400] = 1e30
    ivar[2, 5] = math.nan
    flux[3] = math.nan  # nothing valid at all
    normed, normed_ivar, scale = zfast.data.normalise(flux, ivar)
    valid = torch.isfinite(flux) & (ivar > 0)
    assert torch.equal(normed == 0, ~valid) and torch.equal(normed_ivar == 0, ~valid)
    for b in range(3):  # the level is the median of the valid sampled pixels (every 10th of 640)
        sample = flux[b, ::10][valid[b, ::10]]
        assert scale[b, 0] == sample.abs().median()
    assert scale[3, 0] == 1.0 and torch.isfinite(normed).all()


@pytest.mark.parametrize("mask_prob", [0.0, 0.3, 1.0])
def test_training_gaps_are_contiguous_bounded_and_zero(generator, mask_prob):
    library = random_library(generator, n_seds=20)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white"))
    plain = zfast.AugmentedSpectra(library, nisp, batch_size=400, seed=4)
    gapped = zfast.AugmentedSpectra(library, nisp, batch_size=400, seed=4, mask_prob=mask_prob, max_gap=20)
    flux, ivar, z, sed = next(gapped)
    flux0, ivar0, z0, sed0 = next(plain)
    assert torch.equal(z, z0) and torch.equal(sed, sed0)  # gaps draw after everything else
    masked = ivar == 0
    assert torch.equal(flux == 0, masked)
    lengths = masked.sum(dim=1)
    assert lengths.max() <= 20
    has_gap = lengths > 0
    if mask_prob == 0:
        assert torch.equal(flux, flux0) and not has_gap.any()
    else:
        assert abs(has_gap.double().mean().item() - mask_prob) < 0.1  # a few gaps run entirely off the ends
        for row in torch.nonzero(has_gap).flatten():  # one contiguous run per spectrum
            where = torch.nonzero(masked[row]).flatten()
            assert where[-1] - where[0] + 1 == where.numel()
        touching_an_end = (masked[:, 0] | masked[:, -1])[has_gap].double().mean()
        assert 0 < touching_an_end < 0.2
    with pytest.raises(ValueError, match="mask_prob"):
        zfast.AugmentedSpectra(library, nisp, mask_prob=1.5)


@pytest.mark.parametrize("n_seds", [3, 10, 1001])
def test_splits_are_disjoint_complete_and_seeded(n_seds):
    split = zfast.data.split_by_sed(n_seds, seed=3)
    union = torch.cat(list(split.values()))
    assert union.numel() == n_seds and torch.equal(union.sort().values, torch.arange(n_seds))
    for a in ("train", "val", "test"):
        assert split[a].numel() >= 1
    again = zfast.data.split_by_sed(n_seds, seed=3)
    assert all(torch.equal(split[k], again[k]) for k in split)
    if n_seds > 10:
        assert not torch.equal(zfast.data.split_by_sed(n_seds, seed=4)["test"], split["test"])


def test_pipeline_draws_only_from_its_split_and_is_deterministic(generator):
    library = random_library(generator, n_seds=50)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white"))
    train = zfast.AugmentedSpectra(library, nisp, split="train", batch_size=128, seed=1)
    test_indices = zfast.data.split_by_sed(50)["test"]
    for _ in range(3):
        _, _, z, sed_index = next(train)
        assert not torch.isin(sed_index, test_indices).any()
        assert z.min() >= 1.0 and z.max() < 1.8
    first = zfast.AugmentedSpectra(library, nisp, split="train", batch_size=16, seed=9)
    second = zfast.AugmentedSpectra(library, nisp, split="train", batch_size=16, seed=9)
    for a, b in zip(next(first), next(second)):
        assert torch.equal(a, b)


def test_sed_weights_set_how_often_each_sed_is_drawn(generator):
    library = random_library(generator, n_seds=30)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white"))
    train_seds = zfast.data.split_by_sed(30)["train"]
    weights = torch.zeros(30, dtype=torch.float64)
    weights[train_seds[:2]] = torch.tensor([1.0, 3.0], dtype=torch.float64)  # two SEDs, 1 : 3
    weights[zfast.data.split_by_sed(30)["test"]] = 100.0  # not in the split: never drawn
    data = zfast.AugmentedSpectra(library, nisp, split="train", batch_size=4000, seed=2, sed_weights=weights)
    _, _, _, sed_index = next(data)
    assert set(sed_index.tolist()) == set(train_seds[:2].tolist())
    share = (sed_index == train_seds[1]).double().mean().item()
    assert abs(share - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5
    for bad, match in [(torch.ones(29), "one per library SED"), (-torch.ones(30), ">= 0"),
                       (torch.zeros(30), "0 for every SED")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            zfast.AugmentedSpectra(library, nisp, split="train", sed_weights=bad)


def test_generator_state_restores_the_stream_and_fixed_sets_are_fixed(generator):
    library = random_library(generator, n_seds=20)
    pipeline = zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white")),
                                      batch_size=8, seed=2)  # fmt: skip
    next(pipeline)
    state = pipeline.state_dict()
    expected = next(pipeline)
    val_a = pipeline.fixed_set(32, seed=7)
    pipeline.load_state_dict(state)
    resumed = next(pipeline)
    for a, b in zip(expected, resumed):
        assert torch.equal(a, b)
    val_b = pipeline.fixed_set(32, seed=7)
    for a, b in zip(val_a, val_b):
        assert torch.equal(a, b)


def test_pipeline_refuses_a_library_that_cannot_serve_the_z_range(generator):
    library = random_library(generator, n_seds=5, lo=5000.0, hi=9000.0)
    with pytest.raises(ValueError, match="too short for 1 <= z <= 1.8"):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "holdout"}, "split must be one of"),
        ({"split": torch.tensor([0, 99])}, r"within \[0, 10\)"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"z_range": (1.8, 1.0)}, "z_range must be"),
    ],
)
def test_bad_pipeline_arguments(generator, kwargs, match):
    library = random_library(generator, n_seds=10)
    with pytest.raises(ValueError, match=match):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), **kwargs)


def test_bad_noise_and_instrument_arguments():
    with pytest.raises(ValueError, match="noise kind must be"):
        zfast.NoiseModel("pink")
    with pytest.raises(ValueError, match="snr must be"):
        zfast.NoiseModel("white", snr=(10.0, 3.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        zfast.Instrument("bad", torch.tensor([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="uniform width"):
        zfast.Instrument("bad", torch.tensor([1.0, 2.0, 4.0]), lsf_fwhm=1.0)
    with pytest.raises(ValueError, match=r"flux must be \[B, 512\]"):
        zfast.Instrument.preset("euclid-nisp-red").observe(torch.ones(2, 10))


def test_euclid_noise_level_follows_the_line_flux_limit():
    nisp = zfast.Instrument.preset("euclid-nisp-red")
    n_pixels = 2 * (16000 / 450) / 13.4  # two resolution elements
    expected_sigma = 2e-16 / (3.5 * 13.4 * math.sqrt(n_pixels))
    assert math.isclose(nisp.euclid_sigma(), expected_sigma, rel_tol=1e-12)
    assert math.isclose(expected_sigma, 1.85e-18, rel_tol=0.01)
    # AB magnitude 21 at 1.549 µm (the band centre): f_ν = 10^(-69.6/2.5) erg/s/cm²/Hz.
    f_lambda = 10 ** (-69.6 / 2.5) * 2.99792458e18 / ((12060 + 18920.8) / 2) ** 2
    assert math.isclose(nisp.ab_flux_density(21.0), f_lambda, rel_tol=1e-12)


@pytest.mark.parametrize("magnitude", [19.0, 21.0])
def test_euclid_noise_matches_its_documented_sigma_in_every_pixel(magnitude):
    noise = zfast.NoiseModel("euclid", magnitude=(magnitude, magnitude))
    nisp = zfast.Instrument.preset("euclid-nisp-red", noise)
    flux = torch.full((4000, 512), 2.5, dtype=torch.float64)  # any units: the magnitude sets the brightness
    noisy, ivar = noise.apply(flux, torch.Generator().manual_seed(1), nisp)
    expected = 2.5 * nisp.euclid_sigma() / nisp.ab_flux_density(magnitude)  # σ in the spectrum's own units
    per_pixel = (noisy - flux).std(dim=0)
    assert per_pixel.mean().item() == pytest.approx(expected, rel=0.01)
    # Flat in λ: the blue and red halves of the band have the same σ.
    assert per_pixel[:256].mean().item() == pytest.approx(per_pixel[256:].mean().item(), rel=0.02)
    torch.testing.assert_close(ivar, torch.full_like(ivar, expected**-2))


def test_euclid_noise_magnitudes_are_drawn_uniformly_and_need_the_instrument():
    noise = zfast.NoiseModel("euclid", magnitude=(19.0, 22.5))
    nisp = zfast.Instrument.preset("euclid-nisp-red", noise)
    _, ivar = noise.apply(torch.ones(20000, 512, dtype=torch.float64), torch.Generator().manual_seed(2), nisp)
    sigma = ivar[:, 0] ** -0.5
    magnitude = -2.5 * torch.log10(nisp.euclid_sigma() / sigma * ((12060 + 18920.8) / 2) ** 2 / 2.99792458e18) - 48.6
    assert magnitude.min() >= 19.0 - 1e-9 and magnitude.max() <= 22.5 + 1e-9
    assert magnitude.mean().item() == pytest.approx(20.75, abs=0.03)
    with pytest.raises(ValueError, match="euclid noise needs the instrument"):
        noise.apply(torch.ones(2, 512), None)
    with pytest.raises(ValueError, match="magnitude must be"):
        zfast.NoiseModel("euclid", magnitude=(23.0, 19.0))


def test_user_z_prior_is_followed(generator):
    library = random_library(generator, n_seds=10)
    edges = torch.tensor([1.0, 1.2, 1.4, 1.8], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 3.0])
    pipeline = zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), split=torch.arange(10),
                                      batch_size=20000, seed=4, z_prior=(edges, weights))  # fmt: skip
    _, _, z, _ = next(pipeline)
    assert z.min() >= 1.0 and z.max() < 1.8
    assert not ((z >= 1.2) & (z < 1.4)).any()
    assert ((z >= 1.4).double().mean().item()) == pytest.approx(0.75, abs=0.01)
    inside = z[z >= 1.4]
    assert inside.mean().item() == pytest.approx(1.6, abs=0.005)  # uniform within the bin
    with pytest.raises(ValueError, match="must lie within z_range"):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), split=torch.arange(10),
                               z_prior=(torch.tensor([0.5, 1.5]), torch.tensor([1.0])))  # fmt: skip
    with pytest.raises(ValueError, match="weights must be finite"):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), split=torch.arange(10),
                               z_prior=(edges, torch.tensor([0.0, 0.0, 0.0])))  # fmt: skip


def test_splits_round_trip_through_a_file(tmp_path):
    from zfast.data import load_splits, save_splits

    split = zfast.data.split_by_sed(1000, seed=11)
    save_splits(tmp_path / "splits.json", split, n_seds=1000, seed=11, library="default")
    loaded = load_splits(tmp_path / "splits.json")
    assert loaded["seed"] == 11 and loaded["library"] == "default"
    for name in ("train", "val", "test"):
        assert torch.equal(loaded[name], split[name])
    overlapping = {"train": [0, 1], "val": [1], "test": [2]}
    save_splits(tmp_path / "bad.json", overlapping)
    with pytest.raises(ValueError, match="overlap"):
        load_splits(tmp_path / "bad.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "splits.json"]


@requires_cuda
def test_pipeline_runs_on_the_gpu(generator):
    library = random_library(generator, n_seds=20).to("cuda")
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("euclid"))
    first = zfast.AugmentedSpectra(library, nisp, batch_size=64, seed=3)
    flux, ivar, z, sed_index = next(first)
    assert all(t.device.type == "cuda" for t in (flux, ivar, z, sed_index))
    assert torch.isfinite(flux).all() and torch.isfinite(ivar).all()
    again = next(zfast.AugmentedSpectra(library, nisp, batch_size=64, seed=3))
    assert torch.equal(flux, again[0])


def test_clean_spectra_match_the_noisy_ones_up_to_the_noise(generator):
    library = random_library(generator, n_seds=5)
    seed = int(torch.randint(0, 10_000, (1,), generator=generator))
    instrument = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white", snr=(5.0, 20.0)))
    pipeline = zfast.AugmentedSpectra(library, instrument, split=torch.arange(5), batch_size=8, seed=seed, mask_prob=0.5)
    flux, ivar, z, sed, clean = pipeline.fixed_set(400, seed=seed, clean=True)
    again = pipeline.fixed_set(400, seed=seed)  # the clean output draws nothing: same spectra
    assert all(torch.equal(a, b) for a, b in zip((flux, ivar, z, sed), again))
    valid = ivar > 0
    pulls = ((flux - clean) * ivar.sqrt())[valid]
    assert abs(pulls.mean().item()) < 0.02 and math.isclose(pulls.std().item(), 1.0, rel_tol=0.02)
    noiseless = zfast.AugmentedSpectra(library, instrument.with_noise(zfast.NoiseModel("none")), split=torch.arange(5), seed=seed)
    flux, ivar, *_, clean = noiseless.draw(64, clean=True)
    torch.testing.assert_close(flux, clean)


def test_halpha_snr_is_the_euclid_line_flux_over_its_limit(generator):
    """A flat continuum plus an Hα line of known flux, at a fixed AB magnitude: the measured SNR must be
    3.5 x (physical line flux / 2e-16 erg s⁻¹ cm⁻²)."""
    line_flux, continuum, magnitude = 100.0, 1.0, float(20.5 + torch.rand(1, generator=generator))
    library = line_library(continuum=continuum)
    instrument = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("euclid", magnitude=(magnitude, magnitude)))
    pipeline = zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), seed=int(torch.randint(0, 999, (1,), generator=generator)))
    flux, ivar, z, _, clean = pipeline.draw(256, clean=True)
    snr = instrument.halpha_snr(clean, ivar, z)
    band = (instrument.wave_edges[-1] - instrument.wave_edges[0]).item()
    # Observed: continuum / (1+z), line flux unchanged; the spectrum is scaled so its band mean is f_λ(m).
    mean_flux = continuum / (1 + z) + line_flux / band
    physical = line_flux * instrument.ab_flux_density(magnitude) / mean_flux
    torch.testing.assert_close(snr, 3.5 * physical / 2e-16, rtol=1e-2, atol=0)
    assert torch.isinf(zfast.Instrument.preset("euclid-nisp-red").halpha_snr(clean, torch.full_like(ivar, math.inf), z)).all()
    with pytest.raises(ValueError, match="LSF"):
        zfast.Instrument.preset("paper").halpha_snr(clean, ivar, z)


def test_min_line_snr_keeps_only_spectra_above_the_line_flux_cut(generator):
    """Lines of one flux at AB magnitudes 20-23.5: some above the survey's limit, some below. With min_line_snr
    every spectrum drawn passes it (recomputed from its clean twin), batches stay full, and the stream is
    reproducible; without it, the same draws hold spectra below the cut."""
    library = line_library(continuum=1.0)
    instrument = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("euclid", magnitude=(20.0, 23.5)))
    seed = int(torch.randint(0, 10_000, (1,), generator=generator))
    everything = zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), seed=seed)
    flux, ivar, z, _, clean = everything.draw(300, clean=True)
    below = instrument.halpha_snr(clean, ivar, z) < 3.5
    assert 0.1 < below.double().mean() < 0.9, below.double().mean()
    selected = zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), batch_size=100, seed=seed, min_line_snr=3.5)
    flux, ivar, z, sed, clean = selected.draw(300, clean=True)
    assert flux.shape == (300, 512) and z.shape == sed.shape == (300,)
    assert (instrument.halpha_snr(clean, ivar, z) >= 3.5).all()
    assert len(next(selected)) == 4 and next(selected)[0].shape == (100, 512)
    again = zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), seed=seed, min_line_snr=3.5)
    assert torch.equal(again.draw(300)[0], flux)
    with pytest.raises(ValueError, match="min_line_snr must be finite and >= 0"):
        zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), min_line_snr=-1.0)
    with pytest.raises(ValueError, match="needs an instrument with an LSF"):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("paper"), split=torch.tensor([0]), min_line_snr=3.5)
    impossible = zfast.AugmentedSpectra(library, instrument, split=torch.tensor([0]), min_line_snr=1e12)
    with pytest.raises(RuntimeError, match="only 0 of 10 spectra passed"):
        impossible.draw(10)


# --- perturbations: what real spectra carry beyond a library SED through the instrument model -----------------
def test_no_perturbations_leave_the_random_stream_unchanged(generator):
    library = random_library(generator, n_seds=20)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white"))
    plain = zfast.AugmentedSpectra(library, nisp, batch_size=64, seed=5, mask_prob=0.3)
    none = zfast.AugmentedSpectra(library, nisp, batch_size=64, seed=5, mask_prob=0.3, perturbations=zfast.data.Perturbations())
    for a, b in zip(next(plain), next(none)):
        assert torch.equal(a, b)


def test_legendre_basis_matches_the_closed_forms():
    x = torch.linspace(-1, 1, 37, dtype=torch.float64)
    basis = zfast.data.augment.legendre_basis(37, 3, dtype=torch.float64)
    torch.testing.assert_close(basis, torch.stack([x, 1.5 * x**2 - 0.5, 2.5 * x**3 - 1.5 * x]))


def test_distortion_is_a_smooth_multiplicative_cubic_of_the_requested_rms(generator):
    library = random_library(generator, n_seds=20)
    quiet = zfast.Instrument.linear("no-lsf", 12060.0, 13.4, 301)  # no LSF, no noise: the ratio is exactly exp(cubic)
    rms = 0.3
    plain = zfast.AugmentedSpectra(library, quiet, batch_size=2000, seed=6)
    bent = zfast.AugmentedSpectra(library, quiet, batch_size=2000, seed=6, perturbations=zfast.data.Perturbations(distortion=rms))
    f0, _, z0, s0 = next(plain)
    f1, _, z1, s1 = next(bent)
    assert torch.equal(z0, z1) and torch.equal(s0, s1)
    log_ratio = (f1.double() / f0.double()).log()  # normalisation adds a constant per spectrum
    basis = torch.cat([torch.ones(1, 301, dtype=torch.float64), zfast.data.augment.legendre_basis(301, 3, dtype=torch.float64)])
    coefficients = torch.linalg.lstsq(basis.T, log_ratio.T).solution  # [4, B]
    residual = log_ratio - coefficients.T @ basis
    assert residual.abs().max() < 1e-4
    expected = torch.tensor([rms, rms / 2, rms / 3], dtype=torch.float64)  # a_k ~ N(0, (rms / k)²)
    torch.testing.assert_close(coefficients[1:].std(dim=1), expected, rtol=0.08, atol=0)
    assert coefficients[1:].mean(dim=1).abs().max() < 0.03


def test_noise_variation_follows_the_ivar_it_reports(generator):
    library = random_library(generator, n_seds=20)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white", snr=(10.0, 10.0)))
    varied = zfast.AugmentedSpectra(library, nisp, batch_size=1000, seed=7, perturbations=zfast.data.Perturbations(noise_variation=0.4))
    flux, ivar, z, sed, clean = varied.draw(1000, clean=True)
    pulls = ((flux - clean) * ivar.sqrt()).double()
    assert abs(pulls.std().item() - 1.0) < 0.01  # the noise is what ivar says, pixel by pixel
    log_sigma = -0.5 * ivar.double().log()
    profile = log_sigma - log_sigma.mean(dim=1, keepdim=True)
    basis = zfast.data.augment.legendre_basis(512, 2, dtype=torch.float64)
    coefficients = torch.linalg.lstsq(basis.T, profile.T).solution
    assert (profile - coefficients.T @ basis).abs().max() < 0.02  # smooth: orders 1-2 only (the mean of P_2 aside)
    torch.testing.assert_close(coefficients.std(dim=1), torch.tensor([0.4, 0.2], dtype=torch.float64), rtol=0.1, atol=0)
    with pytest.raises(ValueError, match="noise model"):
        zfast.AugmentedSpectra(library, zfast.Instrument.preset("euclid-nisp-red"), perturbations=zfast.data.Perturbations(noise_variation=0.1))


@pytest.mark.parametrize("prob", [0.5, 1.0])
def test_scattered_bad_pixels_are_scattered_at_uniform_rates(generator, prob):
    library = random_library(generator, n_seds=20)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white"))
    spotted = zfast.AugmentedSpectra(library, nisp, batch_size=4000, seed=8,
                                     perturbations=zfast.data.Perturbations(bad_pixel_prob=prob, bad_pixel_max=0.2))
    flux, ivar, _, _ = next(spotted)
    bad = ivar == 0
    assert torch.equal(flux == 0, bad)
    rate = bad.double().mean(dim=1)
    hit = rate > 0
    assert abs(hit.double().mean().item() - prob) < 0.03  # (a rate near 0 can leave no bad pixel: < 1 % of spectra)
    assert rate.max() < 0.25 and abs(rate[hit].mean().item() - 0.1) < 0.005  # U[0, 0.2): mean 0.1
    # scattered, not gaps: runs of bad pixels are as short as independent draws give (a run starts at a bad pixel
    # after a good one: M·r(1 - r) starts for M·r bad pixels per spectrum)
    starts = (bad[:, 1:] & ~bad[:, :-1]).sum().item() + bad[:, 0].sum().item()
    expected = (rate * (1 - rate)).sum().item() / rate.sum().item()
    assert abs(starts / bad.sum().item() - expected) < 0.02
    with pytest.raises(ValueError, match="bad_pixel"):
        zfast.data.Perturbations(bad_pixel_prob=1.5)
    with pytest.raises(ValueError, match="distortion"):
        zfast.data.Perturbations(distortion=-0.1)


def test_sed_mixtures_are_two_seds_of_the_split_at_the_drawn_redshift(generator):
    library = random_library(generator, n_seds=12)
    quiet = zfast.Instrument.linear("no-lsf", 12060.0, 13.4, 301)  # no LSF, no noise: the spectra are the mixtures
    split = torch.arange(2, 12)
    plain = zfast.AugmentedSpectra(library, quiet, split=split, batch_size=400, seed=9)
    mixing = zfast.AugmentedSpectra(library, quiet, split=split, batch_size=400, seed=9, perturbations=zfast.data.Perturbations(mix_prob=0.5))
    f0, _, z0, s0 = next(plain)
    f1, _, z1, s1 = next(mixing)
    assert torch.equal(z0, z1) and torch.equal(s0, s1)  # the first SED and z are drawn as without mixing
    same = (f0 == f1).all(dim=1)
    assert abs(same.double().mean().item() - 0.5) < 0.08  # about half the spectra mixed
    # Each mixed spectrum is a·(its SED) + b·(another SED of the split) at its z, a, b >= 0; none of SEDs 0-1 (not in the split).
    edges = quiet.wave_edges.double()
    rows = torch.nonzero(~same)[:, 0][:60]
    for row in rows.tolist():
        every = library.redshift_resample(torch.arange(12), z1[row].expand(12), edges).double()  # [12, M]
        first = every[s1[row]]
        best = []
        for j in range(12):
            basis = torch.stack([first, every[j]], dim=1)
            coef = torch.linalg.lstsq(basis, f1[row].double()[:, None]).solution[:, 0]
            residual = (basis @ coef - f1[row].double()).norm() / f1[row].double().norm()
            best.append((residual.item(), j, coef))
        residual, j, coef = min(best, key=lambda item: item[0])
        second_seen = coef[1] > 1e-4 * coef[0]  # (α near 1: the second SED's share is below what picks it out)
        assert residual < 1e-5 and (j in split.tolist() or not second_seen) and bool((coef > -1e-6).all()), (row, residual, j, coef)
    with pytest.raises(ValueError, match="mix_prob"):
        zfast.data.Perturbations(mix_prob=1.5)


def test_running_mean_is_the_windowed_mean_shortened_at_the_ends(generator):
    x = torch.rand(3, 57, generator=generator, dtype=torch.float64) + 0.5
    out = zfast.data.augment.running_mean(x.float(), 9)
    for j in range(57):
        lo, hi = max(0, j - 4), min(57, j + 5)
        torch.testing.assert_close(out[:, j].double(), x[:, lo:hi].float().double().mean(dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(zfast.data.augment.running_mean(torch.full((2, 30), 3.0), 41), torch.full((2, 30), 3.0))


def test_line_contrast_raises_features_to_a_lognormal_power_about_the_continuum(generator):
    """Through the pipeline (no LSF, no noise): ln(s'/C) = α ln(s/C) per spectrum, with C the running mean of the
    unperturbed spectrum, ln α ~ N(0, rms²); the draws (z, SED) unchanged."""
    library = random_library(generator, n_seds=20)
    quiet = zfast.Instrument.linear("no-lsf", 12060.0, 13.4, 301)
    rms = 0.4
    window = zfast.data.Perturbations.CONTRAST_WINDOW
    plain = zfast.AugmentedSpectra(library, quiet, batch_size=1500, seed=8)
    scaled = zfast.AugmentedSpectra(library, quiet, batch_size=1500, seed=8,
                                    perturbations=zfast.data.Perturbations(line_contrast=rms))  # fmt: skip
    f0, _, z0, s0 = next(plain)
    f1, _, z1, s1 = next(scaled)
    assert torch.equal(z0, z1) and torch.equal(s0, s1)
    raw = library.redshift_resample(s0, z0, quiet.wave_edges).double()
    continuum = raw.cumsum(dim=1)
    # The continuum in float64 from the definition (the mean over the window, shortened at the ends).
    m = raw.shape[1]
    idx = torch.arange(m)
    lo, hi = (idx - window // 2).clamp(min=0), (idx + window // 2 + 1).clamp(max=m)
    padded = torch.nn.functional.pad(continuum, (1, 0))
    c = (padded[:, hi] - padded[:, lo]) / (hi - lo).double()
    x, y = (raw / c).log(), (f1.double() / f0.double() * raw / c).log()  # f1/f0 = s'/s up to the normalisation
    # y = α x + const (the normalisation's constant per spectrum): fit both by least squares.
    xm, ym = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    alpha = (xm * ym).sum(dim=1) / xm.square().sum(dim=1)
    assert (ym - alpha[:, None] * xm).abs().max() < 2e-3
    assert abs(alpha.log().std().item() - rms) < 0.03 and abs(alpha.log().mean().item()) < 0.03
    with pytest.raises(ValueError, match="line_contrast"):
        zfast.data.Perturbations(line_contrast=-0.1)
