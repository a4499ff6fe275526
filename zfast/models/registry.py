"""The networks by name, the estimators and their head widths, and the one place the outside-the-range logit
is added (``build_model``) and split off (``split_outside``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .log_grid_resnet import LogGridResNet1D
from .paper_cnn import PaperCNN
from .resnet import ResNet1D, resnet1d_wide
from .shift_resnet import ShiftResNet1D


ESTIMATORS = ("regression", "classification", "distribution")


def head_size(estimator: str, n_bins: int) -> int:
    """Outputs of the final layer: 1 for regression, ``n_bins`` logits otherwise."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return 1 if estimator == "regression" else n_bins


MODELS = {"paper-cnn": PaperCNN, "resnet1d": ResNet1D, "resnet1d-wide": resnet1d_wide, "resnet1d-log": LogGridResNet1D,
          "resnet1d-shift": ShiftResNet1D, "resnet1d-shift-fine": functools.partial(ShiftResNet1D, fine_channels=16)}  # fmt: skip
NEEDS_GRID = ("resnet1d-log", "resnet1d-shift", "resnet1d-shift-fine")
NEEDS_Z = ("resnet1d-shift", "resnet1d-shift-fine")


def build_model(name: str, n_pixels: int, estimator: str, n_bins: int, outside: bool = False,
                wave_edges: torch.Tensor | None = None, z_range: tuple | None = None, n_log: int | None = None,
                activation: str = "silu") -> nn.Module:  # fmt: skip
    """``MODELS[name](n_pixels, head_size(estimator, n_bins) + outside)``: with ``outside``, one more output last,
    the logit of "this galaxy's z is outside the trained range" (zfast-train ``--outside-prob``). Models in
    ``NEEDS_GRID`` also take the instrument's pixel edges ``wave_edges``; resnet1d-shift (binned estimators
    only) the trained redshift range ``z_range`` = (z_min, z_max) of the ``n_bins`` uniform bins. ``n_log``: the
    log grid's pixels of those models (None: the instrument's finest sampling); the others ignore it (so
    ``zfast-train --preset quick --model resnet1d`` runs as it reads). ``activation``: the residual networks'
    ("silu" or "hardswish"; the paper's CNN has ReLU)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    n_outputs = head_size(estimator, n_bins) + int(bool(outside))
    if name == "paper-cnn":
        if activation != "silu":
            raise ValueError("activation: the paper's CNN has its own (ReLU); the option is for the residual networks")
        return MODELS[name](n_pixels, n_outputs)
    if name not in NEEDS_GRID:
        return MODELS[name](n_pixels, n_outputs, activation=activation)
    if wave_edges is None:
        raise ValueError(f"model {name!r} needs the instrument's wave_edges")
    if name not in NEEDS_Z:
        return MODELS[name](n_pixels, n_outputs, wave_edges, n_log=n_log, activation=activation)
    if estimator == "regression" or z_range is None:
        raise ValueError(f"model {name!r} scores redshift bins: it needs a binned estimator and z_range")
    z_min, z_max = z_range
    return MODELS[name](n_pixels, n_outputs, wave_edges, z_min + (z_max - z_min) * torch.arange(n_bins + 1.0) / n_bins, n_log=n_log,
                        activation=activation)  # fmt: skip


def split_outside(output: torch.Tensor, outside: bool) -> tuple:
    """(the estimator's outputs [B, K], the "outside the trained range" logit [B] or None) of a network built
    with ``build_model(..., outside)``: that logit is the last output."""
    return (output[:, :-1], output[:, -1]) if outside else (output, None)
