"""The spectra a run draws: its instrument, the on-the-fly streams of each SED set, the outside-the-range stream,
and the fixed sets (validation, calibration) with their seeds from ``SEEDS``."""

from __future__ import annotations

from typing import Optional

import torch

from ..data import AugmentedSpectra, Instrument, NoiseModel, Perturbations, SEDLibrary
from ..data.sets import run_splits
from .config import SEEDS, TrainConfig

OUTSIDE_MARGIN = 1e-6  # keeps the outside draws strictly inside the library's coverage
WEAK_LINE_EW = 20.0  # Å: rest-frame EW(Hα) below which an SED counts as weak-line for ``weak_line_weight``


def make_instrument(c: TrainConfig) -> Instrument:
    return Instrument.preset(c.instrument, NoiseModel(c.noise, snr=(c.snr_min, c.snr_max)))


def splits(c: TrainConfig, library: SEDLibrary) -> dict:
    """{"train", "val", "test"[, "holdout"]} → SED indices of the run (``zfast.data.sets.run_splits``)."""
    return run_splits(library, split_seed=c.split_seed, holdout_sfh=c.holdout_sfh, train_seds=c.train_seds)


def perturbations(c: TrainConfig, split: str) -> Perturbations:
    """The realism perturbations of the training split (validation and test sets stay the plain simulation, so
    their metrics compare across runs); none for other splits."""
    if split != "train":
        return Perturbations()
    return Perturbations(c.bad_pixel_prob, c.bad_pixel_max, c.distortion, c.noise_variation if c.noise != "none" else 0.0,
                         c.sed_mix_prob, c.line_contrast)


def sed_weights(c: TrainConfig, library: SEDLibrary, split: str):
    """Draw weights of the SEDs (``weak_line_weight`` for the training split's weak-line SEDs), or None: uniform."""
    if split != "train" or c.weak_line_weight == 1.0:
        return None
    ew = library.params.get("ew_halpha")
    if ew is None:
        raise ValueError("weak_line_weight needs a library with EW(Hα) per SED (params ew_halpha, zfast-sed build)")
    ew = torch.as_tensor(ew, dtype=torch.float64)
    return torch.where(ew < WEAK_LINE_EW, c.weak_line_weight, 1.0)


def augmented(c: TrainConfig, library: SEDLibrary, instrument: Instrument, split: str, seed: int = 0,
              perturbations_: Optional[Perturbations] = None) -> AugmentedSpectra:  # fmt: skip
    """The on-the-fly spectra of one split of the library, as configured (validation and test sets stay uniform
    over their SEDs); ``perturbations_`` in place of the split's own (``perturbations``) where given."""
    return AugmentedSpectra(library, instrument, (c.z_min, c.z_max), splits(c, library)[split], c.batch_size, seed,
                            mask_prob=c.mask_prob, max_gap=c.max_gap, min_line_snr=c.min_line_snr,
                            sed_weights=sed_weights(c, library, split),
                            perturbations=perturbations(c, split) if perturbations_ is None else perturbations_)  # fmt: skip


def outside_range(c: TrainConfig, library: SEDLibrary, instrument: Instrument) -> tuple:
    """z_prior (edges, weights) of the outside draws: the redshifts the library can put on the instrument's
    pixels, minus [z_min, z_max); half below and half above the range (where both exist), uniform within each
    side (docs/results.md: why equal halves)."""
    lo, hi = library.z_range(instrument.wave_edges)
    lo, hi = max(0.0, lo) + OUTSIDE_MARGIN, hi - OUTSIDE_MARGIN
    below, above = max(0.0, c.z_min - lo), max(0.0, hi - c.z_max)
    if below + above <= 0:
        raise ValueError(f"outside_prob > 0 but the library serves no redshift outside [{c.z_min}, {c.z_max}) "
                         f"on this instrument (it serves {lo:.4g}-{hi:.4g}): set --outside-prob 0")  # fmt: skip
    edges, weights = [c.z_min, c.z_max], [0.0]
    if below > 0:
        edges, weights = [lo] + edges, [1.0] + weights
    if above > 0:
        edges, weights = edges + [hi], weights + [1.0]
    return torch.tensor(edges, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


def outside_stream(c: TrainConfig, library: SEDLibrary, instrument: Instrument, split: str, n: int, seed: int) -> AugmentedSpectra:
    """Spectra of ``split`` at redshifts outside the trained range (``outside_range``), ``n`` per batch."""
    edges, weights = outside_range(c, library, instrument)
    return AugmentedSpectra(library, instrument, (float(edges[0]), float(edges[-1])), splits(c, library)[split], n, seed,
                            z_prior=(edges, weights), mask_prob=c.mask_prob, max_gap=c.max_gap,
                            perturbations=perturbations(c, split))  # fmt: skip


def n_outside(c: TrainConfig) -> int:
    """Outside spectra added to each batch of ``batch_size`` in-range ones."""
    return max(1, round(c.outside_prob * c.batch_size)) if c.outside_prob > 0 else 0


def validation_set(c: TrainConfig, library: SEDLibrary, instrument: Instrument) -> tuple:
    """The fixed validation set (flux, ivar, z, sed): ``n_val`` spectra of the validation SEDs."""
    return augmented(c, library, instrument, "val").fixed_set(c.n_val, seed=SEEDS.validation + c.split_seed)


def calibration_size(c: TrainConfig) -> int:
    """Noisy spectra the P(z) temperatures are fitted to (``n_calibration``, or 8 x n_val within 1024-8192)."""
    return c.n_calibration if c.n_calibration > 0 else max(1024, min(8192, 8 * c.n_val))


def calibration_set(c: TrainConfig, library: SEDLibrary, instrument: Instrument) -> tuple:
    """(flux, ivar, z) the P(z) temperatures are fitted to: ``calibration_size(c)`` spectra of the validation SEDs
    with the training noise and a quarter as many noiseless ones (the top SNR bin)."""
    n_cal = calibration_size(c)
    flux, ivar, z, _ = augmented(c, library, instrument, "val").fixed_set(n_cal, seed=SEEDS.calibration + c.split_seed)
    quiet = Instrument(instrument.name, instrument.wave_edges, instrument.lsf_fwhm, NoiseModel("none"))
    clean = augmented(c, library, quiet, "val").fixed_set(n_cal // 4, seed=SEEDS.calibration_noiseless + c.split_seed)
    return torch.cat([flux, clean[0]]), torch.cat([ivar, clean[1]]), torch.cat([z, clean[2]])
