"""Redshifts for real spectra from a trained checkpoint: ``zfast.predict`` and the ``zfast-predict`` command.

    zfast-predict --checkpoint runs/quick/best.pt --input spectra.fits --output z.csv [--pz]

``--checkpoint`` also takes several checkpoints, or an ensemble file (``zfast-train --ensemble``): their P(z)
averaged, see ``EnsembleModel``.

What happens to each spectrum, in the order training saw it (``zfast.data``):
1. wavelengths in Å, observed frame, vacuum (``air=True`` / ``--air`` converts air wavelengths first); flux
   f_λ in any units (``flux_unit="fnu"`` converts f_ν to f_λ ∝ f_ν/λ²): the network reads normalised spectra,
   so the flux scale does not matter but its shape does.
2. Masked input pixels — ivar = 0, NaN ivar, or non-finite flux — are left out, then the spectrum is put
   onto the model's instrument pixels with the flux-conserving resampling of ``zfast.rebin`` (spectres'
   convention on the input, the instrument's exact pixel edges on the output): each model pixel gets the
   mean of the valid input flux over it, and is itself masked when valid input covers less than half of it
   (or none, outside the input's range). The variance is propagated as var_j = Σ_k w_jk·Δλ_k·var_k /
   (W_j·c_j)² (w the overlaps, W the pixel width, c the valid fraction): exact when input pixels lie inside
   model pixels, conservative (larger) when upsampling, whose output pixels are correlated.
3. ``normalise``, as in training: flux ÷ the continuum level of the valid pixels, masked pixels set to 0.
   Models trained with ``mask_prob`` > 0 (the default) saw such gaps.
4. The network; for the binned estimators P(z) = softmax(logits / T) with T the checkpoint's temperature for the
   spectrum's SNR (``zfast.calibration``; 1 for checkpoints without one) and ``pz_summary``: z is the refined mode
   (of the plain softmax: a temperature never moves it), z_err the standard deviation of P(z), z_lo68/z_hi68 its
   equal-tailed 68 % interval. For regression z is
   the network's output and z_err = σ_NMAD·(1+z) of the validation set (stored in the checkpoint by
   zfast-train), the interval z ± z_err.

Flags (booleans, never silently dropped rows):
* ``flag_z_range``: the galaxy is likely outside the trained range [z_min, z_max), where the model cannot
  answer: ``p_outside`` > 0.5, or z within 0.5 % of the range at either end (a galaxy just beyond it is pushed
  to the nearest end). ``p_outside`` is the network's own output for "z outside the range", trained with
  spectra of the same SEDs at every other redshift the library reaches (zfast-train ``--outside-prob``, default
  0.1; NaN for checkpoints trained without it). Without it, galaxies far beyond the range are NOT flagged:
  their lines land where other lines of in-range galaxies land ([OIII] at z = 2.1 where Hα is at z = 1.4).
* ``flag_few_pixels``: fewer than ``min_valid`` (default 50 %) of the model's pixels are valid.
* ``flag_ood``: the out-of-distribution score is above the checkpoint's threshold. Mahalanobis scores at
  several depths of the network (Lee et al. 2018): for each layer the network names (``ood_taps``: the end of
  each convolutional stage or residual block), the per-channel mean and standard deviation of its activations
  over wavelength, and the penultimate features; each layer's squared Mahalanobis distance from augmented
  training spectra, divided by the feature dimension, over its median on validation spectra; the score is the
  largest of these ratios. zfast-train fits the means and the (shrunk) covariances on training spectra and sets
  the threshold at the 99.5th percentile of validation spectra (SEDs it never trained on). The penultimate
  features alone (what older checkpoints hold; still read) sit near the training mean for noise, power laws or
  square waves fed to a ResNet1D; the early layers' channel statistics do not (measured: README). Checkpoints
  without these statistics (a run stopped before its end) give NaN and no flag.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from .bins import PzSummary, pz_summary, redshift_bin_edges, refined_mode, target_to_z
from .calibration import calibrated_probs, calibrated_summary, spectrum_snr
from .data.instrument import Instrument, normalise
from .models import build_model, split_outside
from .ops.rebin import cumulative_at, pixel_edges
from .wavelengths import air_to_vacuum

COLUMNS = ("id", "z", "z_err", "z_lo68", "z_hi68", "valid_fraction", "snr", "ood_score", "p_outside",
           "flag_z_range", "flag_few_pixels", "flag_ood")  # fmt: skip
Z_RANGE_MARGIN = 0.005  # share of the trained range at either end that raises flag_z_range
OUTSIDE_THRESHOLD = 0.5  # P(outside the trained range) above which flag_z_range is raised
OOD_QUANTILE = 0.995  # validation spectra below the OOD threshold
OOD_SHRINKAGE = 1e-3  # covariance + 1e-3 · (mean variance) · I: a well-conditioned inverse


# --- the model -------------------------------------------------------------------------------------------
def _last_linear(network: nn.Module) -> nn.Linear:
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the network has no Linear layer to read penultimate features from")
    return linears[-1]


def features_and_outputs(network: nn.Module, flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features [B, D], outputs [B, K]): the input of the network's last Linear layer, and its
    output. Call under ``torch.no_grad()`` with the network in eval mode."""
    layers, output = ood_features(network, flux, taps=False)
    return layers[-1], output


def ood_taps(network: nn.Module) -> list:
    """The modules whose activations the OOD score summarises: ``network.ood_taps()`` (zfast's models), none
    for a network without that method (the penultimate features are always used)."""
    taps = getattr(network, "ood_taps", None)
    return list(taps()) if callable(taps) else []


def channel_statistics(activation: torch.Tensor) -> torch.Tensor:
    """[B, C, L] -> [B, 2C]: each channel's mean and (population) standard deviation over wavelength."""
    a = activation.float()
    return torch.cat([a.mean(dim=-1), a.std(dim=-1, correction=0)], dim=1)


def ood_features(network: nn.Module, flux: torch.Tensor, taps: bool = True) -> tuple[list, torch.Tensor]:
    """([channel statistics of each of ``ood_taps(network)`` in forward order..., penultimate features], outputs):
    what the OOD score reads, from one forward pass. Call under ``torch.no_grad()`` in eval mode."""
    captured = []
    modules = ood_taps(network) if taps else []
    handles = [m.register_forward_hook(lambda module, inputs, output: captured.append(channel_statistics(output)))
               for m in modules]  # fmt: skip
    handles.append(_last_linear(network).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].flatten(1))))  # fmt: skip
    try:
        output = network(flux)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(modules) + 1:
        raise RuntimeError(f"expected {len(modules) + 1} OOD feature blocks from one forward pass, got {len(captured)}")
    return captured, output


def _mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance / feature dimension, float64 [B]."""
    centred = features.double() - mean.to(features.device)
    return ((centred @ precision.to(features.device)) * centred).sum(dim=1) / mean.numel()


def _fit_gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double().cpu()
    mean = f.mean(dim=0)
    centred = f - mean
    covariance = centred.T @ centred / max(1, f.shape[0] - 1)
    dim = covariance.shape[0]
    covariance += OOD_SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12) * torch.eye(dim, dtype=torch.float64)
    return mean, torch.cholesky_inverse(torch.linalg.cholesky(covariance))


def fit_ood(train_features, val_features) -> dict:
    """The OOD statistics zfast-train stores in its checkpoints, from ``ood_features`` of training spectra
    (lists of [N, D_l], or one tensor): per layer the mean and the inverse of the shrunk covariance, and the
    median of the validation spectra's scores (each layer's scale); the threshold is the ``OOD_QUANTILE`` of the
    validation spectra's combined scores."""
    train_layers = [train_features] if torch.is_tensor(train_features) else list(train_features)
    val_layers = [val_features] if torch.is_tensor(val_features) else list(val_features)
    if len(train_layers) != len(val_layers):
        raise ValueError(f"{len(train_layers)} training feature blocks but {len(val_layers)} validation ones")
    means, precisions, scales = [], [], []
    for train_layer, val_layer in zip(train_layers, val_layers):
        mean, precision = _fit_gaussian(train_layer)
        means.append(mean)
        precisions.append(precision)
        scales.append(_mahalanobis(val_layer.cpu(), mean, precision).median().clamp_min(1e-12))
    stats = {"ood_means": means, "ood_precisions": precisions, "ood_scales": torch.stack(scales)}
    stats["ood_threshold"] = float(torch.quantile(ood_scores(val_layers, stats), OOD_QUANTILE))
    return stats


def ood_scores(features, stats: dict) -> torch.Tensor:
    """The OOD score, float64 [B]: the largest over layers of (squared Mahalanobis distance / dimension) / the
    layer's validation median. ``features``: ``ood_features``' list (or one tensor: the penultimate features).
    Older checkpoints hold one layer, the penultimate features, unscaled (``ood_mean``)."""
    layers = [features] if torch.is_tensor(features) else list(features)
    if "ood_means" not in stats:
        return _mahalanobis(layers[-1], stats["ood_mean"], stats["ood_precision"])
    means, precisions, scales = stats["ood_means"], stats["ood_precisions"], stats["ood_scales"]
    if len(layers) != len(means):
        raise ValueError(f"the checkpoint's OOD statistics cover {len(means)} layers, the network gave {len(layers)}")
    per_layer = [_mahalanobis(f, m, p) / float(s) for f, m, p, s in zip(layers, means, precisions, scales)]
    return torch.stack(per_layer).amax(dim=0)


@dataclass
class RedshiftModel:
    """A trained network with everything needed to use it on real spectra (``load_model``)."""

    network: nn.Module
    estimator: str
    bin_edges: torch.Tensor  # [K+1] float64, the redshift bins (regression: its [z_min, z_max] scaling)
    instrument: Instrument  # the model's observed pixels
    stats: dict = field(default_factory=dict)  # ood_mean, ood_precision, ood_threshold, z_scatter
    config: dict = field(default_factory=dict)
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def outside(self) -> bool:
        """Whether the network has the "outside the trained range" output (trained with --outside-prob > 0)."""
        return _has_outside(self.config)

    @property
    def z_range(self) -> tuple[float, float]:
        return float(self.bin_edges[0]), float(self.bin_edges[-1])

    def to(self, device) -> "RedshiftModel":
        self.network.to(device)
        return self


def _has_outside(config: dict) -> bool:
    return float(config.get("outside_prob", 0.0)) > 0  # checkpoints from before outside_prob: none


def load_model(checkpoint: Union[str, os.PathLike], device: Union[str, torch.device, None] = None) -> Union[RedshiftModel, "EnsembleModel"]:
    """A ``RedshiftModel`` from a zfast-train checkpoint (``best.pt`` or ``last.pt``), in eval mode, on ``device``
    (default: CUDA if available); an ``EnsembleModel`` from an ensemble file (``zfast-train --ensemble``). Loaded
    with ``torch.load(weights_only=True)``: no code runs from the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or not a checkpoint
        raise ValueError(f"{path}: not a readable zfast checkpoint ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and "ensemble_version" in state:
        members = [_model_from_state(member, f"{path}[{i}]", device) for i, member in enumerate(state.get("members", []))]
        return EnsembleModel(members, dict(state.get("predict_stats", {})), str(path))
    return _model_from_state(state, str(path), device)


def _model_from_state(state, path: str, device) -> RedshiftModel:
    if not isinstance(state, dict) or not {"config", "model"} <= set(state):
        raise ValueError(f"{path}: not a zfast-train checkpoint (no config/model)")
    c = state["config"]
    instrument = Instrument.preset(c["instrument"])
    network = build_model(c["model"], instrument.n_pixels, c["estimator"], c["n_bins"], _has_outside(c),
                          wave_edges=instrument.wave_edges, z_range=(c["z_min"], c["z_max"]))
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit a {c['model']} {c['estimator']} network: {error}") from error
    network.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else torch.device(device)
    return RedshiftModel(network.to(device), c["estimator"], redshift_bin_edges(c["z_min"], c["z_max"], c["n_bins"]),
                         instrument, dict(state.get("predict_stats", {})), dict(c), path)  # fmt: skip


@dataclass
class EnsembleModel:
    """Several trained networks used as one (a deep ensemble: the same recipe trained with different seeds).

    Members must be binned estimators (classification or distribution) on the same instrument and redshift bins.
    For each spectrum the members' P(z) are averaged: z is the refined mode of the mean plain softmax. z_err, the
    intervals and ``pz`` come from that mean with the ensemble's own per-SNR temperature, P ∝ mean^(1/T) (an
    ensemble file, ``zfast-train --ensemble``, holds them: ``stats``), or else from the mean of the members'
    calibrated P(z), which is too wide when members agree better than each one's spread. Measured with three
    seeds of the table's best recipe (README): the noiseless errors of one network are mostly its own noise, and
    averaging cuts them. ``p_outside`` is the members' mean; ``ood_score`` their median, and ``flag_ood`` is
    raised when more than half of the members flag the spectrum (each against its own threshold).
    """

    members: list
    stats: dict = field(default_factory=dict)  # the ensemble's own P(z) temperatures (an ensemble file's), if any
    path: str = ""  # the ensemble file it was read from, if any

    def __post_init__(self):
        self.members = list(self.members)
        if not self.members or not all(isinstance(m, RedshiftModel) for m in self.members):
            raise ValueError("an ensemble needs at least one RedshiftModel")
        first = self.members[0]
        for m in self.members:
            if m.estimator == "regression":
                raise ValueError(f"{m.source}: a regression model has no P(z) to average; ensembles take binned estimators")
            if m.instrument.name != first.instrument.name or m.instrument.n_pixels != first.instrument.n_pixels:
                raise ValueError(f"{m.source}: instrument {m.instrument.name} differs from {first.source}'s {first.instrument.name}")
            if m.bin_edges.shape != first.bin_edges.shape or not torch.equal(m.bin_edges, first.bin_edges):
                raise ValueError(f"{m.source}: its redshift bins differ from {first.source}'s")
        devices = {m.device for m in self.members}
        if len(devices) > 1:
            raise ValueError(f"ensemble members on several devices: {sorted(map(str, devices))}")

    estimator = property(lambda self: "ensemble")
    bin_edges = property(lambda self: self.members[0].bin_edges)
    instrument = property(lambda self: self.members[0].instrument)
    device = property(lambda self: self.members[0].device)
    z_range = property(lambda self: self.members[0].z_range)
    source = property(lambda self: self.path or "+".join(Path(m.source).parent.name or m.source for m in self.members))

    def to(self, device) -> "EnsembleModel":
        for m in self.members:
            m.to(device)
        return self


def load_ensemble(checkpoints, device: Union[str, torch.device, None] = None) -> EnsembleModel:
    """An ``EnsembleModel`` of zfast-train checkpoints (``load_model`` for each)."""
    return EnsembleModel([load_model(path, device) for path in checkpoints])


# --- spectra onto the model's pixels --------------------------------------------------------------------
def _as_float64(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must be numeric, got {tensor.dtype}")
    return tensor.to(device="cpu", dtype=torch.float64)


def _check_grid(wavelength: torch.Tensor) -> None:
    if wavelength.shape[-1] < 2:
        raise ValueError(f"wavelength needs at least 2 pixels, got {wavelength.shape[-1]}")
    if not bool(torch.isfinite(wavelength).all()):
        raise ValueError("wavelength has non-finite values")
    steps = wavelength[..., 1:] - wavelength[..., :-1]
    if not bool((steps > 0).all()):
        raise ValueError("wavelength must be strictly increasing (sort the pixels, and give Å)")


def _resample(flux: torch.Tensor, var: torch.Tensor, valid: torch.Tensor, wavelength: torch.Tensor,
              out_edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(flux, ivar, valid fraction) [B, M] on ``out_edges`` from spectra [B, N] on pixel centres ``wavelength``
    [N] (module docstring, step 2). float64."""
    edges = pixel_edges(wavelength)
    widths_in = edges[1:] - edges[:-1]
    widths_out = out_edges[1:] - out_edges[:-1]

    def mean_over_bins(values):
        integral = cumulative_at(values, edges, out_edges)
        return (integral[..., 1:] - integral[..., :-1]) / widths_out

    v = valid.double()
    coverage = mean_over_bins(v)  # 0 outside the input's range
    good = coverage >= 0.5
    safe = torch.where(good, coverage, torch.ones_like(coverage))
    flux_out = mean_over_bins(torch.where(valid, flux, 0.0)) / safe
    var_out = mean_over_bins(torch.where(valid, var * widths_in, 0.0)) / (widths_out * safe.square())
    ivar_out = torch.where(good & (var_out > 0), 1.0 / var_out.clamp_min(1e-300), torch.where(good & (var_out == 0), math.inf, 0.0))
    flux_out = torch.where(good, flux_out, math.nan)
    return flux_out, ivar_out, good.double().mean(dim=1)


def prepare_spectra(model: RedshiftModel, wavelength, flux, ivar=None, *, air: bool = False, flux_unit: str = "flam",
                    return_ivar: bool = False):  # fmt: skip
    """(normalised flux [B, M] float32 on the model's device, valid fraction [B], continuum SNR [B]): real spectra
    made into what the network saw in training (module docstring, steps 1-3); with ``return_ivar``, also the
    normalised spectra's inverse variances [B, M] (float64, CPU; 0 on masked pixels).

    wavelength is [N] (one grid for all) or [B, N] (one per spectrum); flux and ivar are [B, N].
    """
    if flux_unit not in ("flam", "fnu"):
        raise ValueError(f'flux_unit must be "flam" or "fnu", got {flux_unit!r}')
    wavelength, flux = _as_float64(wavelength, "wavelength"), _as_float64(flux, "flux")
    if flux.dim() == 1:
        flux = flux[None]
    if flux.dim() != 2:
        raise ValueError(f"flux must be [n_spectra, n_pixels], got shape {tuple(flux.shape)}")
    if wavelength.dim() not in (1, 2) or wavelength.shape[-1] != flux.shape[1] or (wavelength.dim() == 2 and wavelength.shape[0] != flux.shape[0]):
        raise ValueError(f"wavelength must be [{flux.shape[1]}] or [{flux.shape[0]}, {flux.shape[1]}] to match flux "
                         f"{tuple(flux.shape)}, got {tuple(wavelength.shape)}")  # fmt: skip
    if ivar is None:
        ivar = torch.ones_like(flux)
    else:
        ivar = _as_float64(ivar, "ivar")
        if ivar.shape != flux.shape:
            raise ValueError(f"ivar must have flux's shape {tuple(flux.shape)}, got {tuple(ivar.shape)}")
        if bool((ivar < 0).any()):
            raise ValueError("ivar has negative values (inverse variances are >= 0; use 0 to mask a pixel)")
    _check_grid(wavelength)
    if wavelength.dim() == 2 and bool((wavelength == wavelength[:1]).all()):
        wavelength = wavelength[0]  # one grid after all (e.g. a FITS table's per-row column): resample as a batch
    if air:
        wavelength = air_to_vacuum(wavelength)
    if flux_unit == "fnu":
        flux = flux / wavelength.square()
    out_edges = model.instrument.wave_edges
    valid = torch.isfinite(flux) & (ivar > 0)
    var = torch.where(valid, 1.0 / torch.where(valid, ivar, 1.0), 0.0)
    if wavelength.dim() == 1:
        flux_m, ivar_m, fraction = _resample(flux, var, valid, wavelength, out_edges)
    else:
        rows = [_resample(flux[i:i + 1], var[i:i + 1], valid[i:i + 1], wavelength[i], out_edges) for i in range(flux.shape[0])]
        flux_m, ivar_m, fraction = (torch.cat(parts) for parts in zip(*rows))
    flux_n, ivar_n, _ = normalise(flux_m, ivar_m)
    snr = spectrum_snr(ivar_n)  # continuum SNR per model pixel: the normalised continuum is ~1
    prepared = flux_n.to(device=model.device, dtype=torch.float32), fraction, snr
    return prepared + (ivar_n,) if return_ivar else prepared


def check_coverage(model: RedshiftModel, wavelength, min_valid: float = 0.5, air: bool = False) -> float:
    """The share of the model's pixels inside the input grid's range; ValueError if below ``min_valid``."""
    wavelength = _as_float64(wavelength, "wavelength")
    _check_grid(wavelength)
    if air:
        wavelength = air_to_vacuum(wavelength)
    edges = model.instrument.wave_edges
    grid_edges = pixel_edges(wavelength if wavelength.dim() == 1 else wavelength[0])
    lo, hi = float(grid_edges[0]), float(grid_edges[-1])
    inside = ((edges[:-1] >= lo) & (edges[1:] <= hi)).double().mean().item()
    if inside < min_valid:
        raise ValueError(f"the spectra cover {lo:.1f}-{hi:.1f} Å, only {100 * inside:.0f} % of the model's pixels "
                         f"({edges[0]:.1f}-{edges[-1]:.1f} Å, {model.instrument.name}); need >= {100 * min_valid:.0f} %"
                         + (" (are the wavelengths in Å? air? rest frame?)" if inside == 0 else ""))  # fmt: skip
    return inside


# --- prediction ----------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_normalised(model: Union[RedshiftModel, EnsembleModel], flux: torch.Tensor, pz: bool = False,
                       snr: Optional[torch.Tensor] = None) -> dict:  # fmt: skip
    """z, z_err, z_lo68, z_hi68, ood_score, flag_z_range (and pz) for normalised spectra [B, M] on the model's
    pixels; ``snr`` [B] (``zfast.calibration.spectrum_snr``) picks the checkpoint's P(z) temperature."""
    if isinstance(model, EnsembleModel):
        return _predict_ensemble(model, flux, pz, snr)
    model.network.eval()
    has_ood = "ood_means" in model.stats or "ood_mean" in model.stats
    features, output = ood_features(model.network, flux.to(model.device, torch.float32),
                                    taps="ood_means" in model.stats)  # fmt: skip
    output, outside = split_outside(output, model.outside)
    edges = model.bin_edges.to(output.device)
    result = {}
    if model.estimator == "regression":
        z = target_to_z(output[:, 0].double(), edges)
        scatter = float(model.stats.get("z_scatter", math.nan))
        z_err = scatter * (1.0 + z)
        result.update(z=z, z_err=z_err, z_lo68=z - z_err, z_hi68=z + z_err)
    else:
        # Without the spectra's SNR, no temperature can be picked: the plain softmax.
        probs, s = calibrated_summary(output, snr, model.stats, edges)
        result.update(z=s.z_mode, z_err=s.sigma, z_lo68=s.lo68, z_hi68=s.hi68)
        if pz:
            result["pz"] = probs.float()
    if has_ood:
        result["ood_score"] = ood_scores(features, model.stats)
        result["flag_ood"] = result["ood_score"] > float(model.stats["ood_threshold"])
    else:
        result["ood_score"] = torch.full_like(result["z"], math.nan)
        result["flag_ood"] = torch.zeros_like(result["z"], dtype=torch.bool)
    result["p_outside"] = torch.sigmoid(outside.double()) if outside is not None else torch.full_like(result["z"], math.nan)
    result["flag_z_range"] = z_range_flag(result["z"], result["p_outside"], *model.z_range)
    return {k: v.cpu() for k, v in result.items()}


@torch.no_grad()
def ensemble_outputs(model: EnsembleModel, flux: torch.Tensor, snr: Optional[torch.Tensor]) -> dict:
    """The members' averages for normalised spectra [B, M]: ``plain`` (mean softmax) and ``calibrated`` (mean
    calibrated P(z)) [B, K] float64, ``p_outside``, ``ood_score`` [B] and ``flag_ood`` (see ``EnsembleModel``)."""
    plain, calibrated, outside, scores, flags = 0.0, 0.0, [], [], []
    for member in model.members:
        member.network.eval()
        has_ood = "ood_means" in member.stats or "ood_mean" in member.stats
        features, output = ood_features(member.network, flux.to(member.device, torch.float32),
                                        taps="ood_means" in member.stats)  # fmt: skip
        logits, out = split_outside(output, member.outside)
        plain = plain + torch.softmax(logits.double(), dim=1)
        if "temperatures" not in model.stats:
            calibrated = calibrated + calibrated_probs(logits, snr, member.stats, member.bin_edges)
        outside.append(torch.sigmoid(out.double()) if out is not None else torch.full_like(logits[:, 0], math.nan, dtype=torch.float64))
        if has_ood:
            scores.append(ood_scores(features, member.stats))
            flags.append(scores[-1] > float(member.stats["ood_threshold"]))
    n = len(model.members)
    plain = plain / n
    if "temperatures" in model.stats:
        calibrated = calibrated_probs(torch.log(plain.clamp_min(1e-300)), snr, model.stats, model.bin_edges)
    else:
        calibrated = calibrated / n
    result = dict(plain=plain, calibrated=calibrated, p_outside=torch.stack(outside).nanmean(dim=0))
    if scores:
        result["ood_score"] = torch.stack(scores).quantile(0.5, dim=0)  # (of two: their mean)
        result["flag_ood"] = torch.stack(flags).sum(dim=0) * 2 > len(flags)
    else:
        result["ood_score"] = torch.full_like(result["p_outside"], math.nan)
        result["flag_ood"] = torch.zeros_like(result["p_outside"], dtype=torch.bool)
    return result


def ensemble_summary(model: EnsembleModel, flux: torch.Tensor, snr: Optional[torch.Tensor]) -> tuple[dict, PzSummary]:
    """(``ensemble_outputs``, the ``pz_summary`` of its calibrated P(z) with z_mode that of the mean plain softmax:
    as ``calibrated_summary``, a temperature never moves the point estimate)."""
    out = ensemble_outputs(model, flux, snr)
    edges = model.bin_edges.to(model.device)
    return out, pz_summary(out["calibrated"], edges)._replace(z_mode=refined_mode(out["plain"], edges))


@torch.no_grad()
def _predict_ensemble(model: EnsembleModel, flux: torch.Tensor, pz: bool, snr: Optional[torch.Tensor]) -> dict:
    """``predict_normalised`` for an ensemble: the members' P(z) averaged (see ``EnsembleModel``)."""
    out, s = ensemble_summary(model, flux, snr)
    z = s.z_mode
    result = dict(z=z, z_err=s.sigma, z_lo68=s.lo68, z_hi68=s.hi68, ood_score=out["ood_score"], flag_ood=out["flag_ood"],
                  p_outside=out["p_outside"])  # fmt: skip
    if pz:
        result["pz"] = out["calibrated"].float()
    result["flag_z_range"] = z_range_flag(z, result["p_outside"], *model.z_range)  # p_outside NaN: no member has it
    return {k: v.cpu() for k, v in result.items()}


def z_range_flag(z: torch.Tensor, p_outside: Optional[torch.Tensor], z_lo: float, z_hi: float) -> torch.Tensor:
    """flag_z_range: the network's P(outside the trained range) > OUTSIDE_THRESHOLD (models trained with
    ``--outside-prob``; NaN or None: no such output), or z within Z_RANGE_MARGIN of either end of the range."""
    margin = Z_RANGE_MARGIN * (z_hi - z_lo)
    flag = (z < z_lo + margin) | (z > z_hi - margin)
    if p_outside is not None:
        flag = flag | (p_outside.to(flag.device) > OUTSIDE_THRESHOLD)
    return flag


def predict(model: Union[RedshiftModel, EnsembleModel, str, os.PathLike, list], wavelength, flux, ivar=None, *, air: bool = False,
            flux_unit: str = "flam", pz: bool = False, batch_size: int = 1024, min_valid: float = 0.5,
            device=None, templates=None) -> dict:  # fmt: skip
    """Redshifts of real spectra.

    Args:
        model: a ``RedshiftModel`` (``load_model``) or the path of a zfast-train checkpoint; an ``EnsembleModel``
            (``load_ensemble``) or a list of checkpoint paths: their P(z) averaged (see ``EnsembleModel``).
        wavelength (array [N] or [B, N]): observed pixel centres in Å, vacuum (``air=True``: air), increasing.
        flux (array [B, N] or [N]): f_λ in any units (``flux_unit="fnu"``: f_ν); NaN marks a bad pixel.
        ivar (array [B, N], optional): inverse variances; 0 or NaN marks a bad pixel. Default: all pixels valid.
        pz (bool): also return P(z) [B, K] (binned estimators). batch_size (int): spectra per forward pass.
        min_valid (float): the share of the model's pixels that must be valid (else ``flag_few_pixels``); input
            grids covering less of the model's range raise ValueError.
        templates: also fit every spectrum with every SED of a library (``zfast.template_fit.library_fit_redshift``
            over the model's z range, on the same normalised pixels): an ``SEDLibrary``, a (library, SED indices)
            pair, or a name for ``load_templates`` ("default", "training", a library file). Adds z_template,
            z_template_err (the formal Δχ² = 1 error, times sqrt(template_rchi2) when that is above 1, or always
            without ``ivar``), template_sed
            and template_rchi2 (χ² per valid pixel of the best fit).

    Returns:
        dict of CPU tensors [B]: z, z_err, z_lo68, z_hi68 (float64), valid_fraction, snr, ood_score, p_outside
        (float64), flag_z_range, flag_few_pixels, flag_ood (bool), and pz [B, K] float32 when asked (see the module
        docstring for their meaning); with ``templates`` the four template columns (TEMPLATE_COLUMNS). Rows stay in input order;
        none are dropped.
    """
    if isinstance(model, (list, tuple)):
        model = load_ensemble(model, device)
    elif not isinstance(model, (RedshiftModel, EnsembleModel)):
        model = load_model(model, device)
    elif device is not None:
        model.to(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flux = _as_float64(flux, "flux")
    if flux.dim() == 1:
        flux = flux[None]
    if flux.dim() != 2 or flux.shape[0] == 0:
        raise ValueError(f"flux must be a non-empty [n_spectra, n_pixels] array, got shape {tuple(flux.shape)}")
    wavelength = _as_float64(wavelength, "wavelength")
    check_coverage(model, wavelength if wavelength.dim() == 1 else wavelength[0], min_valid, air)
    templates = load_templates(templates, model)
    parts = []
    for start in range(0, flux.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        parts.append(_predict_chunk(model, wavelength if wavelength.dim() == 1 else wavelength[rows], flux[rows],
                                    None if ivar is None else ivar[rows], air, flux_unit, pz, min_valid, templates))  # fmt: skip
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


TEMPLATE_COLUMNS = ("z_template", "z_template_err", "template_sed", "template_rchi2")


def load_templates(templates, model):
    """(SEDLibrary, SED indices or None) on the model's device, for ``predict``'s ``templates``; None for None.
    Names: "default" (the built-in library), "training" (the training SEDs of the checkpoint's own library file
    and split, as zfast-train drew them; an ensemble's first member's), or the path of a library file
    (``zfast-sed build``)."""
    library, seds = _templates(templates, model) or (None, None)
    if library is None:
        return None
    return library.to(model.device), None if seds is None else torch.as_tensor(seds).to(model.device)


def _templates(templates, model):
    """``load_templates`` before the move to the model's device."""
    from .data.sed_library import SEDLibrary

    if templates is None:
        return None
    if isinstance(templates, SEDLibrary):
        return templates, None
    if isinstance(templates, tuple) and len(templates) == 2 and isinstance(templates[0], SEDLibrary):
        return templates
    if not isinstance(templates, (str, os.PathLike)):
        raise TypeError(f"templates must be an SEDLibrary, (SEDLibrary, indices) or a name, got {type(templates).__name__}")
    if str(templates) == "training":
        from . import train

        first = model.members[0] if isinstance(model, EnsembleModel) else model
        c = train.config_from_state({"config": first.config})
        try:
            library = train.load_library(c.library)
        except (OSError, ValueError) as error:
            raise ValueError(f"templates='training': the checkpoint's library {c.library!r} cannot be read ({error})") from error
        return library, train.run_splits(c, library)["train"]
    if str(templates) == "default":
        return SEDLibrary.default(), None
    return SEDLibrary.load(templates), None


def _template_columns(model, normalised: torch.Tensor, ivar: torch.Tensor, templates, known_noise: bool = True) -> dict:
    from .template_fit import library_fit_redshift

    library, seds = templates
    # Without the user's ivar the χ² scale is unknown: no marginalising over SEDs, and the noise comes from the residuals.
    fit = library_fit_redshift(library, model.instrument, normalised.double(), ivar.to(normalised.device), seds, model.z_range,
                               marginalise=known_noise)  # fmt: skip
    rchi2 = fit["rchi2"]
    empty = fit["n_valid"] < 2  # nothing to fit: NaN rather than an arbitrary grid point
    nan = torch.full_like(rchi2, math.nan)
    # The formal error (Δχ² = 1), widened by sqrt(reduced χ²) where the best template fits worse than the noise.
    error = fit["z_err"] * (rchi2.clamp_min(1.0) if known_noise else rchi2).sqrt()
    return {"z_template": torch.where(empty, nan, fit["z"]), "z_template_err": torch.where(empty, nan, error),
            "template_sed": torch.where(empty, nan, fit["sed"].double()), "template_rchi2": torch.where(empty, nan, rchi2)}  # fmt: skip


def _predict_chunk(model, wavelength, flux, ivar, air, flux_unit, pz, min_valid, templates=None) -> dict:
    normalised, fraction, snr, ivar_n = prepare_spectra(model, wavelength, flux, ivar, air=air, flux_unit=flux_unit,
                                                         return_ivar=True)  # fmt: skip
    result = predict_normalised(model, normalised, pz, snr)
    result["valid_fraction"], result["snr"] = fraction, snr
    result["flag_few_pixels"] = fraction < min_valid
    if templates is not None:
        result.update(_template_columns(model, normalised, ivar_n, templates, known_noise=ivar is not None))
    return result


# --- files -----------------------------------------------------------------------------------------------
class SpectraFile:
    """Reads ``wavelength`` [M] (or [N, M]), ``flux`` [N, M] and optional ``ivar`` [N, M], ``id`` [N] from .npz,
    .h5/.hdf5 or .fits in row chunks, so files larger than memory stream (npz members are read sequentially,
    HDF5 datasets sliced, FITS memory-mapped). Names are matched case-insensitively."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such input file")
        suffix = self.path.suffix.lower()
        self._close = lambda: None
        if suffix == ".npz":
            self._open_npz()
        elif suffix in (".h5", ".hdf5"):
            self._open_hdf5()
        elif suffix in (".fits", ".fit", ".fts") or self.path.name.lower().endswith(".fits.gz"):
            self._open_fits()
        else:
            raise ValueError(f"{self.path}: unknown input format (use .npz, .h5/.hdf5 or .fits)")
        self._validate()

    # Each opener sets self.columns: name -> an object with .shape and [rows] slicing (or a full array).
    def _open_npz(self):
        import zipfile

        archive = zipfile.ZipFile(self.path)
        self._close = archive.close
        self.columns = {}
        for name in archive.namelist():
            if name.endswith(".npy"):
                self.columns[name[:-4].lower()] = _NpyMember(archive, name)

    def _open_hdf5(self):
        try:
            import h5py
        except ImportError as error:
            raise ImportError("reading HDF5 needs h5py: pip install 'zfast[io]'") from error
        handle = h5py.File(self.path, "r")
        self._close = handle.close
        self.columns = {name.lower(): handle[name] for name in handle if isinstance(handle[name], h5py.Dataset)}

    def _open_fits(self):
        try:
            from astropy.io import fits
        except ImportError as error:
            raise ImportError("reading FITS needs astropy: pip install 'zfast[io]'") from error
        hdul = fits.open(self.path, memmap=True)
        self._close = hdul.close
        self.columns = {}
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU) and hdu.data is not None:
                names = {n.lower(): n for n in hdu.columns.names}
                if "flux" in names and "flux" not in self.columns:
                    for low, name in names.items():
                        self.columns[low] = hdu.data[name]
        for hdu in hdul:
            name = (hdu.name or "").lower()
            if hdu.is_image and hdu.data is not None and name in ("wavelength", "flux", "ivar", "id") and name not in self.columns:
                self.columns[name] = hdu.data
        if "flux" not in self.columns and hdul[0].data is not None and hdul[0].data.ndim == 2:
            self.columns["flux"] = hdul[0].data

    def _validate(self):
        missing = [name for name in ("wavelength", "flux") if name not in self.columns]
        if missing:
            self.close()
            raise ValueError(f"{self.path}: missing {missing}; found {sorted(self.columns) or 'nothing'} "
                             "(need wavelength [M] and flux [N, M]; optional ivar [N, M], id [N])")  # fmt: skip
        flux_shape = tuple(self.columns["flux"].shape)
        wave_shape = tuple(self.columns["wavelength"].shape)
        problem = None
        if len(flux_shape) != 2 or flux_shape[0] == 0 or flux_shape[1] < 2:
            problem = f"flux must be [N, M] with N >= 1 spectra and M >= 2 pixels, got {flux_shape}"
        elif wave_shape not in ((flux_shape[1],), flux_shape):
            problem = f"wavelength {wave_shape} does not match flux {flux_shape} (need [M] or [N, M])"
        elif "ivar" in self.columns and tuple(self.columns["ivar"].shape) != flux_shape:
            problem = f"ivar {tuple(self.columns['ivar'].shape)} does not match flux {flux_shape}"
        elif "id" in self.columns and tuple(self.columns["id"].shape)[:1] != flux_shape[:1]:
            problem = f"id {tuple(self.columns['id'].shape)} does not match the {flux_shape[0]} spectra"
        if problem:
            self.close()
            raise ValueError(f"{self.path}: {problem}" if flux_shape[0] else f"{self.path}: no spectra (empty flux)")
        self.n_spectra, self.n_pixels = flux_shape
        self.shared_grid = len(wave_shape) == 1

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wavelength(self) -> np.ndarray:
        """The shared grid [M], or the first spectrum's grid."""
        column = self.columns["wavelength"]
        return np.asarray(column[:] if self.shared_grid else column[0:1][0], dtype=np.float64)

    def chunks(self, size: int) -> Iterator[tuple]:
        """(ids [n], wavelength [M] or [n, M], flux [n, M], ivar [n, M] or None) for consecutive rows."""
        shared = self.wavelength() if self.shared_grid else None
        for start in range(0, self.n_spectra, size):
            stop = min(self.n_spectra, start + size)

            def rows(name):
                return np.asarray(self.columns[name][start:stop])

            ids = rows("id") if "id" in self.columns else np.arange(start, stop)
            wave = shared if shared is not None else rows("wavelength").astype(np.float64)
            ivar = rows("ivar").astype(np.float64) if "ivar" in self.columns else None
            yield ids, wave, rows("flux").astype(np.float64), ivar


class _NpyMember:
    """One array of an .npz read row by row from the archive (sequential reads: deflated members stream too)."""

    def __init__(self, archive, name: str):
        self.archive, self.name = archive, name
        with archive.open(name) as stream:
            self.version = np.lib.format.read_magic(stream)
            self.shape, self.fortran, self.dtype = self._read_header(stream)
        if self.dtype.hasobject:
            raise ValueError(f"{name}: object arrays are not read (they would run code from the file)")
        self._stream, self._next_row = None, 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0] if self.shape else 1)
        if not self.shape or self.fortran or len(self.shape) == 1 or start < self._next_row:
            if not hasattr(self, "_whole"):
                with self.archive.open(self.name) as stream:
                    self._whole = np.lib.format.read_array(stream, allow_pickle=False)
            return self._whole[rows]
        if self._stream is None:
            self._stream = self.archive.open(self.name)
            np.lib.format.read_magic(self._stream)
            self._read_header(self._stream)
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        if start > self._next_row:
            self._stream.read((start - self._next_row) * row_bytes)
        data = self._stream.read((stop - start) * row_bytes)
        self._next_row = stop
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start,) + tuple(self.shape[1:]))

    def _read_header(self, stream):
        if self.version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


class _CSVWriter:
    def __init__(self, path: Path, pz: bool, columns: tuple = COLUMNS):
        self.path, self.temporary, self.pz, self.columns = path, _temporary(path), pz, columns
        self.stream = open(self.temporary, "w", newline="")
        self.writer = csv.writer(self.stream)
        self.writer.writerow(list(columns) + (["pz"] if pz else []))

    def write(self, ids, result: dict):
        columns = [np.asarray(ids)] + [result[name].numpy() for name in self.columns[1:]]
        pz = result["pz"].numpy() if self.pz else None
        for i in range(len(columns[0])):
            row = [_id_text(columns[0][i])]
            for value in columns[1:]:
                v = value[i]
                row.append(int(v) if value.dtype == np.bool_ else f"{v:.7g}")
            if pz is not None:
                row.append(" ".join(f"{p:.4g}" for p in pz[i]))
            self.writer.writerow(row)

    def commit(self, model: RedshiftModel):
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.replace(self.temporary, self.path)

    def abort(self):
        self.stream.close()
        self.temporary.unlink(missing_ok=True)


def _id_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    return str(value).strip()


class _FITSWriter:
    """Collects the columns and writes one binary table at the end (the CSV writer streams; a FITS table of
    millions of rows with P(z) needs rows x n_bins x 4 bytes of memory)."""

    def __init__(self, path: Path, pz: bool, columns: tuple = COLUMNS):
        try:
            from astropy.io import fits  # noqa: F401
        except ImportError as error:
            raise ImportError("writing FITS needs astropy: pip install 'zfast[io]'") from error
        self.path, self.temporary, self.pz, self.columns = path, _temporary(path), pz, columns
        self.parts: list = []

    def write(self, ids, result: dict):
        self.parts.append((np.asarray(ids), {k: v.numpy() for k, v in result.items()}))

    def commit(self, model: RedshiftModel):
        from astropy.io import fits

        ids = np.concatenate([ids for ids, _ in self.parts])
        if ids.dtype.kind in "OU":
            ids = ids.astype(str)
        columns = [fits.Column(name="ID", format=_fits_format(ids), array=ids)]
        for name in self.columns[1:]:
            data = np.concatenate([part[name] for _, part in self.parts])
            columns.append(fits.Column(name=name.upper(), format="L" if data.dtype == np.bool_ else "D", array=data))
        if self.pz:
            data = np.concatenate([part["pz"] for _, part in self.parts])
            columns.append(fits.Column(name="PZ", format=f"{data.shape[1]}E", array=data))
        table = fits.BinTableHDU.from_columns(columns, name="REDSHIFTS")
        z_lo, z_hi = model.z_range
        table.header["ZMIN"] = (z_lo, "first P(z) bin edge")
        table.header["ZMAX"] = (z_hi, "last P(z) bin edge")
        table.header["NBINS"] = (int(model.bin_edges.numel() - 1), "uniform P(z) bins")
        table.header["ESTIMATR"] = model.estimator
        table.header["CHECKPT"] = Path(model.source).name[:68]
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(self.temporary, overwrite=True)
        os.replace(self.temporary, self.path)

    def abort(self):
        self.temporary.unlink(missing_ok=True)


def _fits_format(ids: np.ndarray) -> str:
    if ids.dtype.kind in "iu":
        return "K"
    if ids.dtype.kind == "f":
        return "D"
    width = max(1, max((len(_id_text(i)) for i in ids), default=1))
    return f"{width}A"


def predict_file(model: Union[RedshiftModel, EnsembleModel], input_path, output_path, *, pz: bool = False, air: bool = False,
                 flux_unit: str = "flam", batch_size: int = 1024, min_valid: float = 0.5, overwrite: bool = False,
                 progress: Optional[bool] = None, templates=None) -> int:  # fmt: skip
    """Predict every spectrum of ``input_path`` and write the table to ``output_path`` (.csv or .fits),
    atomically: a temporary file renamed at the end, nothing left behind on failure. Returns the count.
    ``templates``: as ``predict``'s (adds the template-fit columns)."""
    output_path = Path(output_path)
    suffix = output_path.suffix.lower()
    if suffix not in (".csv", ".fits"):
        raise ValueError(f"{output_path}: unknown output format (use .csv or .fits)")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists (--overwrite to replace it)")
    if pz and model.estimator == "regression":
        raise ValueError("--pz: a regression model has no P(z)")
    if progress is None:
        progress = sys.stderr.isatty()
    templates = load_templates(templates, model)
    columns = COLUMNS + (TEMPLATE_COLUMNS if templates is not None else ())
    with SpectraFile(input_path) as source:
        check_coverage(model, source.wavelength(), min_valid, air)
        writer = (_CSVWriter if suffix == ".csv" else _FITSWriter)(output_path, pz, columns)
        done, started, flagged = 0, time.perf_counter(), 0
        try:
            for ids, wave, flux, ivar in source.chunks(batch_size):
                result = _predict_chunk(model, wave, flux, ivar, air, flux_unit, pz, min_valid, templates)
                writer.write(ids, result)
                done += len(ids)
                flagged += int((result["flag_z_range"] | result["flag_few_pixels"] | result["flag_ood"]).sum())
                if progress:
                    rate = done / max(1e-9, time.perf_counter() - started)
                    print(f"\r{done:,}/{source.n_spectra:,} spectra  {rate:,.0f}/s", end="", file=sys.stderr)
            writer.commit(model)
        except BaseException:
            writer.abort()
            raise
    if progress:
        print(file=sys.stderr)
    print(f"{done:,} spectra -> {output_path} ({flagged:,} flagged)", file=sys.stderr)
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfast-predict", description="Redshifts of spectra in a file from a zfast-train checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a zfast-train checkpoint (best.pt); several: an ensemble, their P(z) averaged (binned estimators on the same bins)")
    parser.add_argument("--input", required=True, help="spectra: .npz, .h5/.hdf5 or .fits with wavelength [M] (Å), flux [N, M], optional ivar [N, M] and id [N]")
    parser.add_argument("--output", required=True, help="the table: .csv or .fits")
    parser.add_argument("--pz", action="store_true", help="add P(z) (a column of n_bins probabilities)")
    parser.add_argument("--air", action="store_true", help="the input wavelengths are in air (converted to vacuum)")
    parser.add_argument("--flux-unit", choices=("flam", "fnu"), default="flam", help="f_λ or f_ν (any scale)")
    parser.add_argument("--batch-size", type=int, default=1024, help="spectra per chunk")
    parser.add_argument("--min-valid", type=float, default=0.5, help="share of the model's pixels that must be valid")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--templates", default=None,
                        help="also fit each spectrum with every SED of a library (columns z_template, z_template_err, template_sed, template_rchi2): "
                             "'training' (the checkpoint's training SEDs), 'default' (the built-in library) or a library file; "
                             "~0.1 s per spectrum with 7,200 SEDs on 2 CPU cores")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or not (0.0 <= args.min_valid <= 1.0):
        raise SystemExit("zfast-predict: need --batch-size >= 1 and 0 <= --min-valid <= 1")
    try:
        device = None if args.device == "auto" else args.device
        model = load_model(args.checkpoint[0], device) if len(args.checkpoint) == 1 else load_ensemble(args.checkpoint, device)
        predict_file(model, args.input, args.output, pz=args.pz, air=args.air, flux_unit=args.flux_unit,
                     batch_size=args.batch_size, min_valid=args.min_valid, overwrite=args.overwrite,
                     templates=args.templates)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, TypeError, KeyError) as error:
        raise SystemExit(f"zfast-predict: {error}") from error
    return 0


if __name__ == "__main__":
    sys.exit(main())
