"""Diagnostic figures of a redshift run: z_true vs z_pred, δ histogram, learning curves, P(z) examples, PIT.

Each function writes one small PNG (100 dpi, well under 200 KB) and returns its path as a ``pathlib.Path``.
Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, not through pyplot: no global backend
is switched, nothing is left open, and it works without a display. matplotlib is imported inside the
functions so ``import zfast`` never needs it. Inputs may be tensors (any device) or array-likes.

Conventions as in zfast.metrics: δ = (z_pred − z_true) / (1 + z_true); outlier thresholds |δ| = 0.003 and 0.01;
P(z) piecewise constant within bins (zfast.bins).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .metrics import OUTLIER_THRESHOLDS, pit_histogram

PathLike = Union[str, Path]
DPI = 100
LEARNING_CURVE_COLUMNS = ("train_loss", "val_loss", "val_sigma_nmad", "val_outlier_01")


def _array(values) -> np.ndarray:
    """float64 numpy array (copied to the host for tensors)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _pair(z_true, z_pred):
    z_true, z_pred = _array(z_true).ravel(), _array(z_pred).ravel()
    if z_true.shape != z_pred.shape:
        raise ValueError(f"z_true has {z_true.size} values but z_pred has {z_pred.size}")
    keep = np.isfinite(z_true) & np.isfinite(z_pred)
    return z_true[keep], z_pred[keep]


def _figure(width: float = 5.0, height: float = 4.0, **subplots):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(**subplots)


def _save(figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _no_data(axes, text: str = "no data") -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)


def plot_z_true_vs_pred(z_true, z_pred, path: PathLike, *, gridsize: int = 60) -> Path:
    """2-D density (hexbin, log colour scale) of predicted against true z, with the 1:1 line.

    Args:
        z_true, z_pred (Tensor or array [B]): non-finite pairs are left out.
        path: the PNG to write (parent folders are created).
        gridsize (int): hexagons across the x range (default 60).
    """
    z_true, z_pred = _pair(z_true, z_pred)
    figure, axes = _figure(5.0, 4.5)
    axes.set_xlabel("true z")
    axes.set_ylabel("predicted z")
    if z_true.size == 0:
        _no_data(axes)
    else:
        lo = min(z_true.min(), z_pred.min())
        hi = max(z_true.max(), z_pred.max())
        if hi <= lo:  # all equal: give the axes a width
            lo, hi = lo - 0.05, hi + 0.05
        cells = axes.hexbin(z_true, z_pred, gridsize=gridsize, bins="log", mincnt=1, cmap="viridis",
                            extent=(lo, hi, lo, hi))
        figure.colorbar(cells, ax=axes, label="spectra per cell")
        axes.plot([lo, hi], [lo, hi], color="red", lw=0.8, label="1:1")
        axes.set_xlim(lo, hi)
        axes.set_ylim(lo, hi)
        axes.legend(loc="upper left")
    axes.set_title(f"N = {z_true.size}")
    return _save(figure, path)


def plot_dz_histogram(z_true, z_pred, path: PathLike, *, n_bins: int = 100, limit: float = 0.05) -> Path:
    """Histogram of δ = (z_pred − z_true)/(1 + z_true) on a log count axis, ±0.003 and ±0.01 marked.

    Args:
        z_true, z_pred (Tensor or array [B]): non-finite pairs are left out.
        path: the PNG to write.
        n_bins (int): histogram bins over [−limit, limit] (default 100).
        limit (float): the histogram's half-range in δ (default 0.05); values beyond it are counted in the
            outermost bins so catastrophic outliers stay visible.
    """
    z_true, z_pred = _pair(z_true, z_pred)
    delta = (z_pred - z_true) / (1.0 + z_true)
    figure, axes = _figure(5.0, 3.5)
    axes.set_xlabel(r"$\delta = \Delta z / (1 + z)$")
    axes.set_ylabel("spectra")
    if delta.size == 0:
        _no_data(axes)
    else:
        axes.hist(np.clip(delta, -limit, limit), bins=n_bins, range=(-limit, limit), color="0.35")
        axes.set_yscale("log")
        colours = {"outlier_003": "tab:orange", "outlier_01": "tab:red"}
        for key, threshold in OUTLIER_THRESHOLDS.items():
            fraction = float(np.mean(np.abs(delta) > threshold))
            for sign in (-1, 1):
                axes.axvline(sign * threshold, color=colours[key], lw=0.8, ls="--",
                             label=f"|δ| > {threshold:g}: {100 * fraction:.2f} %" if sign > 0 else None)
        axes.legend(loc="upper right", fontsize="small")
    axes.set_title(f"N = {delta.size}")
    figure.tight_layout()
    return _save(figure, path)


def _read_learning_curves(metrics_csv_path: PathLike):
    """Columns of the CSV as float arrays (empty or unparsable cells become NaN); only the known ones."""
    with open(metrics_csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = rows[0].keys() if rows else []
    columns = {}
    for name in ("epoch", "step", *LEARNING_CURVE_COLUMNS):
        if name in header:
            values = []
            for row in rows:
                try:
                    values.append(float(row[name]))
                except (TypeError, ValueError):
                    values.append(math.nan)
            columns[name] = np.asarray(values, dtype=np.float64)
    return columns


def plot_learning_curves(metrics_csv_path: PathLike, path: PathLike) -> Path:
    """Losses (left) and validation σ_NMAD / outlier fraction (right) against the training step.

    Args:
        metrics_csv_path: a CSV with a header; the columns used are ``step`` (x axis; ``epoch`` if there is no
            step column, else the row number), ``train_loss``, ``val_loss``, ``val_sigma_nmad`` and
            ``val_outlier_01``, whichever exist. Empty cells (e.g. validation only every few steps) are skipped.
        path: the PNG to write.
    """
    columns = _read_learning_curves(metrics_csv_path)
    figure, (loss_axes, metric_axes) = _figure(9.0, 3.5, ncols=2)
    x_name = "step" if "step" in columns else "epoch" if "epoch" in columns else "row"
    n_rows = max((values.size for values in columns.values()), default=0)
    x = columns.get(x_name, np.arange(n_rows, dtype=np.float64))

    def draw(axes, names, log_y):
        drawn = False
        for name in names:
            if name not in columns:
                continue
            keep = np.isfinite(columns[name]) & np.isfinite(x)
            if keep.any():
                axes.plot(x[keep], columns[name][keep], marker="." if keep.sum() < 50 else None, label=name)
                drawn = True
        if drawn:
            if log_y and all(np.nanmin(columns[n]) > 0 for n in names if n in columns and np.isfinite(columns[n]).any()):
                axes.set_yscale("log")
            axes.legend(fontsize="small")
        else:
            _no_data(axes)
        axes.set_xlabel(x_name)

    draw(loss_axes, ("train_loss", "val_loss"), log_y=True)
    loss_axes.set_ylabel("loss")
    draw(metric_axes, ("val_sigma_nmad", "val_outlier_01"), log_y=True)
    metric_axes.set_ylabel("validation metric")
    figure.tight_layout()
    return _save(figure, path)


def plot_pz_examples(probs, bin_edges, z_true, path: PathLike, *, max_panels: int = 16) -> Path:
    """P(z) of a few spectra, one small panel each, as a step function of density with the true z marked.

    Args:
        probs (Tensor or array [K, C]): bin probabilities; rows are normalised here (all-zero rows are drawn
            flat).
        bin_edges (Tensor or array [C+1]): the bins' edges.
        z_true (Tensor or array [K]): true redshifts (red line).
        path: the PNG to write.
        max_panels (int): at most this many rows are drawn (default 16), in 4 columns.

    Each panel is zoomed to the central 99.8 % of its P(z) and the true z, padded by a quarter of that span
    (at least two bins on each side), so narrow P(z) over many bins stay visible.
    """
    probs = _array(probs)
    edges = _array(bin_edges).ravel()
    z_true = _array(z_true).ravel()
    if probs.ndim != 2 or probs.shape[1] != edges.size - 1:
        raise ValueError(f"probs must be [K, C] with C = len(bin_edges) - 1 = {edges.size - 1}, got shape {probs.shape}")
    if z_true.size != probs.shape[0]:
        raise ValueError(f"z_true has {z_true.size} values but probs has K = {probs.shape[0]} rows")
    k = min(probs.shape[0], max_panels)
    n_cols = max(1, min(k, 4))
    n_rows = max(1, math.ceil(k / n_cols))
    figure, axes = _figure(2.4 * n_cols, 1.8 * n_rows, nrows=n_rows, ncols=n_cols, squeeze=False)
    width = np.diff(edges)
    for index, panel in enumerate(axes.flat):
        if index >= k:
            panel.set_axis_off()
            continue
        row = probs[index]
        total = row.sum()
        density = row / total / width if total > 0 else np.zeros_like(row)
        panel.stairs(density, edges, color="tab:blue", fill=True, alpha=0.6)
        panel.axvline(z_true[index], color="red", lw=1.0)
        panel.set_xlim(*_zoom(density * width, edges, z_true[index]))
        panel.set_title(f"z = {z_true[index]:.4f}", fontsize="small")
        panel.tick_params(labelsize="x-small")
        panel.set_yticks([])
    if k == 0:
        _no_data(axes[0, 0])
    figure.tight_layout()
    return _save(figure, path)


def _zoom(mass: np.ndarray, edges: np.ndarray, z: float):
    """x range holding the central 99.8 % of a binned P(z) (mass per bin, summing to 1 or 0) and z, padded."""
    lo, hi = edges[0], edges[-1]
    if mass.sum() > 0:
        cdf = np.cumsum(mass)
        lo = edges[min(np.searchsorted(cdf, 0.001), mass.size - 1)]
        hi = edges[min(np.searchsorted(cdf, 0.999), mass.size - 1) + 1]
    if np.isfinite(z):
        lo, hi = min(lo, z), max(hi, z)
    pad = max(0.25 * (hi - lo), 2 * float(np.median(np.diff(edges))))
    return max(lo - pad, min(edges[0], lo)), min(hi + pad, max(edges[-1], hi))


def plot_pit_histogram(pit, path: PathLike, *, n_bins: int = 10) -> Path:
    """Histogram of PIT values as a density on [0, 1]; a calibrated P(z) gives the dashed line at 1.

    Args:
        pit (Tensor or array [B]): PIT values (zfast.metrics.pit_values); NaN values are dropped.
        path: the PNG to write.
        n_bins (int): bins over [0, 1] (default 10).
    """
    pit = torch.as_tensor(_array(pit).ravel())
    fractions = pit_histogram(pit, n_bins).numpy()
    n = int((~torch.isnan(pit)).sum())
    figure, axes = _figure(4.5, 3.5)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if n == 0:
        _no_data(axes)
    else:
        axes.stairs(fractions * n_bins, edges, fill=True, color="0.5")
    axes.axhline(1.0, color="red", ls="--", lw=0.8, label="calibrated")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("PIT")
    axes.set_ylabel("density")
    axes.set_title(f"N = {n}")
    axes.legend(loc="upper center", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)
