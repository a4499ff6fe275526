"""Ensemble files (zfast-train ``--ensemble``): finished runs combined, with the ensemble's own P(z) calibration."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .. import checkpoint as checkpoints
from ..calibration import fit_temperatures, spectrum_snr
from ..checkpoint import EnsembleCheckpoint, EnsembleModel, RunCheckpoint, model_from_checkpoint
from ..data.sets import load_library
from ..devices import pick_device
from ..predict import ensemble_outputs
from .config import config_from_dict
from .streams import calibration_set, calibration_size, make_instrument
from .thresholds import fit_deltachi2_min, report_deltachi2_min

SAME_SPLIT = ("library", "split_seed", "holdout_sfh", "train_seds")


def _warn_other_splits(checkpoints_: list, configs: list) -> None:
    first = configs[0]
    for path, c in zip(checkpoints_, configs):
        if any(getattr(c, k) != getattr(first, k) for k in SAME_SPLIT):
            print(f"zfast-train: warning: {path} was trained on another library or split than {checkpoints_[0]}: its "
                  "validation SEDs may have been training SEDs of the first", file=sys.stderr)  # fmt: skip


def build_ensemble(paths: list, path: Path, device: str = "auto") -> dict:
    """Write an ensemble file of the runs ``paths``: the members' weights and predict stats (no resume state) and
    the ensemble's own per-SNR temperatures, fitted (``fit_temperatures``) to log of the members' mean plain
    softmax on the first member's calibration set (validation SEDs, the same for members of one split): a mixture
    of calibrated members is too wide when they disagree less than each one's spread; and, with them, the
    ensemble's SMALL_DELTA_CHI2 threshold (``zfast.training.thresholds``). Returns the calibration."""
    if len(paths) < 2:
        raise ValueError(f"an ensemble needs at least two checkpoints, got {len(paths)}")
    dev = pick_device(device)
    records = [checkpoints.read(p) for p in paths]
    for p, record in zip(paths, records):
        if not isinstance(record, RunCheckpoint):
            raise ValueError(f"{p}: an ensemble file; --ensemble takes run checkpoints")
    ensemble = EnsembleModel([model_from_checkpoint(r, str(p), dev) for p, r in zip(paths, records)])  # checks bins etc.
    configs = [config_from_dict(r.config) for r in records]
    _warn_other_splits(paths, configs)
    c = configs[0]
    library = load_library(c.library).to(dev)
    flux, ivar, z = calibration_set(c, library, make_instrument(c))
    snr = spectrum_snr(ivar)
    plain = torch.cat([ensemble_outputs(ensemble, flux[i:i + 1024], snr[i:i + 1024])["plain"] for i in range(0, flux.shape[0], 1024)])
    calibration = fit_temperatures(torch.log(plain.clamp_min(1e-300)), z, ensemble.bin_edges, snr)
    calibration["calibration_n"] = torch.tensor(calibration_size(c))
    ensemble.calibration = calibration
    threshold = fit_deltachi2_min(ensemble, c, library)
    calibration["deltachi2_min"] = torch.tensor(threshold, dtype=torch.float64)
    report_deltachi2_min(threshold)
    members = [RunCheckpoint(r.config, r.model, r.step, r.best, None, r.stats) for r in records]
    checkpoints.save(path, EnsembleCheckpoint(members, [str(p) for p in paths], calibration))
    groups = calibration["temperatures"].reshape(-1, len(calibration["snr_edges"]) - 1)
    print(f"ensemble of {len(members)} -> {path}; temperatures per P(z) peak group and SNR bin "
          f"{[[round(float(t), 4) for t in row] for row in groups]}", file=sys.stderr)  # fmt: skip
    return calibration
