"""Every quality flag of a zfast redshift, its bit in ``ZWARN`` and its threshold, in one table.

A flagged row is never dropped: the flags say where the model cannot answer, and a catalogue keeps every input
spectrum in order. ``FLAGS`` is the table; ``zwarn`` packs the booleans into one integer per spectrum.

| flag              | bit | raised when                                                                      |
| ----------------- | --- | -------------------------------------------------------------------------------- |
| `flag_z_range`    | 0   | P(outside the trained range) > `OUTSIDE_THRESHOLD`, or z within `Z_RANGE_MARGIN` |
|                   |     | of the range at either end (a galaxy just beyond the range lands on its end)     |
| `flag_few_pixels` | 1   | fewer than `MIN_VALID` of the model's pixels are valid, or none is                |
| `flag_ood`        | 2   | the OOD score (``zfast.ood``) is above the checkpoint's threshold                 |

``p_outside`` is the network's own "z outside the range" output, trained with spectra of the same SEDs at the
other redshifts the library reaches (zfast-train ``--outside-prob``; NaN for checkpoints trained without it).
Without it, galaxies far beyond the range are not flagged: their lines land where other lines of in-range
galaxies land ([OIII] at z = 2.1 where Hα is at z = 1.4). A model without OOD statistics (a run stopped before
its end) gives ood_score NaN and never raises ``flag_ood``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

Z_RANGE_MARGIN = 0.005  # share of the trained range at either end that raises flag_z_range
OUTSIDE_THRESHOLD = 0.5  # P(outside the trained range) above which flag_z_range is raised
MIN_VALID = 0.5  # default share of the model's pixels that must be valid


@dataclass(frozen=True)
class Flag:
    name: str
    bit: int
    meaning: str


FLAGS = (
    Flag("flag_z_range", 0, f"P(outside the trained range) > {OUTSIDE_THRESHOLD}, or z within {Z_RANGE_MARGIN:.1%} of the range at either end"),
    Flag("flag_few_pixels", 1, "fewer than min_valid (default 50 %) of the model's pixels are valid, or none is"),
    Flag("flag_ood", 2, "the out-of-distribution score is above the checkpoint's threshold"),
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


def zwarn(result: dict) -> torch.Tensor:
    """ZWARN [B] int64: bit ``flag.bit`` set where ``result[flag.name]`` is true, for every flag of ``FLAGS``."""
    word = None
    for flag in FLAGS:
        bits = result[flag.name].to(torch.int64) << flag.bit
        word = bits if word is None else word | bits
    return word


def any_flag(result: dict) -> torch.Tensor:
    """[B] bool: any flag of ``FLAGS`` raised."""
    return zwarn(result) != 0
