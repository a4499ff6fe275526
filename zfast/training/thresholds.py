"""The SMALL_DELTA_CHI2 threshold of a trained model (``DELTACHI2_MIN``), chosen on its validation spectra.

ZWARN = 0 promises >= 99 % purity (|Δz|/(1+z) <= 0.01). How small a DELTACHI2 = 2 ln(P_1/P_2) still deserves
trust depends on how sharp the model's calibrated P(z) is, so each binned model gets its own threshold, fitted
at the end of its run (and of ``--ensemble``) and stored in its P(z) calibration record (``deltachi2_min``):
the smallest value of ``GRID`` for which ZWARN = 0 is at least ``TARGET_PURITY`` pure in every noise condition
of ``CONDITIONS``, on spectra of the run's validation SEDs. The target is 0.5 % above the promise, for the
sampling of ~2,000 spectra per condition (±0.2 % at 99 %). The other ZWARN bits taken into account are those
``predict_normalised`` raises (``flag_z_range``: Z_FITLIMIT | OUTSIDE_RANGE); OOD is left out, which can only make
the threshold higher. docs/catalogue.md measures the purity this buys on test sets and real galaxies.
"""

from __future__ import annotations

import math
import sys

import torch

from ..calibration import spectrum_snr
from ..data import Perturbations
from ..data.instrument import Instrument, NoiseModel
from ..predict import predict_normalised
from .config import SEEDS, TrainConfig
from .streams import augmented

CONDITIONS = {"noiseless": NoiseModel("none"), "snr10": NoiseModel("white", snr=(10.0, 10.0)),
              "snr3": NoiseModel("white", snr=(3.0, 3.0)), "euclid": NoiseModel("euclid")}  # fmt: skip
GRID = tuple(0.25 * k for k in range(241))  # 0 to 60
TARGET_PURITY = 0.995
OUTLIER = 0.01  # |Δz|/(1+z) above which a redshift is wrong (the catalogue's η)


def threshold_size(c: TrainConfig) -> int:
    """Validation spectra per condition: 2 x n_val within 256-2048."""
    return max(256, min(2048, 2 * c.n_val))


MASKED = Perturbations(bad_pixel_prob=1.0, bad_pixel_max=0.2)  # scattered bad pixels at 0-20 %: real SIR spectra's ~10-20 %


def masked_validation(c: TrainConfig, library, instrument: Instrument, n: int, seed: int) -> tuple:
    """(flux, ivar, z): ``n`` spectra of the run's validation SEDs on ``instrument`` with ``MASKED``'s scattered bad
    pixels (ivar 0), as real spectra come."""
    flux, ivar, z, _ = augmented(c, library, instrument, "val", perturbations_=MASKED).fixed_set(n, seed=seed)
    return flux, ivar, z


def threshold_sets(c: TrainConfig, library, instrument: Instrument) -> dict:
    """condition -> (flux, ivar, z) of the run's validation SEDs on ``instrument``'s pixels, one fixed draw per
    condition (Euclid-like noise only for an instrument with an LSF, which that noise model needs)."""
    n = threshold_size(c)
    sets = {}
    for k, (condition, noise) in enumerate(CONDITIONS.items()):
        if noise.kind == "euclid" and instrument.lsf_fwhm is None:
            continue
        observed = Instrument(instrument.name, instrument.wave_edges, instrument.lsf_fwhm, noise)
        flux, ivar, z, _ = augmented(c, library, observed, "val").fixed_set(n, seed=SEEDS.deltachi2 + k + c.split_seed)
        sets[condition] = (flux, ivar, z)
    return sets


def choose_deltachi2_min(rows: list, target: float = TARGET_PURITY, grid=GRID) -> float:
    """The smallest threshold t of ``grid`` for which, in every (z_true, z, deltachi2, flagged) of ``rows`` ([N]
    tensors; ``flagged``: other ZWARN bits raised), the spectra with deltachi2 >= t and not flagged are at least
    ``target`` right; an empty ZWARN = 0 set counts as pure. +inf when no grid value reaches it."""
    thresholds = torch.as_tensor(grid, dtype=torch.float64)
    worst = torch.ones_like(thresholds)
    for z_true, z, deltachi2, flagged in rows:
        z_true, z = z_true.double().cpu(), z.double().cpu()
        wrong = (z - z_true).abs() / (1.0 + z_true) > OUTLIER
        open_ = ~flagged.cpu()
        kept = (deltachi2.double().cpu()[None, :] >= thresholds[:, None]) & open_[None, :]  # [T, N]; NaN: never kept
        n_kept = kept.sum(dim=1)
        n_right = (kept & ~wrong[None, :]).sum(dim=1)
        purity = torch.where(n_kept > 0, n_right.double() / n_kept.clamp_min(1), 1.0)
        worst = torch.minimum(worst, purity)
    reached = torch.nonzero(worst >= target)
    return float(thresholds[reached[0, 0]]) if reached.numel() else math.inf


def fit_deltachi2_min(model, c: TrainConfig, library, chunk: int = 1024) -> float:
    """``choose_deltachi2_min`` for ``model`` (a binned ``RedshiftModel`` or ``EnsembleModel`` with its P(z)
    calibration in place) on ``threshold_sets`` of run ``c``, each spectrum read as ``zfast.predict`` reads it."""
    rows = []
    for flux, ivar, z in threshold_sets(c, library, model.instrument).values():
        snr = spectrum_snr(ivar)
        parts = [predict_normalised(model, flux[i:i + chunk], snr=snr[i:i + chunk]) for i in range(0, flux.shape[0], chunk)]
        answer = {k: torch.cat([p[k] for p in parts]) for k in ("z", "deltachi2", "flag_z_range")}
        rows.append((z, answer["z"], answer["deltachi2"], answer["flag_z_range"]))
    return choose_deltachi2_min(rows)


def report_deltachi2_min(threshold: float) -> None:
    """One line on stderr: the threshold fitted, or why ZWARN = 0 will be empty."""
    if math.isfinite(threshold):
        print(f"DELTACHI2_MIN {threshold:g} (ZWARN = 0 >= {TARGET_PURITY:.1%} pure on validation spectra)", file=sys.stderr)
    else:
        print(f"zfast-train: warning: no DELTACHI2 threshold up to {GRID[-1]:g} makes ZWARN = 0 {TARGET_PURITY:.1%} pure on "
              "validation spectra: every spectrum of this model will carry SMALL_DELTA_CHI2", file=sys.stderr)  # fmt: skip
