"""The per-model SMALL_DELTA_CHI2 threshold: chosen as the smallest grid value that makes ZWARN = 0 pure enough
in every validation condition, stored with the P(z) calibration, and the one ``zfast.predict`` applies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zfast
from zfast import flags
from zfast.data.sets import load_library
from zfast.predict import deltachi2_min
from zfast.training import streams, thresholds


def _random_rows(rng, n_rows: int) -> list:
    rows = []
    for _ in range(n_rows):
        n = int(rng.integers(1, 400))
        z_true = rng.uniform(1.0, 1.8, n)
        wrong = rng.random(n) < rng.uniform(0.0, 0.4)
        step = np.where(wrong, rng.uniform(0.011, 0.3, n), rng.uniform(0.0, 0.0099, n)) * rng.choice([-1, 1], n)
        z = z_true + step * (1 + z_true)
        # Wrong answers tend to have small DELTACHI2, but not always; some NaN (no P(z)): never kept.
        deltachi2 = np.where(wrong, rng.exponential(4.0, n), rng.exponential(20.0, n))
        deltachi2[rng.random(n) < 0.05] = np.nan
        flagged = rng.random(n) < 0.1
        rows.append(tuple(torch.as_tensor(a) for a in (z_true, z, deltachi2, flagged)))
    return rows


def _brute_force(rows, target, grid):
    for t in grid:
        pure = True
        for z_true, z, d, flagged in rows:
            z_true, z, d, flagged = (a.numpy() for a in (z_true, z, d, flagged))
            kept = [i for i in range(len(z)) if d[i] >= t and not flagged[i]]  # NaN >= t is False
            right = sum(abs(z[i] - z_true[i]) / (1 + z_true[i]) <= 0.01 for i in kept)
            if kept and right / len(kept) < target:
                pure = False
                break
        if pure:
            return t
    return math.inf


def test_the_threshold_is_the_smallest_grid_value_that_reaches_the_purity(generator):
    rng = np.random.default_rng(generator.initial_seed())
    for _ in range(20):
        rows = _random_rows(rng, int(rng.integers(1, 5)))
        target = float(rng.choice([0.9, 0.95, 0.99, 0.995, 1.0]))
        assert thresholds.choose_deltachi2_min(rows, target) == _brute_force(rows, target, thresholds.GRID)


def test_edges_of_the_choice():
    z_true = torch.full((10,), 1.5, dtype=torch.float64)
    right, wrong = z_true.clone(), z_true + 0.1
    none = torch.zeros(10, dtype=torch.bool)
    big = torch.full((10,), 100.0, dtype=torch.float64)
    # All right: no threshold needed. All wrong and confident beyond the grid: none works.
    assert thresholds.choose_deltachi2_min([(z_true, right, big, none)]) == 0.0
    assert thresholds.choose_deltachi2_min([(z_true, wrong, big, none)]) == math.inf
    # ... unless every one of them is flagged by another bit (ZWARN = 0 is then empty, and pure).
    assert thresholds.choose_deltachi2_min([(z_true, wrong, big, ~none)]) == 0.0
    # One wrong spectrum with DELTACHI2 5.1 among right ones at 30: the threshold must pass it, to 5.25.
    d = torch.full((10,), 30.0, dtype=torch.float64)
    d[3] = 5.1
    z = right.clone()
    z[3] = wrong[3]
    assert thresholds.choose_deltachi2_min([(z_true, z, d, none)], target=0.995) == 5.25
    # The worst condition decides.
    assert thresholds.choose_deltachi2_min([(z_true, right, big, none), (z_true, z, d, none)], target=0.995) == 5.25


def test_predict_applies_the_models_own_threshold(trained, model, generator):
    _, c = trained
    instrument = streams.make_instrument(c)
    flux, ivar, _, _ = streams.augmented(c, load_library(c.library), instrument, "test").fixed_set(
        200, seed=int(generator.initial_seed()))  # fmt: skip
    bit = flags.BIT["SMALL_DELTA_CHI2"]
    calibration = model.stats.calibration
    assert "deltachi2_min" in calibration  # fitted at the end of the run
    saved = calibration["deltachi2_min"]
    try:
        result = zfast.predict(model, instrument.wavelength, flux, ivar)
        d = result["deltachi2"]
        assert torch.equal((result["zwarn"] & bit) != 0, d < float(saved))
        for threshold in (float(d.median()), float(d.quantile(0.2))):
            calibration["deltachi2_min"] = torch.tensor(threshold, dtype=torch.float64)
            assert deltachi2_min(model) == threshold
            got = zfast.predict(model, instrument.wavelength, flux, ivar)["zwarn"]
            assert torch.equal((got & bit) != 0, d < threshold)
            assert torch.equal(got & ~bit, result["zwarn"] & ~bit)  # the other bits do not move
        del calibration["deltachi2_min"]  # a checkpoint from before: the shipped value
        assert deltachi2_min(model) == flags.DELTACHI2_MIN
        got = zfast.predict(model, instrument.wavelength, flux, ivar)["zwarn"]
        assert torch.equal((got & bit) != 0, d < flags.DELTACHI2_MIN)
    finally:
        calibration["deltachi2_min"] = saved


def test_the_stored_threshold_is_what_predict_needs_on_the_validation_spectra(trained, model):
    """Recomputed through the public ``zfast.predict`` (raw arrays, its own normalisation and flags): ZWARN = 0
    reaches the target purity at the stored threshold in every condition, and not at the grid value below it."""
    _, c = trained
    library = load_library(c.library)
    stored = float(model.stats.calibration["deltachi2_min"])
    rows = []
    for flux, ivar, z in thresholds.threshold_sets(c, library, model.instrument).values():
        r = zfast.predict(model, model.instrument.wavelength, flux, ivar, batch_size=512)
        rows.append((z, r["z"], r["deltachi2"], r["flag_z_range"]))
    assert len(rows) == 4  # noiseless, SNR 10, SNR 3, Euclid-like

    def worst(t):
        purities = []
        for z_true, z, d, flagged in rows:
            kept = (d >= t) & ~flagged
            right = ((z - z_true).abs() / (1 + z_true) <= 0.01) & kept
            purities.append(float(right.sum()) / int(kept.sum()) if int(kept.sum()) else 1.0)
        return min(purities)

    grid = thresholds.GRID
    if math.isfinite(stored):
        assert worst(stored) >= thresholds.TARGET_PURITY
        k = grid.index(stored)
        if k > 0:
            assert worst(grid[k - 1]) < thresholds.TARGET_PURITY
    else:  # a small model can be wrong and confident: nothing on the grid is pure enough
        assert worst(grid[-1]) < thresholds.TARGET_PURITY


@pytest.mark.parametrize("kind", ["list", "file"])
def test_ensembles_have_a_threshold(kind, model):
    from zfast.checkpoint import EnsembleModel

    other = zfast.load_model(model.source, "cpu")
    a, b = model.stats.calibration["deltachi2_min"], other.stats.calibration["deltachi2_min"]
    try:
        model.stats.calibration["deltachi2_min"] = torch.tensor(3.0, dtype=torch.float64)
        other.stats.calibration["deltachi2_min"] = torch.tensor(7.5, dtype=torch.float64)
        if kind == "list":  # members' P(z) averaged without a calibration of their own: the stricter member's
            assert deltachi2_min(EnsembleModel([model, other])) == 7.5
        else:  # an ensemble file's own
            assert deltachi2_min(EnsembleModel([model, other], {"deltachi2_min": torch.tensor(4.25)})) == 4.25
    finally:
        model.stats.calibration["deltachi2_min"], other.stats.calibration["deltachi2_min"] = a, b
