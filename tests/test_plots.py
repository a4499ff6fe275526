"""Diagnostic figures: each writes one small, valid PNG, also for empty or degenerate input."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import zfast
from zfast import plots
from zfast.metrics import pit_values

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 200_000


def assert_png(path, returned):
    assert returned == path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 1000 < len(data) <= MAX_BYTES


def predictions(generator, n=5000):
    z_true = 1.0 + 0.8 * torch.rand(n, dtype=torch.float64, generator=generator)
    z_pred = z_true + 0.002 * (1 + z_true) * torch.randn(n, dtype=torch.float64, generator=generator)
    z_pred[:50] += 0.1  # a few catastrophic outliers
    return z_true, z_pred


def test_z_true_vs_pred(tmp_path, generator):
    z_true, z_pred = predictions(generator)
    path = tmp_path / "sub" / "zz.png"
    assert_png(path, plots.plot_z_true_vs_pred(z_true, z_pred, path))
    # numpy input, a NaN prediction, a single point, all-equal values, nothing.
    z_pred[3] = math.nan
    assert_png(tmp_path / "nan.png", plots.plot_z_true_vs_pred(z_true.numpy(), z_pred.numpy(), tmp_path / "nan.png"))
    assert_png(tmp_path / "one.png", plots.plot_z_true_vs_pred([1.2], [1.3], tmp_path / "one.png"))
    assert_png(tmp_path / "same.png", plots.plot_z_true_vs_pred([1.2] * 3, [1.2] * 3, tmp_path / "same.png"))
    assert_png(tmp_path / "empty.png", plots.plot_z_true_vs_pred([], [], tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="z_pred has 2"):
        plots.plot_z_true_vs_pred([1.0], [1.0, 1.1], tmp_path / "bad.png")


def test_dz_histogram(tmp_path, generator):
    z_true, z_pred = predictions(generator)
    path = tmp_path / "dz.png"
    assert_png(path, plots.plot_dz_histogram(z_true, z_pred, str(path)))
    assert_png(tmp_path / "perfect.png", plots.plot_dz_histogram(z_true, z_true, tmp_path / "perfect.png"))
    assert_png(tmp_path / "empty.png", plots.plot_dz_histogram([], [], tmp_path / "empty.png"))


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in row) for row in rows]) + "\n")
    return path


def test_learning_curves(tmp_path):
    header = ["epoch", "step", "train_loss", "val_loss", "val_sigma_nmad", "val_outlier_01", "lr"]
    rows = []
    for step in range(1, 201):
        validated = step % 20 == 0
        rows.append([step // 50, step, 2.0 / step**0.5, 2.1 / step**0.5 if validated else "",
                     0.01 / step**0.3 if validated else "", 0.05 / step**0.2 if validated else "", 1e-4])
    csv_path = write_csv(tmp_path / "metrics.csv", header, rows)
    assert_png(tmp_path / "curves.png", plots.plot_learning_curves(csv_path, tmp_path / "curves.png"))
    # Only some columns, no step column (epoch on x), a single row, a header with no rows.
    partial = write_csv(tmp_path / "partial.csv", ["epoch", "train_loss"], [[0, 1.0], [1, 0.5]])
    assert_png(tmp_path / "partial.png", plots.plot_learning_curves(partial, tmp_path / "partial.png"))
    single = write_csv(tmp_path / "single.csv", header, [rows[19]])
    assert_png(tmp_path / "single.png", plots.plot_learning_curves(single, tmp_path / "single.png"))
    empty = write_csv(tmp_path / "empty.csv", header, [])
    assert_png(tmp_path / "empty.png", plots.plot_learning_curves(empty, tmp_path / "empty.png"))


def test_pz_examples(tmp_path, generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    z_true = 1.1 + 0.6 * torch.rand(6, dtype=torch.float64, generator=generator)
    probs = zfast.soft_labels(z_true + 0.01, edges, sigma=0.02).float()
    path = tmp_path / "pz.png"
    assert_png(path, plots.plot_pz_examples(probs, edges, z_true, path))
    # One spectrum, an all-zero row, more rows than panels, no rows.
    assert_png(tmp_path / "one.png", plots.plot_pz_examples(probs[:1], edges, z_true[:1], tmp_path / "one.png"))
    zero = probs.clone()
    zero[2] = 0
    assert_png(tmp_path / "zero.png", plots.plot_pz_examples(zero, edges, z_true, tmp_path / "zero.png"))
    many = probs.repeat(10, 1)
    assert_png(tmp_path / "many.png", plots.plot_pz_examples(many, edges, z_true.repeat(10), tmp_path / "many.png"))
    assert_png(tmp_path / "none.png", plots.plot_pz_examples(probs[:0], edges, z_true[:0], tmp_path / "none.png"))
    with pytest.raises(ValueError, match="C = len"):
        plots.plot_pz_examples(probs[:, 1:], edges, z_true, tmp_path / "bad.png")


def test_pit_histogram(tmp_path, generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 80)
    z_true = 1.1 + 0.6 * torch.rand(2000, dtype=torch.float64, generator=generator)
    pit = pit_values(zfast.soft_labels(z_true, edges, sigma=0.01), edges, z_true + 0.005)
    assert_png(tmp_path / "pit.png", plots.plot_pit_histogram(pit, tmp_path / "pit.png"))
    assert_png(tmp_path / "const.png", plots.plot_pit_histogram(np.full(10, 0.5), tmp_path / "const.png"))
    assert_png(tmp_path / "empty.png", plots.plot_pit_histogram([], tmp_path / "empty.png"))


def test_import_zfast_does_not_import_matplotlib():
    code = "import sys, zfast, zfast.metrics, zfast.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
