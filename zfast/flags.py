"""Every quality flag of a zfast redshift, its bit in ``ZWARN`` and its threshold, in one place.

A flagged row is never dropped: the flags say where the model cannot answer, and a catalogue keeps every input
spectrum in order. ``zfast.predict`` returns three boolean flags (``FLAGS``) and the catalogue's ``ZWARN`` word
(``ZWARN_BITS``, built by ``zwarn``): where a redrock ZWARN bit means the same thing zfast uses its number
(redrock's ``zwarning.ZWarningMask``), and zfast's own flags take bits 16-23, which redrock leaves to later tools.

| ZWARN bit | name               | raised when                                                                  |
| --------- | ------------------ | ---------------------------------------------------------------------------- |
| 1 (2)     | `LITTLE_COVERAGE`  | fewer than `min_valid` (default `MIN_VALID`) of the model's pixels are valid |
| 2 (4)     | `SMALL_DELTA_CHI2` | DELTACHI2 < the model's threshold (binned estimators: a second redshift is   |
|           |                    | nearly as likely; ``zfast.bins.pz_candidates``), fitted per model at the end |
|           |                    | of its run (``zfast.training.thresholds``); `DELTACHI2_MIN` for older files  |
| 5 (32)    | `Z_FITLIMIT`       | z within `Z_RANGE_MARGIN` of the trained range at either end                 |
| 9 (512)   | `NODATA`           | no valid pixel at all (every pixel masked, or the file's entry unusable)     |
| 16        | `OOD`              | the OOD score (``zfast.ood``) is above the checkpoint's threshold            |
| 17        | `OUTSIDE_RANGE`    | P(outside the trained range) > `OUTSIDE_THRESHOLD`                           |
| 18        | `FIT_DISAGREES`    | with templates: abs(z - z_template) > `DISAGREE_DZ`·(1+z)                     |

``flag_z_range`` is ``Z_FITLIMIT | OUTSIDE_RANGE``, ``flag_few_pixels`` is ``LITTLE_COVERAGE | NODATA``,
``flag_ood`` is ``OOD``. ``p_outside`` is the network's own "z outside the range" output, trained with spectra of
the same SEDs at the other redshifts the library reaches (zfast-train ``--outside-prob``; NaN for checkpoints
trained without it). Without it, galaxies far beyond the range are not flagged: their lines land where other
lines of in-range galaxies land ([OIII] at z = 2.1 where Hα is at z = 1.4). A model without OOD statistics (a run
stopped before its end) gives ood_score NaN and never raises ``OOD``. ZWARN = 0's purity is measured, per noise
level and test set, in docs/catalogue.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

Z_RANGE_MARGIN = 0.005  # share of the trained range at either end that raises flag_z_range
OUTSIDE_THRESHOLD = 0.5  # P(outside the trained range) above which flag_z_range is raised
MIN_VALID = 0.5  # default share of the model's pixels that must be valid
DELTACHI2_MIN = 5.5  # 2·ln(P_1/P_2) below which SMALL_DELTA_CHI2 is raised for checkpoints without their own (docs/catalogue.md)
DISAGREE_DZ = 0.01  # |z - z_template| / (1+z) above which FIT_DISAGREES is raised


@dataclass(frozen=True)
class Flag:
    name: str
    bits: int  # the ZWARN bits that make up this flag (a mask)
    meaning: str


@dataclass(frozen=True)
class Bit:
    name: str
    bit: int
    meaning: str


ZWARN_BITS = (
    Bit("LITTLE_COVERAGE", 1, "fewer than min_valid (default 50 %) of the model's pixels are valid"),
    Bit("SMALL_DELTA_CHI2", 2, "DELTACHI2 = 2 ln(P_1/P_2) below the model's threshold (a second redshift nearly as likely)"),
    Bit("Z_FITLIMIT", 5, f"z within {Z_RANGE_MARGIN:.1%} of the trained range at either end"),
    Bit("NODATA", 9, "no valid pixel (every pixel masked, or the file's entry unusable)"),
    Bit("OOD", 16, "the out-of-distribution score is above the checkpoint's threshold"),
    Bit("OUTSIDE_RANGE", 17, f"P(outside the trained range) > {OUTSIDE_THRESHOLD}"),
    Bit("FIT_DISAGREES", 18, f"network and template fit differ by more than {DISAGREE_DZ}(1+z)"),
)
BIT = {b.name: 1 << b.bit for b in ZWARN_BITS}

FLAGS = (
    Flag("flag_z_range", BIT["Z_FITLIMIT"] | BIT["OUTSIDE_RANGE"], f"P(outside the trained range) > {OUTSIDE_THRESHOLD}, or z within {Z_RANGE_MARGIN:.1%} of the range at either end"),
    Flag("flag_few_pixels", BIT["LITTLE_COVERAGE"] | BIT["NODATA"], "fewer than min_valid (default 50 %) of the model's pixels are valid, or none is"),
    Flag("flag_ood", BIT["OOD"], "the out-of-distribution score is above the checkpoint's threshold"),
)
FLAG_NAMES = tuple(flag.name for flag in FLAGS)


def z_range_flag(z: torch.Tensor, p_outside: Optional[torch.Tensor], z_lo: float, z_hi: float) -> torch.Tensor:
    """flag_z_range [B] bool: ``p_outside`` > OUTSIDE_THRESHOLD (NaN or None: no such output), or z within
    Z_RANGE_MARGIN of either end of [z_lo, z_hi)."""
    margin = Z_RANGE_MARGIN * (z_hi - z_lo)
    flag = (z < z_lo + margin) | (z > z_hi - margin)
    if p_outside is not None:
        flag = flag | (p_outside.to(flag.device) > OUTSIDE_THRESHOLD)
    return flag


def few_pixels_flag(valid_fraction: torch.Tensor, min_valid: float = MIN_VALID) -> torch.Tensor:
    """flag_few_pixels [B] bool: the share of valid model pixels is below ``min_valid``, or none is valid (also with
    ``min_valid`` 0: a spectrum without data has no SNR, and its z is the network's answer to nothing)."""
    return (valid_fraction < min_valid) | ~(valid_fraction > 0)


def ood_flag(score: torch.Tensor, threshold: Optional[float]) -> torch.Tensor:
    """flag_ood [B] bool: ``score`` above ``threshold`` (None: a model without OOD statistics, never raised)."""
    if threshold is None:
        return torch.zeros_like(score, dtype=torch.bool)
    return score > float(threshold)


def zwarn(result: dict, z_range: tuple, min_valid: float = MIN_VALID, deltachi2_min: float = DELTACHI2_MIN) -> torch.Tensor:
    """ZWARN [B] int64 (``ZWARN_BITS``) from a ``zfast.predict`` result: z, valid_fraction, p_outside, flag_ood,
    and where present deltachi2 (NaN: no P(z), never raised; below ``deltachi2_min``, the model's own threshold
    where it has one, raises SMALL_DELTA_CHI2) and z_template (templates on)."""
    z = result["z"]
    margin = Z_RANGE_MARGIN * (z_range[1] - z_range[0])
    fraction = result["valid_fraction"].to(z.device)
    raised = {
        "LITTLE_COVERAGE": (fraction < min_valid) & (fraction > 0),
        "NODATA": ~(fraction > 0),
        "Z_FITLIMIT": (z < z_range[0] + margin) | (z > z_range[1] - margin),
        "OOD": result["flag_ood"].to(z.device),
        "OUTSIDE_RANGE": result["p_outside"].to(z.device) > OUTSIDE_THRESHOLD,
    }
    if "deltachi2" in result:
        deltachi2 = result["deltachi2"].to(z.device)
        # An infinite threshold (no DELTACHI2 made the model's ZWARN = 0 pure) flags every P(z), single-peaked too.
        raised["SMALL_DELTA_CHI2"] = deltachi2 < deltachi2_min if math.isfinite(deltachi2_min) else ~deltachi2.isnan()
    if "z_template" in result:
        raised["FIT_DISAGREES"] = (z - result["z_template"].to(z.device)).abs() > DISAGREE_DZ * (1.0 + z)
    word = torch.zeros(z.shape, dtype=torch.int64, device=z.device)
    for name, flag in raised.items():
        word |= flag.to(torch.int64) * BIT[name]
    return word


def any_flag(result: dict) -> torch.Tensor:
    """[B] bool: any of the boolean flags of ``FLAGS`` raised (not ZWARN's SMALL_DELTA_CHI2 or FIT_DISAGREES)."""
    flagged = None
    for flag in FLAGS:
        flagged = result[flag.name] if flagged is None else flagged | result[flag.name]
    return flagged
