"""The information-limit χ² fit (zfast.template_fit): exact on noiseless spectra, honest about noise and masks."""

from __future__ import annotations

import torch

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
