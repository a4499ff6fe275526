"""Calibration of P(z) intervals: one softmax temperature per (peak group, SNR bin), fitted on validation spectra.

Why: a network's P(z) is not a calibrated posterior. On noiseless spectra its errors are far below a redshift bin,
yet the softmax spreads over neighbouring bins, so its 68 % intervals are too wide; with noise they can be too
narrow; and how far off depends on the noise. One temperature cannot fix every noise level, so the calibrated
P(z) is softmax(logits / T[g, k]):

* k, the SNR bin (``SNR_EDGES``, finer at low SNR, where the right temperature changes fastest; the last bin
  holds noiseless spectra) of ``spectrum_snr``: the median sqrt(ivar) over valid pixels of a continuum-normalised
  spectrum, i.e. the continuum SNR per pixel (dimensionless; +inf when noiseless).
* g, the peak group (``PEAK_EDGES``) of ``peak_share``, the share of the plain softmax within ±0.01(1 + z) of its
  peak: at one SNR a P(z) with one peak and one spread over several need different temperatures, and one
  temperature per SNR bin would only be right for the validation set's mix of the two.

``fit_temperatures`` picks each T[g, k] from ``TEMPERATURES`` (161 log-spaced values from 0.001 to 10; the low end
for the noiseless P(z) of distribution-trained networks, spread over only a few bins): the value whose 68 %
intervals (``pz_summary``'s equal-tailed interval) cover closest to 68 % of the validation redshifts in that cell,
searched only on the branch where coverage still grows with T. Beyond that branch P(z) is nearly flat over the
whole range, and a flat P "covers" about 68 % of uniformly drawn redshifts while saying nothing. Cells with fewer
than ``MIN_SPECTRA`` spectra take the nearest fitted SNR bin's temperature (1 if none), groups without any the
nearest group's.

Shapes: logits [B, K] over redshift bins ``bin_edges`` [K + 1]; z, snr [B]. A fit (stored in the checkpoint) is a
dict of tensors: "snr_edges" [n_snr + 1], "peak_edges" [n_peak + 1], "temperatures" and "counts" [n_peak, n_snr]
([n_snr] without peak groups), "calibration_version" (``CALIBRATION_VERSION``). zfast-train adds
"deltachi2_min" (float64 scalar: the checkpoint's SMALL_DELTA_CHI2 threshold, ``zfast.training.thresholds``);
a record without it takes ``zfast.flags.DELTACHI2_MIN``.

zfast-train fits it at the end of a run on validation SEDs (with the training noise, plus noiseless spectra for the
top bin); evaluation and ``zfast.predict`` apply it. The fit's own sampling error matters: the coverage of n spectra
scatters by sqrt(0.68 · 0.32 / n), 3.6 points with the ~170 per bin of a 1024-spectrum set, so zfast-train fits to a
set of its own (``--n-calibration``, by default 8 x n_val within 1024-8192: ~1,000 per bin, 1.5 points). A
temperature never moves the point estimate: z_mode is always that of the plain softmax (``calibrated_summary``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .bins import PzSummary, normalised_probs, pz_summary_and_candidates
from .ops import pz_post

SNR_EDGES = (0.0, 2.0, 4.0, 6.0, 9.0, 13.0, 20.0, 40.0, math.inf)  # noiseless spectra (SNR = inf): the last bin
TEMPERATURES = tuple(math.exp(math.log(0.001) + i * (math.log(10.0) - math.log(0.001)) / 160) for i in range(161))
MIN_SPECTRA = 50
# Stored with every fit; raised whenever the fit changes (2: temperatures down to 0.001, informative branch only; 3:
# per peak group too), so that benchmarks/studies/paper_table.py --refit-calibration knows which checkpoints to refit.
CALIBRATION_VERSION = 3
# Groups of ``peak_share`` (the share of P(z) within ±0.01(1 + z) of its peak): at one SNR, a spectrum whose P(z) has
# one peak and one whose P(z) spreads over several need different temperatures.
PEAK_EDGES = (0.0, 0.5, 0.9, 0.99, math.inf)


def spectrum_snr(ivar: torch.Tensor) -> torch.Tensor:
    """[B]: the median over valid pixels (ivar > 0) of sqrt(ivar) of normalised spectra (continuum ~1), i.e. the
    continuum SNR per pixel; +inf for noiseless spectra, NaN when no pixel is valid."""
    root = torch.where(ivar > 0, ivar.double().sqrt(), math.nan)
    return root.nanmedian(dim=1).values


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[B] int64 in [0, len(edges) - 2]: the bin [edges[k], edges[k + 1]) of each of ``values`` [B] (float64, like
    ``edges``, increasing); values below the first edge go to the first bin, at or above the last to the last."""
    k = torch.searchsorted(edges, values.contiguous(), right=True) - 1
    return k.clamp(0, edges.numel() - 2)


def peak_share(probs: torch.Tensor, bin_edges: torch.Tensor, width: float = 0.01) -> torch.Tensor:
    """[B]: the share of each P(z) [B, K] within ±width·(1 + z) of its highest bin's centre (z_peak): near 1 when one
    peak holds it all, low when other redshifts compete."""
    edges = torch.as_tensor(bin_edges, dtype=torch.float64).to(probs.device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return share_near(probs, centres, centres[probs.argmax(dim=1)], width)


def share_near(probs: torch.Tensor, grid: torch.Tensor, z: torch.Tensor, width: float = 0.01) -> torch.Tensor:
    """[B]: the share of each distribution ``probs`` [B, K] over the points ``grid`` [K] within ±width·(1 + z) of its
    ``z`` [B] (``peak_share``; the template fit's ``fit_confidence``)."""
    inside = (grid[None, :] - z[:, None]).abs() <= width * (1 + z[:, None])
    probs = probs.double()
    return (probs * inside).sum(dim=1) / probs.sum(dim=1)


def fit_temperatures(logits: torch.Tensor, z: torch.Tensor, bin_edges: torch.Tensor, snr: torch.Tensor,
                     by_peak: bool = True) -> dict:  # fmt: skip
    """{"snr_edges", "temperatures", "counts", "calibration_version"} (+ "peak_edges"): per SNR bin — and, with
    ``by_peak``, per bin of the plain softmax's ``peak_share`` (``PEAK_EDGES``; "temperatures" and "counts" are then
    [n_peak, n_snr]) — the temperature whose 68 % intervals cover closest to 68 % of ``z`` (see the module docstring).
    A peak group without any SNR bin of enough spectra takes the nearest group's temperatures.
    logits [B, K], z [B], snr [B] (``spectrum_snr``)."""
    level = 0.68
    edges = torch.tensor(SNR_EDGES, dtype=torch.float64)
    snr = torch.nan_to_num(snr.double().cpu(), nan=0.0)
    k = bin_index(snr, edges)
    logits, z = logits.double().cpu(), z.double().cpu()
    bin_edges = normalised_probs(logits[:1].softmax(dim=1), bin_edges.cpu())[1]  # validated, float64
    covered = interval_coverage(logits, z, bin_edges, TEMPERATURES, level)
    n_snr = edges.numel() - 1
    out = {"snr_edges": edges, "calibration_version": torch.tensor(CALIBRATION_VERSION)}
    if not by_peak:
        out["temperatures"], out["counts"] = pick_temperatures(covered, k, n_snr, TEMPERATURES, level)
        return out
    peak_edges = torch.tensor(PEAK_EDGES, dtype=torch.float64)
    group = bin_index(peak_share(torch.softmax(logits, dim=1), bin_edges), peak_edges)
    out["temperatures"], out["counts"] = pick_grouped_temperatures(covered, k, group, len(PEAK_EDGES) - 1, n_snr, TEMPERATURES, level)
    out["peak_edges"] = peak_edges
    return out


def interval_coverage(logits: torch.Tensor, z: torch.Tensor, bin_edges: torch.Tensor, temperatures,
                      level: float = 0.68, chunk: int = 2048) -> torch.Tensor:  # fmt: skip
    """[len(temperatures), B] float64: 1 where z [B] lies in the equal-tailed ``level`` interval of
    softmax(logits [B, K] / T) over ``bin_edges`` [K+1] (``pz_summary``'s piecewise-linear CDF), else 0.

    z is inside [q_lo, q_hi] exactly when the CDF at z, F_T(z) = Σ_j w_j p_j with w_j = 1 for the bins below z's,
    its share of its own bin, 0 above, lies in [(1 - level) / 2, (1 + level) / 2]: one weighted sum per temperature
    instead of a cumulative sum and a search over every bin."""
    logits, z = logits.double(), z.double()
    edges = bin_edges.double().to(logits.device)
    k = (torch.searchsorted(edges, z.contiguous(), right=True) - 1).clamp(0, edges.numel() - 2)
    share = ((z - edges[k]) / (edges[k + 1] - edges[k])).clamp(0.0, 1.0)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    out = torch.empty(len(temperatures), z.numel(), dtype=torch.float64, device=logits.device)
    bins = torch.arange(logits.shape[1], device=logits.device)
    for start in range(0, z.numel(), chunk):
        rows = slice(start, start + chunk)
        shifted = logits[rows] - logits[rows].amax(dim=1, keepdim=True)
        weight = (bins[None, :] < k[rows, None]).double() + (bins[None, :] == k[rows, None]) * share[rows, None]
        for t, temperature in enumerate(temperatures):
            p = torch.exp(shifted / temperature)
            cdf = (p * weight).sum(dim=1) / p.sum(dim=1)
            out[t, rows] = ((cdf >= lo) & (cdf <= hi)).double()
    return out


def pick_temperatures(covered: torch.Tensor, k: torch.Tensor, n_bins: int, grid: tuple, level: float = 0.68) -> tuple:
    """(temperatures [n_bins], counts [n_bins]): for each SNR bin with at least ``MIN_SPECTRA`` spectra, the value of
    ``grid`` whose intervals cover closest to ``level``, from ``covered`` [len(grid), B] (1 where spectrum b's interval
    at grid[t] holds its z) and the spectra's bins ``k`` [B]; other bins take the nearest fitted bin's (1 if none)."""
    temperatures = torch.ones(n_bins, dtype=torch.float64)
    counts = torch.zeros(n_bins, dtype=torch.int64)
    fitted = []
    for b in range(n_bins):
        members = k == b
        counts[b] = int(members.sum())
        if counts[b] >= MIN_SPECTRA:
            coverage = covered[:, members].mean(dim=1)
            # Only the informative branch: coverage grows with T until P(z) is so flat that the interval spans
            # the whole range, after which it falls back towards 68 % (any flat P "covers" 68 % of uniform z).
            informative = int(coverage.argmax()) + 1
            temperatures[b] = grid[int((coverage[:informative] - level).abs().argmin())]
            fitted.append(b)
    for b in range(n_bins):
        if fitted and b not in fitted:
            temperatures[b] = temperatures[min(fitted, key=lambda f: (abs(f - b), f))]
    return temperatures, counts


def pick_grouped_temperatures(covered: torch.Tensor, k: torch.Tensor, group: torch.Tensor, n_groups: int, n_bins: int,
                              grid: tuple, level: float = 0.68, kinds: Optional[list] = None) -> tuple:  # fmt: skip
    """(temperatures [n_groups, n_bins], counts [n_groups, n_bins]): ``pick_temperatures`` within each group
    (``group`` [B] in [0, n_groups)); a group with no SNR bin of at least ``MIN_SPECTRA`` spectra takes the
    temperatures of the nearest group that has one (the higher on a tie), of the same kind when ``kinds`` [n_groups]
    names kinds and one of its kind has."""
    rows = [pick_temperatures(covered[:, group == g], k[group == g], n_bins, grid, level) for g in range(n_groups)]
    counts = torch.stack([count for _, count in rows])
    kinds = kinds or [0] * n_groups
    fitted = [g for g in range(n_groups) if (counts[g] >= MIN_SPECTRA).any()]
    temperatures = []
    for g in range(n_groups):
        near = [f for f in fitted if kinds[f] == kinds[g]] or fitted or [g]
        temperatures.append(rows[min(near, key=lambda f: (abs(f - g), -f))][0])
    return torch.stack(temperatures), counts


def calibrated_summary(logits: torch.Tensor, snr: Optional[torch.Tensor], calibration: Optional[dict],
                       bin_edges: torch.Tensor) -> tuple[torch.Tensor, PzSummary]:  # fmt: skip
    """(P(z) [B, K], its ``pz_summary``) with the per-SNR temperatures (plain softmax without ``snr`` or a
    calibration), except z_mode: always that of the plain softmax, so a temperature never moves the point
    estimate (a small T can underflow the peak's neighbours, and the refinement would fall back to a coarser
    parabola)."""
    plain, probs = plain_and_calibrated(logits, snr, calibration, bin_edges)
    summary, _ = pz_summary_and_candidates(probs, bin_edges, mode_probs=None if probs is plain else plain, n=1)
    return probs, summary


def calibrated_probs(logits: torch.Tensor, snr: Optional[torch.Tensor], calibration: Optional[dict],
                     bin_edges: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """softmax(logits / T), float64 [B, K], T of the spectrum's SNR bin (and peak group: then ``bin_edges`` is
    required); plain softmax without ``snr`` or a calibration."""
    logits = logits.double()
    if snr is None or not calibration or "temperatures" not in calibration:
        return torch.softmax(logits, dim=1)
    edges = calibration["snr_edges"].to(logits.device, torch.float64)
    temperatures = calibration["temperatures"].to(logits.device, torch.float64)
    snr = torch.nan_to_num(snr.to(logits.device, torch.float64), nan=0.0)
    k = bin_index(snr, edges)
    if "peak_edges" not in calibration:
        return torch.softmax(logits / temperatures[k][:, None], dim=1)
    if bin_edges is None:
        raise ValueError("this calibration is per SNR bin and P(z) peak share: pass the model's bin_edges")
    group = bin_index(peak_share(torch.softmax(logits, dim=1), bin_edges), calibration["peak_edges"].to(logits.device, torch.float64))
    return torch.softmax(logits / temperatures[group, k][:, None], dim=1)


def plain_and_calibrated(logits: torch.Tensor, snr: Optional[torch.Tensor], calibration: Optional[dict],
                         bin_edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(softmax(logits), ``calibrated_probs(logits, snr, calibration, bin_edges)``), float64 [B, K] each (the same
    tensor twice without a calibration or ``snr``). On the CPU the native op ``zfast.ops.pz_post`` computes both in
    one pass per row; these functions are its spec and its fallback elsewhere."""
    calibrate = snr is not None and bool(calibration) and "temperatures" in calibration
    if logits.dim() == 2 and logits.dtype in (torch.float32, torch.float64) and pz_post.available(logits.device):
        edges = torch.as_tensor(bin_edges, dtype=torch.float64).to(logits.device)
        centres = 0.5 * (edges[1:] + edges[:-1])
        if not calibrate:
            plain, _ = pz_post.pz_calibrate(logits.detach(), centres)
            return plain, plain
        grouped = "peak_edges" in calibration
        plain, calibrated = pz_post.pz_calibrate(
            logits.detach(), centres, snr.to(torch.float64), calibration["snr_edges"].to(torch.float64),
            calibration["temperatures"].to(torch.float64), calibration["peak_edges"].to(torch.float64) if grouped else None,
        )  # fmt: skip
        return plain, calibrated
    plain = torch.softmax(logits.double(), dim=1)
    return plain, calibrated_probs(logits, snr, calibration, bin_edges) if calibrate else plain
