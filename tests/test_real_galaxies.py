"""benchmarks/studies/real_galaxies.py: real spectra to the rest frame and back through the instrument, on the
real MaNGA spaxels and MaStar SSP shipped in tests/data (BSD-3, from the sdss-mangadap 4.5.0 wheel)."""

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

import zfast

pytest.importorskip("astropy")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "studies"))
real_galaxies = pytest.importorskip("real_galaxies")

DATA = pathlib.Path(__file__).resolve().parent / "data"
HALPHA, NII = 6564.61, 6585.27  # vacuum, Å


@pytest.fixture(scope="module")
def real():
    return real_galaxies.load_real_spectra(DATA)


def test_the_real_files_load_into_the_rest_frame(real):
    assert real.names == ["manga/multicomp/0", "manga/multicomp/1", "manga/multicomp/2", "mastar-ssp/A03.000-Z+0.00"]
    np.testing.assert_allclose(real.z_catalogue[:3], [0.0312591, 0.134659, 0.0236603])
    wave = real.rest_wavelength
    window = (wave > 6540) & (wave < 6600)
    for s in range(3):  # these spaxels' strongest line near Hα is Hα or [NII] 6585 at its rest wavelength
        peak = wave[window][np.argmax(real.rest_flux[s][window])]
        assert min(abs(peak - HALPHA), abs(peak - NII)) < 4.0, (real.names[s], peak)
    # coverage: the file's first and last valid pixels (MASK 0, IVAR > 0) divided by 1 + z; validity 0 outside
    from astropy.io import fits

    with fits.open(DATA / "mangadap" / "MaNGA_multicomp_test_spectra.fits.gz") as hdus:
        obs, mask, ivar = hdus["WAVE"].data, hdus["MASK"].data, hdus["IVAR"].data
    for s in range(3):
        first, last = obs[(mask[s] == 0) & (ivar[s] > 0)][[0, -1]] / (1 + real.z_catalogue[s])
        good = wave[real.rest_valid[s] > 0.5]
        assert abs(good.min() - first) < 2 and abs(good.max() - last) < 3


def test_to_rest_grid_conserves_flux_and_never_invents_masked_pixels():
    rng = np.random.default_rng(0)
    wave = np.linspace(4000.0, 9000.0, 3001)
    flux = 1.0 + rng.random(wave.size)
    valid = np.ones(wave.size, bool)
    valid[1000:1100] = False
    grid, z = real_galaxies.rest_grid(), 0.05
    rest, cover = real_galaxies.to_rest_grid(wave, flux, valid, z, grid)
    # ∫ f_rest dλ_rest over whole rest pixels = ∫ f_obs dλ_obs over the same stretch times (1+z)
    edges = zfast.ops.pixel_edges(torch.as_tensor(grid)).numpy()
    obs_edges = zfast.ops.pixel_edges(torch.as_tensor(wave)).numpy()
    cumulative = np.concatenate([[0.0], np.cumsum(flux * np.diff(obs_edges))])
    block = np.flatnonzero((edges[:-1] * (1 + z) > obs_edges[10]) & (edges[1:] * (1 + z) < obs_edges[990]))
    lo, hi = edges[block[0]] * (1 + z), edges[block[-1] + 1] * (1 + z)
    observed = np.interp(hi, obs_edges, cumulative) - np.interp(lo, obs_edges, cumulative)
    assert (cover[block] > 1 - 1e-9).all()
    np.testing.assert_allclose((rest[block] * np.diff(edges)[block]).sum(), observed, rtol=1e-9)
    masked_rest = (grid * (1 + z) > wave[1005]) & (grid * (1 + z) < wave[1095])
    assert (cover[masked_rest] == 0).all() and np.isnan(rest[masked_rest]).all()
    outside = grid * (1 + z) < wave[0] - 5
    assert (cover[outside] == 0).all()


def test_noiseless_mocks_are_fitted_exactly_by_their_own_template(real):
    nisp = zfast.Instrument.preset("euclid-nisp-red")
    index, z = real_galaxies.draw(real, nisp, 3, seed=1)
    flux, ivar = real_galaxies.observe(real, nisp, index, z, seed=2)
    assert flux.shape == (12, 512) and bool(torch.isinf(ivar[ivar > 0]).all())
    z_fit = real_galaxies.true_template_z(real, nisp, index, flux, ivar)
    assert (z_fit - z).abs().max() < 1e-5
    cover = real.z_cover(nisp)
    assert bool(((z >= torch.as_tensor(cover[index, 0])) & (z <= torch.as_tensor(cover[index, 1]))).all())
    assert cover[1, 0] > 1.07  # the z = 0.135 spaxel reaches NISP's red end only from z = 1.076 on


def test_observed_pixels_over_masked_rest_pixels_are_masked(real):
    broken = real.subset([3])  # the SSP: valid everywhere; mask a block of its rest pixels
    valid = broken.rest_valid.copy()
    band = (broken.rest_wavelength > 6000) & (broken.rest_wavelength < 6100)
    valid[0, band] = 0.0
    flux = broken.rest_flux.copy()
    flux[0, band] = 1e6  # whatever lies there must never reach an unmasked pixel
    broken = real_galaxies._build(broken.names, broken.families, broken.z_catalogue, broken.rest_wavelength, flux, valid)
    nisp = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white", snr=(10.0, 10.0)))
    z = torch.tensor([1.3], dtype=torch.float64)
    f, iv = real_galaxies.observe(broken, nisp, torch.tensor([0]), z, seed=3)
    centres = nisp.wavelength / (1 + z)
    inside = (centres > 6010) & (centres < 6090)
    assert bool((iv[0, inside] == 0).all())
    assert f[0, iv[0] > 0].abs().max() < 1e3  # no pixel used carries the invented flux
    random = real_galaxies.observe(real.subset([3]), nisp, torch.tensor([0] * 200), torch.full((200,), 1.3, dtype=torch.float64),
                                   seed=4, mask_fraction=0.1)[1]  # fmt: skip
    assert abs((random == 0).double().mean().item() - 0.1) < 0.005
    assert math.isfinite(float(f[0, iv[0] > 0].sum()))
