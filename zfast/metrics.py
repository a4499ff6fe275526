"""Redshift quality metrics: point-estimate errors, outlier rates, interval coverage and PIT calibration.

Conventions (written once here; see FACTS.md, "Euclid NISP and the published work"):

* δ = (z_pred − z_true) / (1 + z_true), the normalised redshift error;
* bias = median(δ); σ_NMAD = 1.4826 · median(|δ − median δ|) (1.4826 makes it σ for Gaussian δ);
* outlier fractions η(|δ| > 0.003) and η(|δ| > 0.01), the spectroscopic thresholds (0.15 is the photo-z one);
* mse, mae and r2 are computed on z itself (not δ), as in the talk: r2 = 1 − Σ(z_pred − z_true)² / Σ(z_true − mean z_true)²;
* medians of an even number of values average the two middle ones (numpy's convention);
* the PIT of a spectrum is the CDF of its predicted P(z) at the true z; P(z) is piecewise constant within
  each bin (zfast.bins), so the CDF is piecewise linear between the bin edges. Calibrated P(z) give PIT
  values distributed as U(0, 1); ``pit_ks`` is their Kolmogorov–Smirnov distance from it.

Everything is computed in float64; results are Python floats. Empty input gives n = 0 and NaN for every other
metric (no exception), so an empty group in ``grouped_metrics`` does not stop an evaluation. Non-finite
z_pred (a diverged model) makes the metrics that use it NaN rather than raising; z_true must be finite and
> −1 (ValueError otherwise).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .bins import normalised_probs

NMAD_SCALE = 1.4826
OUTLIER_THRESHOLDS = {"outlier_003": 0.003, "outlier_01": 0.01}


def _vector(values, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """1-D float64 tensor from a tensor or array-like (moved to ``device`` if given)."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be real numbers, got numpy dtype {array.dtype}")
        tensor = torch.as_tensor(array)
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    return tensor if device is None else tensor.to(device)


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of a non-empty 1-D tensor, averaging the two middle values when the length is even (NaN if any NaN)."""
    if bool(torch.isnan(values).any()):
        return values.new_tensor(math.nan)
    ordered = values.sort().values
    n = ordered.numel()
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def ks_uniform(values) -> float:
    """Kolmogorov–Smirnov distance sup_x |F_n(x) − x| of a sample on [0, 1] from U(0, 1).

    Values are clipped to [0, 1]; NaN if the sample is empty or holds NaN. Same statistic as
    ``scipy.stats.kstest(values, "uniform").statistic``.
    """
    x = _vector(values, "values")
    n = x.numel()
    if n == 0 or bool(torch.isnan(x).any()):
        return math.nan
    x = x.clamp(0.0, 1.0).sort().values
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    above = (i / n - x).max()  # empirical CDF above the diagonal just after each point
    below = (x - (i - 1) / n).max()  # and below it just before
    return float(torch.maximum(above, below))


def redshift_metrics(
    z_true,
    z_pred,
    *,
    lo68=None,
    hi68=None,
    lo95=None,
    hi95=None,
    pit=None,
) -> Dict[str, float]:
    """Point-estimate, interval and calibration metrics of predicted redshifts.

    Args:
        z_true (Tensor[B]): true redshifts, finite and > −1.
        z_pred (Tensor[B]): predicted redshifts (e.g. PzSummary.z_mode or z_mean).
        lo68, hi68 (Tensor[B], optional, both or neither): a 68 % interval per spectrum (PzSummary.lo68/hi68).
        lo95, hi95 (Tensor[B], optional, both or neither): a 95 % interval per spectrum.
        pit (Tensor[B], optional): PIT values (``pit_values``).

    Returns:
        dict of Python floats: ``n`` (B), ``mse``, ``mae``, ``r2`` (on z), ``bias`` (median δ), ``sigma_nmad``,
        ``outlier_003``, ``outlier_01`` (fractions of |δ| above 0.003 and 0.01); ``coverage68`` /
        ``coverage95`` (fraction with lo <= z_true <= hi) when those intervals are given; ``pit_ks`` when
        ``pit`` is given. r2 is NaN when B < 2 or z_true is constant. Empty input: n = 0, NaN elsewhere.
    """
    z_true = _vector(z_true, "z_true")
    z_pred = _vector(z_pred, "z_pred", z_true.device)
    n = z_true.numel()
    if z_pred.numel() != n:
        raise ValueError(f"z_pred has {z_pred.numel()} values but z_true has {n}")
    intervals = {}
    for level, lo, hi in ((68, lo68, hi68), (95, lo95, hi95)):
        if (lo is None) != (hi is None):
            raise ValueError(f"give both lo{level} and hi{level} or neither")
        if lo is not None:
            lo, hi = _vector(lo, f"lo{level}", z_true.device), _vector(hi, f"hi{level}", z_true.device)
            for name, bound in ((f"lo{level}", lo), (f"hi{level}", hi)):
                if bound.numel() != n:
                    raise ValueError(f"{name} has {bound.numel()} values but z_true has {n}")
            intervals[level] = (lo, hi)
    if pit is not None:
        pit = _vector(pit, "pit", z_true.device)
        if pit.numel() != n:
            raise ValueError(f"pit has {pit.numel()} values but z_true has {n}")

    keys = ["mse", "mae", "r2", "bias", "sigma_nmad", *OUTLIER_THRESHOLDS]
    keys += [f"coverage{level}" for level in intervals] + (["pit_ks"] if pit is not None else [])
    if n == 0:
        return {"n": 0, **{key: math.nan for key in keys}}
    if not bool(torch.isfinite(z_true).all()) or bool((z_true <= -1).any()):
        bad = ~torch.isfinite(z_true) | (z_true <= -1)
        b = int(torch.nonzero(bad).flatten()[0])
        raise ValueError(f"z_true must be finite and > -1; z_true[{b}] = {z_true[b].item()} ({int(bad.sum())} such values)")

    error = z_pred - z_true
    delta = error / (1.0 + z_true)
    residual_ss = (error**2).sum()
    total_ss = ((z_true - z_true.mean()) ** 2).sum()
    bias = _median(delta)
    result = {
        "mse": (error**2).mean(),
        "mae": error.abs().mean(),
        "r2": 1.0 - residual_ss / total_ss if total_ss > 0 else z_true.new_tensor(math.nan),
        "bias": bias,
        "sigma_nmad": NMAD_SCALE * _median((delta - bias).abs()),
    }
    pred_finite = bool(torch.isfinite(z_pred).all())
    for key, threshold in OUTLIER_THRESHOLDS.items():
        result[key] = (delta.abs() > threshold).double().mean() if pred_finite else math.nan
    for level, (lo, hi) in intervals.items():
        finite = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
        result[f"coverage{level}"] = ((lo <= z_true) & (z_true <= hi)).double().mean() if finite else math.nan
    if pit is not None:
        result["pit_ks"] = ks_uniform(pit)
    return {"n": n, **{key: float(result[key]) for key in keys}}


def pit_values(probs: torch.Tensor, bin_edges, z_true) -> torch.Tensor:
    """Probability integral transform: the CDF of each predicted P(z) at the true redshift.

    P(z) is piecewise constant within bins, so for z_true in bin c the CDF is
    Σ_{k<c} p_k + p_c · (z_true − e_c) / (e_{c+1} − e_c); it is 0 below bin_edges[0] and 1 above bin_edges[-1].

    Args:
        probs (Tensor[B, C]): bin probabilities, finite and >= 0; rows are normalised here (a row summing to 0
            is an error).
        bin_edges (Tensor or array [C+1]): strictly increasing, on probs' device.
        z_true (Tensor[B]): true redshifts (any finite value; outside the bins gives 0 or 1).

    Returns:
        Tensor[B], float64, in [0, 1].
    """
    p, edges = normalised_probs(probs, bin_edges)
    n_bins = edges.numel() - 1
    z = _vector(z_true, "z_true", probs.device)
    if z.numel() != probs.shape[0]:
        raise ValueError(f"z_true has {z.numel()} values but probs has B = {probs.shape[0]} rows")
    if z.numel() == 0:
        return z
    if not bool(torch.isfinite(z).all()):
        raise ValueError("z_true must be finite")
    cdf_below = torch.cumsum(p, dim=1) - p  # mass of the bins below each bin
    c = (torch.bucketize(z, edges, right=True) - 1).clamp(0, n_bins - 1)[:, None]
    fraction = ((z[:, None] - edges[c]) / (edges[c + 1] - edges[c])).clamp(0.0, 1.0)
    pit = (cdf_below.gather(1, c) + p.gather(1, c) * fraction).squeeze(1)
    return pit.clamp(0.0, 1.0)


def pit_histogram(pit, n_bins: int = 10) -> torch.Tensor:
    """Tensor[n_bins], float64: fraction of PIT values in each of n_bins equal bins of [0, 1] (default 10).

    Bins are [k/n, (k+1)/n), the last one closed; values are clipped to [0, 1] and NaN values are dropped.
    A calibrated P(z) gives 1/n_bins in every bin; a U shape means overconfident P(z), a hump underconfident
    ones. Empty input gives zeros.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    x = _vector(pit, "pit")
    x = x[~torch.isnan(x)]
    counts = torch.zeros(n_bins, dtype=torch.float64, device=x.device)
    if x.numel() == 0:
        return counts
    index = (x.clamp(0.0, 1.0) * n_bins).floor().long().clamp(0, n_bins - 1)
    counts.index_add_(0, index, torch.ones_like(x))
    return counts / x.numel()


def grouped_metrics(z_true, z_pred, groups: Dict[str, torch.Tensor], **kwargs) -> Dict[str, Dict[str, float]]:
    """``redshift_metrics`` on all spectra ("all", first) and on each group's subset.

    Args:
        z_true, z_pred (Tensor[B]): as in ``redshift_metrics``.
        groups (dict name -> BoolTensor[B]): which spectra belong to each group (groups may overlap or leave
            spectra out; an empty group gives n = 0 and NaN).
        **kwargs: ``lo68``, ``hi68``, ``lo95``, ``hi95``, ``pit`` (Tensor[B] each), masked like z.

    Returns:
        dict name -> metrics dict, "all" first then the groups in order. A group called "all" is an error.
    """
    z_true = _vector(z_true, "z_true")
    z_pred = _vector(z_pred, "z_pred", z_true.device)
    allowed = {"lo68", "hi68", "lo95", "hi95", "pit"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
    extra = {key: _vector(value, key, z_true.device) for key, value in kwargs.items() if value is not None}
    results = {"all": redshift_metrics(z_true, z_pred, **extra)}
    for name, mask in groups.items():
        if name == "all":
            raise ValueError('a group may not be called "all" (that name holds the metrics of every spectrum)')
        mask = torch.as_tensor(mask, device=z_true.device)
        if mask.dtype != torch.bool or mask.shape != z_true.shape:
            raise ValueError(
                f"group {name!r} must be a bool mask of shape {tuple(z_true.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        results[name] = redshift_metrics(z_true[mask], z_pred[mask], **{k: v[mask] for k, v in extra.items()})
    return results


def ew_groups(ew_halpha, threshold: float = 20.0) -> Dict[str, torch.Tensor]:
    """Split by rest-frame EW(Hα) in Å: {"ew<20": EW < threshold, "ew>=20": EW >= threshold} (default 20 Å).

    The names carry the threshold (formatted with ``:g``). NaN EW falls in neither group.
    """
    ew = _vector(ew_halpha, "ew_halpha")
    return {f"ew<{threshold:g}": ew < threshold, f"ew>={threshold:g}": ew >= threshold}


def snr_groups(snr, edges: Sequence[float] = (0, 5, 10, 30, math.inf)) -> Dict[str, torch.Tensor]:
    """Split by signal-to-noise: {"snr 0-5": 0 <= snr < 5, "snr 5-10": ..., "snr 30-inf": 30 <= snr <= inf}.

    Args:
        snr (Tensor[B]): the spectra's SNR (any definition; the caller's).
        edges (sequence, strictly increasing, >= 2 values): group boundaries, intervals [lo, hi) except the
            last, [lo, hi] (so noiseless spectra with snr = inf land in "snr 30-inf"); default
            (0, 5, 10, 30, inf). Values outside [edges[0], edges[-1]] and NaN fall in no group.

    Returns:
        dict "snr {lo:g}-{hi:g}" -> BoolTensor[B], in increasing order.
    """
    values = _vector(snr, "snr")
    edges = [float(edge) for edge in edges]
    if len(edges) < 2 or any(not hi > lo for lo, hi in zip(edges[:-1], edges[1:])):
        raise ValueError(f"edges must be strictly increasing with at least 2 values, got {edges}")
    last = len(edges) - 2
    return {
        f"snr {lo:g}-{hi:g}": (values >= lo) & ((values <= hi) if k == last else (values < hi))
        for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
    }
