"""Redshifts of real spectra from trained models: ``zfast.predict``.

What happens to each spectrum, in the order training saw it (``zfast.data``):
1. wavelengths in Å, observed frame, vacuum (``air=True`` converts air wavelengths first); flux f_λ in any units
   (``flux_unit="fnu"`` converts f_ν to f_λ ∝ f_ν/λ²): the network reads normalised spectra, so the flux scale
   does not matter but its shape does.
2. Masked input pixels (ivar = 0, NaN ivar, or non-finite flux) are left out, then the spectrum is put onto the
   model's instrument pixels with the flux-conserving resampling of ``zfast.rebin`` (spectres' convention on the
   input, the instrument's exact pixel edges on the output): each model pixel gets the mean of the valid input
   flux over it, and is itself masked when valid input covers less than half of it (or none, outside the input's
   range). The variance is propagated as var_j = Σ_k w_jk·Δλ_k·var_k / (W_j·c_j)² (w the overlaps, W the pixel
   width, c the valid fraction): exact when input pixels lie inside model pixels, conservative (larger) when
   upsampling, whose output pixels are correlated.
3. ``normalise``, as in training: flux ÷ the continuum level of the valid pixels, masked pixels set to 0.
4. The network (every member of an ensemble); for binned estimators P(z) = softmax(logits / T) with T the
   checkpoint's temperature for the spectrum's SNR (``zfast.calibration``) and ``pz_summary``: z is the refined
   mode of the plain softmax (a temperature never moves it), z_err the standard deviation of P(z), z_lo68/z_hi68
   its equal-tailed 68 % interval. For regression z is the network's output and z_err = σ_NMAD·(1+z) of the
   validation set, the interval z ± z_err.
5. The flags of ``zfast.flags``; rows are never dropped.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Union

import numpy as np
import torch

from .bins import PzCandidates, PzSummary, pz_summary_and_candidates, target_to_z
from .calibration import plain_and_calibrated, spectrum_snr
from .checkpoint import EnsembleModel, RedshiftModel, load_ensemble, load_model
from .data.instrument import normalise
from .data.sed_library import SEDLibrary
from .data.sets import load_library, run_splits
from .flags import DELTACHI2_MIN, MIN_VALID, few_pixels_flag, ood_flag, z_range_flag, zwarn
from .models import split_outside
from .ood import ood_features, ood_scores
from .ops import spectra_resample
from .ops.rebin import cumulative_at, pixel_edges
from .hybrid import hybrid_scan, prescan_subset
from .template_fit import fit_deltachi2, library_fit_redshift
from .units import astropy_arrays
from .wavelengths import air_to_vacuum

COLUMNS = ("id", "z", "z_err", "z_lo68", "z_hi68", "valid_fraction", "snr", "ood_score", "p_outside",
           "flag_z_range", "flag_few_pixels", "flag_ood")  # fmt: skip
FIT_STEP = 2e-3  # the template fit's coarse z step (``library_fit_redshift``'s default)
FIT_REFINE = 0  # pairs refined beyond the valley's two: only fit_quantiles needs them (docs/hybrid.md)
TEMPLATE_COLUMNS = ("z_template", "z_template_err", "template_sed", "template_rchi2", "template_deltachi2")
CATALOGUE_COLUMNS = ("zprob", "deltachi2", "z_cand", "p_cand", "npixels", "zwarn")
N_CANDIDATES = 3  # Z_CAND / P_CAND: the best redshift and the next two (zfast.bins.pz_candidates)
Model = Union[RedshiftModel, EnsembleModel]


def edges_of(model, device) -> torch.Tensor:
    return model.bin_edges.to(device=device, dtype=torch.float64)


# --- spectra onto the model's pixels --------------------------------------------------------------------
def as_float64(values, name: str) -> torch.Tensor:
    """``values`` as a float64 CPU tensor; TypeError naming ``name`` for non-numeric input."""
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must be numeric, got {tensor.dtype}")
    return tensor.to(device="cpu", dtype=torch.float64)


def check_grid(wavelength: torch.Tensor) -> None:
    """ValueError unless ``wavelength`` [..., N] has N >= 2 finite, strictly increasing values."""
    if wavelength.dim() == 0 or wavelength.shape[-1] < 2:
        raise ValueError(f"wavelength needs at least 2 pixels, got shape {tuple(wavelength.shape)}")
    if not bool(torch.isfinite(wavelength).all()):
        raise ValueError("wavelength has non-finite values")
    steps = wavelength[..., 1:] - wavelength[..., :-1]
    if not bool((steps > 0).all()):
        raise ValueError("wavelength must be strictly increasing (sort the pixels, and give Å)")


def resample(flux: torch.Tensor, var: torch.Tensor, valid: torch.Tensor, wavelength: torch.Tensor,
             out_edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(flux, ivar, valid fraction) [B, M] on ``out_edges`` from spectra [B, N] on pixel centres ``wavelength``
    [N] (module docstring, step 2). float64. On the CPU the native op ``zfast.ops.spectra_resample`` (the same
    maths in one pass per spectrum); the torch lines below are its spec and the fallback."""
    edges = pixel_edges(wavelength)
    if spectra_resample.available(flux.device):
        return spectra_resample.spectra_resample(flux, var, valid, edges, out_edges.to(torch.float64))
    widths_in = edges[1:] - edges[:-1]
    widths_out = out_edges[1:] - out_edges[:-1]

    def mean_over_bins(values):
        integral = cumulative_at(values, edges, out_edges)
        return (integral[..., 1:] - integral[..., :-1]) / widths_out

    coverage = mean_over_bins(valid.double())  # 0 outside the input's range
    good = coverage >= 0.5
    safe = torch.where(good, coverage, torch.ones_like(coverage))
    flux_out = mean_over_bins(torch.where(valid, flux, 0.0)) / safe
    var_out = mean_over_bins(torch.where(valid, var * widths_in, 0.0)) / (widths_out * safe.square())
    ivar_out = torch.where(good & (var_out > 0), 1.0 / var_out.clamp_min(1e-300), torch.where(good & (var_out == 0), math.inf, 0.0))
    flux_out = torch.where(good, flux_out, math.nan)
    return flux_out, ivar_out, good.double().mean(dim=1)


def checked_shapes(wavelength, flux, ivar=None) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(wavelength [N] or [B, N], flux [B, N], ivar [B, N] or None) float64, their types and shapes checked; one
    spectrum may come as flux [N] (and ivar [N])."""
    wavelength, flux = as_float64(wavelength, "wavelength"), as_float64(flux, "flux")
    ivar = None if ivar is None else as_float64(ivar, "ivar")
    if flux.dim() == 1:
        flux = flux[None]
        ivar = ivar[None] if ivar is not None and ivar.dim() == 1 else ivar
    if flux.dim() != 2:
        raise ValueError(f"flux must be [n_spectra, n_pixels], got shape {tuple(flux.shape)}")
    if wavelength.dim() not in (1, 2) or wavelength.shape[-1] != flux.shape[1] or (wavelength.dim() == 2 and wavelength.shape[0] != flux.shape[0]):
        raise ValueError(f"wavelength must be [{flux.shape[1]}] or [{flux.shape[0]}, {flux.shape[1]}] to match flux "
                         f"{tuple(flux.shape)}, got {tuple(wavelength.shape)}")  # fmt: skip
    if ivar is not None and ivar.shape != flux.shape:
        raise ValueError(f"ivar must have flux's shape {tuple(flux.shape)}, got {tuple(ivar.shape)}")
    return wavelength, flux, ivar


def _checked_inputs(wavelength, flux, ivar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(wavelength [N] or [B, N], flux [B, N], ivar [B, N] or None) float64, their shapes and values checked."""
    wavelength, flux, ivar = checked_shapes(wavelength, flux, ivar)
    if ivar is not None and bool((ivar < 0).any()):
        raise ValueError("ivar has negative values (inverse variances are >= 0; use 0 to mask a pixel)")
    check_grid(wavelength)
    if wavelength.dim() == 2 and bool((wavelength == wavelength[:1]).all()):
        wavelength = wavelength[0]  # one grid after all (e.g. a FITS table's per-row column): resample as a batch
    return wavelength, flux, ivar


def unit_scale(flux: torch.Tensor, ivar: Optional[torch.Tensor]) -> tuple:
    """(flux / s, ivar · s²) with s [B, 1] the largest |flux| of each spectrum's usable pixels: the answer does not
    depend on the flux scale, and fluxes near the float64 limits integrate without overflow."""
    usable = torch.isfinite(flux) & (True if ivar is None else ivar > 0)
    scale = torch.where(usable, flux.abs(), 0.0).amax(dim=1, keepdim=True)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    return flux / scale, None if ivar is None else ivar * scale.square()


def estimated_ivar(flux: torch.Tensor) -> torch.Tensor:
    """[B, N] inverse variances for spectra given without ivar: one σ per spectrum from the robust scatter of
    neighbouring pixels, σ = 1.4826 · MAD(f_k+1 - f_k) / √2 (lines and slopes move few differences; white noise
    moves them all), so that ``snr`` and the P(z) calibration do not depend on the flux units. +inf where the
    differences are all equal (a noiseless spectrum); 0 on non-finite flux."""
    finite = torch.isfinite(flux)
    steps = flux[:, 1:] - flux[:, :-1]
    pairs = finite[:, 1:] & finite[:, :-1]
    steps = torch.where(pairs, steps, math.nan)
    centre = steps.nanmedian(dim=1, keepdim=True).values
    mad = (steps - centre).abs().nanmedian(dim=1, keepdim=True).values
    sigma = 1.4826 * mad / math.sqrt(2.0)
    ivar = torch.where(sigma > 0, 1.0 / sigma.square(), math.inf).expand_as(flux)
    return torch.where(finite, torch.nan_to_num(ivar, nan=0.0, posinf=math.inf), 0.0)


def prepare_spectra(model: Model, wavelength, flux, ivar=None, *, air: bool = False, flux_unit: str = "flam",
                    return_ivar: bool = False):  # fmt: skip
    """(normalised flux [B, M] float32 on the model's device, valid fraction [B], continuum SNR [B]): real spectra
    made into what the network saw in training (module docstring, steps 1-3); with ``return_ivar``, also the
    normalised spectra's inverse variances [B, M] (float64, CPU; 0 on masked pixels).

    wavelength is [N] (one grid for all) or [B, N] (one per spectrum); flux and ivar are [B, N].
    """
    if flux_unit not in ("flam", "fnu"):
        raise ValueError(f'flux_unit must be "flam" or "fnu", got {flux_unit!r}')
    wavelength, flux, ivar = _checked_inputs(wavelength, flux, ivar)
    if air:
        wavelength = air_to_vacuum(wavelength)
    if flux_unit == "fnu":  # f_λ ∝ f_ν / λ², so σ_λ ∝ σ_ν / λ² and ivar_λ ∝ ivar_ν · λ⁴
        flux = flux / wavelength.square()
        ivar = None if ivar is None else ivar * wavelength.square().square()
    flux, ivar = unit_scale(flux, ivar)
    if ivar is None:
        ivar = estimated_ivar(flux)
    out_edges = model.instrument.wave_edges
    valid = torch.isfinite(flux) & (ivar > 0)
    var = torch.where(valid, 1.0 / torch.where(valid, ivar, 1.0), 0.0)
    if wavelength.dim() == 1:
        flux_m, ivar_m, fraction = resample(flux, var, valid, wavelength, out_edges)
    else:
        rows = [resample(flux[i:i + 1], var[i:i + 1], valid[i:i + 1], wavelength[i], out_edges) for i in range(flux.shape[0])]
        flux_m, ivar_m, fraction = (torch.cat(parts) for parts in zip(*rows))
    flux_n, ivar_n, _ = normalise(flux_m, ivar_m)
    snr = spectrum_snr(ivar_n)  # continuum SNR per model pixel: the normalised continuum is ~1
    prepared = flux_n.to(device=model.device, dtype=torch.float32), fraction, snr
    return prepared + (ivar_n,) if return_ivar else prepared


def check_min_valid(min_valid) -> None:
    """TypeError unless ``min_valid`` is a real number, ValueError unless it is within [0, 1] (NaN is not)."""
    if isinstance(min_valid, bool) or not isinstance(min_valid, (int, float, np.integer, np.floating)):
        raise TypeError(f"min_valid must be a number in [0, 1], got {min_valid!r}")
    if not 0.0 <= float(min_valid) <= 1.0:
        raise ValueError(f"min_valid must be within [0, 1] (a share of the model's pixels), got {min_valid}")


def check_coverage(model: Model, wavelength, min_valid: float = MIN_VALID, air: bool = False) -> float:
    """The share of the model's pixels inside the input grid's range; ValueError if below ``min_valid`` (itself
    checked: a number in [0, 1]). A pixel counts as inside when at least half of it lies within the grid's range,
    the rule ``resample`` gives a valid pixel by (so the model's own pixels, even rounded to float32, are all in)."""
    check_min_valid(min_valid)
    wavelength = as_float64(wavelength, "wavelength")
    check_grid(wavelength)
    if air:
        wavelength = air_to_vacuum(wavelength)
    edges = model.instrument.wave_edges
    grid_edges = pixel_edges(wavelength if wavelength.dim() == 1 else wavelength[0])
    lo, hi = float(grid_edges[0]), float(grid_edges[-1])
    overlap = (edges[1:].clamp(max=hi) - edges[:-1].clamp(min=lo)).clamp_min(0.0)
    inside = (overlap >= 0.5 * (edges[1:] - edges[:-1])).double().mean().item()
    if inside < min_valid:
        raise ValueError(f"the spectra cover {lo:.1f}-{hi:.1f} Å, only {100 * inside:.0f} % of the model's pixels "
                         f"({edges[0]:.1f}-{edges[-1]:.1f} Å, {model.instrument.name}); need >= {100 * min_valid:.0f} %"
                         + (" (are the wavelengths in Å? air? rest frame?)" if inside == 0 else ""))  # fmt: skip
    return inside


# --- the networks ----------------------------------------------------------------------------------------------
def _member_outputs(member: RedshiftModel, flux: torch.Tensor) -> tuple:
    """(estimator outputs [B, K], P(outside) [B] float64 (NaN without that output), OOD score [B] or None, flag_ood)."""
    member.network.eval()
    ood = member.stats.ood
    features, output = ood_features(member.network, flux.to(member.device, torch.float32), taps=ood is not None and ood.taps)
    output, outside = split_outside(output, member.outside)
    p_outside = torch.sigmoid(outside.double()) if outside is not None else torch.full_like(output[:, 0], math.nan, dtype=torch.float64)
    if ood is None:
        return output, p_outside, None, None
    score = ood_scores(features, ood)
    return output, p_outside, score, ood_flag(score, ood.threshold)


@torch.no_grad()
def ensemble_outputs(model: Model, flux: torch.Tensor, snr: Optional[torch.Tensor]) -> dict:
    """The members' averages for normalised spectra [B, M] (one member for a ``RedshiftModel``): ``plain`` (mean
    softmax) and ``calibrated`` (mean calibrated P(z), or the ensemble's own calibration of ``plain``) [B, K]
    float64, ``p_outside``, ``ood_score`` [B] and ``flag_ood`` (see ``EnsembleModel``)."""
    members = model.members if isinstance(model, EnsembleModel) else [model]
    own = model.calibration if isinstance(model, EnsembleModel) else None
    plains, calibrateds, outside, scores, flags = [], [], [], [], []
    for member in members:
        logits, p_outside, score, flag = _member_outputs(member, flux)
        pair = plain_and_calibrated(logits, snr if own is None else None, member.stats.calibration, member.bin_edges.to(logits.device))
        plains.append(pair[0])
        calibrateds.append(pair[1])
        outside.append(p_outside)
        if score is not None:
            scores.append(score)
            flags.append(flag)
    mean = lambda terms: terms[0] if len(terms) == 1 else sum(terms) / len(terms)  # noqa: E731
    plain = mean(plains)
    calibrated = mean(calibrateds) if own is None else plain_and_calibrated(torch.log(plain.clamp_min(1e-300)), snr, own, model.bin_edges.to(plain.device))[1]
    result = dict(plain=plain, calibrated=calibrated, p_outside=torch.stack(outside).nanmean(dim=0))
    if scores:
        result["ood_score"] = torch.stack(scores).quantile(0.5, dim=0)  # (of two: their mean)
        result["flag_ood"] = torch.stack(flags).sum(dim=0) * 2 > len(flags)
    else:
        result["ood_score"] = torch.full_like(result["p_outside"], math.nan)
        result["flag_ood"] = torch.zeros_like(result["p_outside"], dtype=torch.bool)
    return result


def ensemble_summary(model: Model, flux: torch.Tensor, snr: Optional[torch.Tensor],
                     n: int = N_CANDIDATES) -> tuple[dict, PzSummary, PzCandidates]:  # fmt: skip
    """(``ensemble_outputs``, the ``pz_summary`` of its calibrated P(z) with z_mode that of the mean plain softmax
    (as ``calibrated_summary``: a temperature never moves the point estimate), the ``pz_candidates`` around it)."""
    out = ensemble_outputs(model, flux, snr)
    summary, candidates = pz_summary_and_candidates(out["calibrated"], model.bin_edges.to(out["calibrated"].device), out["plain"], n=n)
    return out, summary, candidates


@torch.no_grad()
def _predict_regression(model: RedshiftModel, flux: torch.Tensor) -> dict:
    output, p_outside, score, flag = _member_outputs(model, flux)
    z = target_to_z(output[:, 0].double(), model.bin_edges.to(output.device))
    scatter = model.stats.z_scatter
    z_err = (math.nan if scatter is None else scatter) * (1.0 + z)
    result = dict(z=z, z_err=z_err, z_lo68=z - z_err, z_hi68=z + z_err, p_outside=p_outside)
    result["ood_score"] = score if score is not None else torch.full_like(z, math.nan)
    result["flag_ood"] = flag if flag is not None else torch.zeros_like(z, dtype=torch.bool)
    # No P(z): no candidates beyond z, no ZPROB or DELTACHI2 (so SMALL_DELTA_CHI2 is never raised).
    nan = torch.full_like(z, math.nan)
    result.update(zprob=nan, deltachi2=nan, z_cand=torch.cat([z[:, None], nan[:, None].expand(-1, N_CANDIDATES - 1)], dim=1),
                  p_cand=nan[:, None].expand(-1, N_CANDIDATES).clone())  # fmt: skip
    return result


@torch.no_grad()
def predict_normalised(model: Model, flux: torch.Tensor, pz: bool = False, snr: Optional[torch.Tensor] = None) -> dict:
    """z, z_err, z_lo68, z_hi68, ood_score, p_outside, flag_ood, flag_z_range (and pz) as CPU tensors [B] for
    normalised spectra [B, M] on the model's pixels; ``snr`` [B] (``zfast.calibration.spectrum_snr``) picks the
    P(z) temperature (without it: the plain softmax). One path for single models and ensembles."""
    if model.estimator == "regression":
        result = _predict_regression(model, flux)
    else:
        out, s, candidates = ensemble_summary(model, flux, snr)
        result = dict(z=s.z_mode, z_err=s.sigma, z_lo68=s.lo68, z_hi68=s.hi68, ood_score=out["ood_score"],
                      flag_ood=out["flag_ood"], p_outside=out["p_outside"])  # fmt: skip
        result.update(zprob=candidates.zprob, deltachi2=candidates.deltachi2, z_cand=candidates.z, p_cand=candidates.p)
        if pz:
            result["pz"] = out["calibrated"].float()
    result["flag_z_range"] = z_range_flag(result["z"], result["p_outside"], *model.z_range)
    return {k: v.cpu() for k, v in result.items()}


def _own_threshold(calibration: Optional[dict]) -> Optional[float]:
    value = (calibration or {}).get("deltachi2_min")
    return None if value is None else float(value)


def deltachi2_min(model: Model) -> float:
    """The DELTACHI2 below which ``model``'s spectra get SMALL_DELTA_CHI2: its own, fitted with its P(z)
    calibration (``zfast.training.thresholds``; an ensemble file's for the ensemble's P(z), else the largest of
    its members'), or ``zfast.flags.DELTACHI2_MIN`` for checkpoints written before thresholds were fitted."""
    if isinstance(model, EnsembleModel):
        own = _own_threshold(model.calibration)
        if own is None:
            members = [_own_threshold(m.stats.calibration) for m in model.members]
            own = max(members) if all(t is not None for t in members) else None
    else:
        own = _own_threshold(model.stats.calibration)
    return DELTACHI2_MIN if own is None else own


# --- the template fit beside the network ------------------------------------------------------------------------
def _template_library(templates, model: Model):
    """(SEDLibrary, SED indices or None) for ``load_templates``, before the move to the model's device."""
    if isinstance(templates, SEDLibrary):
        return templates, None
    if isinstance(templates, tuple) and len(templates) == 2 and isinstance(templates[0], SEDLibrary):
        return templates
    if not isinstance(templates, (str, os.PathLike)):
        raise TypeError(f"templates must be an SEDLibrary, (SEDLibrary, indices) or a name, got {type(templates).__name__}")
    if str(templates) == "training":
        c = model.config
        try:
            library = load_library(c.get("library", "default"))
        except (OSError, ValueError) as error:
            raise ValueError(f"templates='training': the checkpoint's library {c.get('library')!r} cannot be read ({error})") from error
        splits = run_splits(library, split_seed=int(c.get("split_seed", 0)), holdout_sfh=str(c.get("holdout_sfh", "")),
                            train_seds=int(c.get("train_seds", 0)))  # fmt: skip
        return library, splits["train"]
    if str(templates) == "default":
        return SEDLibrary.default(), None
    return SEDLibrary.load(templates), None


class Templates(NamedTuple):
    """A loaded template set (``load_templates``): the library on the model's device, the SED indices to fit with
    (None: all) and ``points``: None for the full fit, else the coarse z points per spectrum the network's P(z)
    names (``zfast.hybrid``)."""

    library: SEDLibrary
    seds: Optional[torch.Tensor]
    points: Optional[int] = None
    prescan: Optional[torch.Tensor] = None  # with points and a large library: the SEDs widened spectra pre-scan with


def load_templates(templates, model: Model, points: Optional[int] = None) -> Optional[Templates]:
    """``Templates`` on the model's device, for ``predict``'s ``templates``; None for None.
    Names: "default" (the built-in library), "training" (the training SEDs of the checkpoint's own library file
    and split, as zfast-train drew them; an ensemble's first member's), or the path of a library file
    (``zfast-sed build``). ``points``: scan only that many coarse z points per spectrum, where the network's P(z)
    has the most mass (binned models only)."""
    if templates is None:
        if points is not None:
            raise ValueError("template_points needs templates (the library to fit with)")
        return None
    if points is not None:
        if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 1:
            raise ValueError(f"template_points must be a positive integer, got {points!r}")
        if model.estimator == "regression":
            raise ValueError("template_points: the network must give a P(z) (a binned estimator), this one is a regression")
    library, seds = _template_library(templates, model)
    seds = None if seds is None else torch.as_tensor(seds)
    prescan = None if points is None else prescan_subset(library, seds, model.instrument.wave_edges, model.z_range)
    return Templates(library.to(model.device), None if seds is None else seds.to(model.device),
                     None if points is None else int(points), prescan)  # fmt: skip


def template_columns(model: Model, normalised: torch.Tensor, ivar: torch.Tensor, templates: Templates, known_noise: bool = True,
                     probs: Optional[torch.Tensor] = None) -> dict:  # fmt: skip
    """TEMPLATE_COLUMNS [B] float64 for normalised spectra and their ivar: the best SED and z of
    ``library_fit_redshift`` over the model's z range (with ``templates.points``: only at the points of the
    network's P(z) ``probs`` [B, K], ``zfast.hybrid.scan_points``); NaN for spectra with fewer than two valid pixels."""
    library, seds, points, prescan = templates
    scan = None if points is None else hybrid_scan(probs, edges_of(model, probs.device), library, model.instrument, normalised,
                                                   ivar.to(normalised.device), seds, points, model.z_range, FIT_STEP,
                                                   known_noise, prescan)  # fmt: skip
    # Without the user's ivar the χ² scale is unknown: no marginalising over SEDs, and the noise comes from the residuals.
    fit = library_fit_redshift(library, model.instrument, normalised.double(), ivar.to(normalised.device), seds, model.z_range,
                               step=FIT_STEP, n_refine=FIT_REFINE, marginalise=known_noise, scan=scan)  # fmt: skip
    rchi2 = fit["rchi2"]
    empty = fit["n_valid"] < 2  # nothing to fit: NaN rather than an arbitrary grid point
    nan = torch.full_like(rchi2, math.nan)
    # The formal error (Δχ² = 1), widened by sqrt(reduced χ²) where the best template fits worse than the noise.
    error = fit["z_err"] * (rchi2.clamp_min(1.0) if known_noise else rchi2).sqrt()
    # Δχ² to the best other redshift, in units of the noise the fit sees (χ² scaled by the reduced χ² as the error is).
    deltachi2 = fit_deltachi2(fit) / (rchi2.clamp_min(1.0) if known_noise else rchi2.clamp_min(1e-300))
    return {"z_template": torch.where(empty, nan, fit["z"]), "z_template_err": torch.where(empty, nan, error),
            "template_sed": torch.where(empty, nan, fit["sed"].double()), "template_rchi2": torch.where(empty, nan, rchi2),
            "template_deltachi2": torch.where(empty, nan, deltachi2)}  # fmt: skip


# --- the public entry point -------------------------------------------------------------------------------------
def predict_batch(model: Model, wavelength, flux, ivar=None, *, air: bool = False, flux_unit: str = "flam",
                  pz: bool = False, min_valid: float = MIN_VALID, templates=None) -> dict:  # fmt: skip
    """``predict`` for one batch, the model already loaded and ``templates`` already ``load_templates``'d."""
    normalised, fraction, snr, ivar_n = prepare_spectra(model, wavelength, flux, ivar, air=air, flux_unit=flux_unit,
                                                         return_ivar=True)  # fmt: skip
    scanning = templates is not None and templates.points is not None
    result = predict_normalised(model, normalised, pz or scanning, snr)
    probs = result["pz"] if scanning else None
    if scanning and not pz:
        del result["pz"]
    result["valid_fraction"], result["snr"] = fraction, snr
    result["flag_few_pixels"] = few_pixels_flag(fraction, min_valid)
    result["npixels"] = torch.round(fraction * (model.instrument.wave_edges.numel() - 1)).to(torch.int64)
    if templates is not None:
        result.update(template_columns(model, normalised, ivar_n, templates, known_noise=ivar is not None, probs=probs))
    result["zwarn"] = zwarn(result, model.z_range, min_valid, deltachi2_min(model))
    return result


def resolve_model(model, device=None) -> Model:
    """A loaded model: ``model`` itself (moved to ``device`` if given), ``load_model`` of a path, or
    ``load_ensemble`` of a list of paths."""
    if isinstance(model, (list, tuple)):
        return load_ensemble(model, device)
    if not isinstance(model, (RedshiftModel, EnsembleModel)):
        return load_model(model, device)
    if device is not None:
        model.to(device)
    return model


def predict(model: Union[Model, str, os.PathLike, list], wavelength, flux=None, ivar=None, *, air: bool = False,
            flux_unit: str = "flam", pz: bool = False, batch_size: int = 1024, min_valid: float = MIN_VALID,
            device=None, templates=None, template_points: Optional[int] = None) -> dict:  # fmt: skip
    """Redshifts of real spectra.

    Args:
        model: a ``RedshiftModel`` (``load_model``) or the path of a zfast-train checkpoint; an ``EnsembleModel``
            (``load_ensemble``) or a list of checkpoint paths: their P(z) averaged (see ``EnsembleModel``).
        wavelength (array [N] or [B, N]): observed pixel centres in Å, vacuum (``air=True``: air), increasing.
            Or, with ``flux`` left out, a specutils ``Spectrum``/``Spectrum1D`` or an astropy ``Table`` (units
            converted through astropy: ``zfast.units.astropy_arrays``).
        flux (array [B, N] or [N]): f_λ in any units (``flux_unit="fnu"``: f_ν); NaN marks a bad pixel.
        ivar (array [B, N], optional): inverse variances; 0 or NaN marks a bad pixel. Default: all pixels valid.
        pz (bool): also return P(z) [B, K] (binned estimators). batch_size (int): spectra per forward pass.
        min_valid (float): the share of the model's pixels that must be valid (else ``flag_few_pixels``); input
            grids covering less of the model's range raise ValueError.
        templates: also fit every spectrum with every SED of a library (``zfast.template_fit.library_fit_redshift``
            over the model's z range, on the same normalised pixels): an ``SEDLibrary``, a (library, SED indices)
            pair, or a name for ``load_templates`` ("default", "training", a library file). Adds z_template,
            z_template_err (the formal Δχ² = 1 error, times sqrt(template_rchi2) when that is above 1, or always
            without ``ivar``), template_sed, template_rchi2 (χ² per valid pixel of the best fit) and
            template_deltachi2 (χ² of the best fit at least 0.01(1+z) away less the best's, over template_rchi2
            when that is above 1, or always without ``ivar``).
        template_points (int, optional): with ``templates``, the network proposes and the templates confirm: the
            fit scans at most the ``template_points`` coarse z points (of 400) where the network's P(z) has the most
            mass, all 400 where those miss > 5 % of it (``zfast.hybrid``; 24: the full fit's η or better, docs/hybrid.md); binned models.

    Returns:
        dict of CPU tensors [B]: z, z_err, z_lo68, z_hi68 (float64), valid_fraction, snr, ood_score, p_outside
        (float64), flag_z_range, flag_few_pixels, flag_ood (bool; ``zfast.flags``), and pz [B, K] float32 when
        asked; with ``templates`` the four TEMPLATE_COLUMNS. The catalogue's columns too: zprob (P(z) mass within
        ±0.01(1+z) of z), deltachi2 (2 ln(P_1/P_2) of the two best candidates), z_cand and p_cand [B, 3] (the
        candidates and their masses, ``zfast.bins.pz_candidates``; NaN for regression), npixels (valid model
        pixels, int64) and zwarn (int64 bitmask, ``zfast.flags``). Rows stay in input order; none are dropped.
    """
    if flux is None:
        if ivar is not None:
            raise ValueError("ivar given without flux: pass a Spectrum or Table alone, or wavelength, flux and ivar")
        wavelength, flux, ivar = astropy_arrays(wavelength)
        flux_unit = "flam"
    model = resolve_model(model, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    wavelength, flux, ivar = checked_shapes(wavelength, flux, ivar)  # before slicing them into batches
    if flux.shape[0] == 0:
        raise ValueError(f"flux must be a non-empty [n_spectra, n_pixels] array, got shape {tuple(flux.shape)}")
    check_coverage(model, wavelength if wavelength.dim() == 1 else wavelength[0], min_valid, air)
    templates = load_templates(templates, model, template_points)
    parts = []
    for start in range(0, flux.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        parts.append(predict_batch(model, wavelength if wavelength.dim() == 1 else wavelength[rows], flux[rows],
                                   None if ivar is None else ivar[rows], air=air, flux_unit=flux_unit, pz=pz,
                                   min_valid=min_valid, templates=templates))  # fmt: skip
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
