"""A trained network scored: validation passes, the statistics prediction needs (OOD, P(z) calibration, the
regression scatter) fitted at the end of a run, the test metrics (overall, per noise level and EW(Hα) bin, the
outside-the-range flag rates) and the plots of a run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch

from .. import checkpoint as checkpoints
from .. import plots
from ..bins import redshift_bin_edges, target_to_z
from ..calibration import calibrated_summary, fit_temperatures, spectrum_snr
from ..checkpoint import PredictStats, RedshiftModel, RunCheckpoint
from ..devices import pick_device
from ..files import write_text
from ..flags import z_range_flag
from ..metrics import ew_groups, grouped_metrics, pit_values, redshift_metrics, snr_groups
from ..models import split_outside
from ..ood import fit_ood, ood_features
from ..data.sets import load_library
from .config import SEEDS, TrainConfig, config_from_dict
from .streams import augmented, calibration_set, calibration_size, make_instrument, outside_stream
from .thresholds import fit_deltachi2_min, report_deltachi2_min


@torch.no_grad()
def predict_set(model, c: TrainConfig, flux: torch.Tensor, edges: torch.Tensor, chunk: int = 1024,
                ivar: Optional[torch.Tensor] = None, calibration: Optional[dict] = None) -> dict:  # fmt: skip
    """The network's answers for a fixed set of normalised simulated spectra [N, M], in chunks: ``outputs``
    [N, K], z [N] (and for binned heads ``probs`` [N, K] and its ``summary``; ``p_outside`` with an outside output).
    With ``calibration`` and the spectra's ``ivar``, P(z) gets the per-SNR temperatures of zfast.calibration.
    (``zfast.predict`` is the entry point for real spectra.)"""
    model.eval()
    outputs = torch.cat([model(flux[i:i + chunk]).float() for i in range(0, flux.shape[0], chunk)])
    model.train()
    outputs, outside = split_outside(outputs, c.outside_prob > 0)
    extra = {} if outside is None else {"p_outside": torch.sigmoid(outside.double())}
    if c.estimator == "regression":
        return {"z": target_to_z(outputs[:, 0].double(), edges), "outputs": outputs, **extra}
    probs, summary = calibrated_summary(outputs, None if ivar is None else spectrum_snr(ivar), calibration, edges)
    return {"z": summary.z_mode, "probs": probs, "summary": summary, "outputs": outputs, **extra}


def interval_columns(prediction: dict, edges: torch.Tensor, z_true: torch.Tensor) -> dict:
    """The intervals and PIT of a binned head's ``predict_set`` for ``redshift_metrics``; {} for regression."""
    if "summary" not in prediction:
        return {}
    s = prediction["summary"]
    return dict(lo68=s.lo68.cpu(), hi68=s.hi68.cpu(), lo95=s.lo95.cpu(), hi95=s.hi95.cpu(),
                pit=pit_values(prediction["probs"].cpu(), edges.cpu(), z_true))  # fmt: skip


def evaluate(model, c: TrainConfig, data: tuple, edges: torch.Tensor) -> tuple[dict, dict]:
    """(``redshift_metrics``, ``predict_set``) of a fixed set (flux, ivar, z, sed)."""
    flux, _, z, _ = data
    prediction = predict_set(model, c, flux, edges)
    z_true = z.double().cpu()
    return redshift_metrics(z_true, prediction["z"].cpu(), **interval_columns(prediction, edges, z_true)), prediction


def _features(model, flux: torch.Tensor, chunk: int = 1024) -> list:
    blocks = zip(*(ood_features(model, flux[i:i + chunk])[0] for i in range(0, flux.shape[0], chunk)))
    return [torch.cat(block) for block in blocks]


def fit_predict_stats(c: TrainConfig, model, library, instrument, edges) -> PredictStats:
    """What zfast-predict needs besides the weights: the OOD statistics of the network's layers (training spectra
    for the means and covariances, validation spectra for the scales and the threshold) and, for regression, the
    validation σ_NMAD that becomes z_err, else the per-SNR P(z) temperatures fitted to ``calibration_set`` and,
    with them in place, the model's SMALL_DELTA_CHI2 threshold (``zfast.training.thresholds``), in the same record."""
    n = max(1024, min(4096, c.n_val))
    train_flux = augmented(c, library, instrument, "train").fixed_set(n, seed=SEEDS.ood_train + c.split_seed)[0]
    val_flux, _, val_z, _ = augmented(c, library, instrument, "val").fixed_set(n, seed=SEEDS.ood_validation + c.split_seed)
    model.eval()
    with torch.no_grad():
        train_features, val_features = _features(model, train_flux), _features(model, val_flux)
    model.train()
    stats = PredictStats(ood=fit_ood(train_features, val_features))
    if c.estimator == "regression":
        val = predict_set(model, c, val_flux, edges)
        stats.z_scatter = redshift_metrics(val_z.double().cpu(), val["z"].cpu())["sigma_nmad"]
    else:
        cal_flux, cal_ivar, cal_z = calibration_set(c, library, instrument)
        calibration = fit_temperatures(predict_set(model, c, cal_flux, edges)["outputs"], cal_z, edges, spectrum_snr(cal_ivar))
        calibration["calibration_n"] = torch.tensor(calibration_size(c))
        stats.calibration = calibration
        fitted = RedshiftModel(model, c.estimator, edges, instrument, stats, dataclasses.asdict(c))
        threshold = fit_deltachi2_min(fitted, c, library)
        model.train()
        calibration["deltachi2_min"] = torch.tensor(threshold, dtype=torch.float64)
        report_deltachi2_min(threshold)
    return stats


def store_predict_stats(c: TrainConfig, out: Path, best_path: Path, best: RunCheckpoint, model, library, instrument, edges) -> None:
    """``fit_predict_stats`` of the best checkpoint, saved into it (and into last.pt when it holds the same step)."""
    best.stats = fit_predict_stats(c, model, library, instrument, edges)
    checkpoints.save(best_path, best)
    last_path = out / "last.pt"
    if last_path != best_path and last_path.exists():
        last = checkpoints.read(last_path)
        if last.step == best.step:
            last.stats = best.stats
            checkpoints.save(last_path, last)


def outside_detection(c: TrainConfig, model, library, instrument, edges, in_range: dict) -> dict:
    """Shares of test spectra that zfast-predict would flag as outside the trained range (``z_range_flag``): in
    range (``in_range``: ``predict_set`` of the test set), and below / above the range (fresh test-SED spectra)."""

    def flagged(prediction):
        return z_range_flag(prediction["z"], prediction.get("p_outside"), c.z_min, c.z_max).double().mean().item()

    n = max(256, c.n_test // 2)
    flux, _, z, _ = outside_stream(c, library, instrument, "test", n, 0).fixed_set(n, seed=SEEDS.test_outside + c.split_seed)
    beyond = predict_set(model, c, flux, edges)  # z_mode and p_outside do not depend on the P(z) temperature
    result = {"in_range_flagged": flagged(in_range), "n_in_range": int(in_range["z"].numel())}
    for side, rows in (("below", z < c.z_min), ("above", z >= c.z_max)):
        picked = {k: beyond[k][rows] for k in ("z", "p_outside")}
        result[f"{side}_flagged"] = flagged(picked) if int(rows.sum()) else None
        result[f"n_{side}"] = int(rows.sum())
    return result


def _test_groups(c: TrainConfig, library, ivar: torch.Tensor, sed_index: torch.Tensor) -> dict:
    groups = {}
    ew = library.params.get("ew_halpha")
    if ew is not None:
        groups.update(ew_groups(torch.as_tensor(ew)[sed_index.cpu()]))
    if c.noise != "none":
        snr = ivar.amax(dim=1).sqrt().cpu()  # σ of the normalised continuum-1 spectrum is 1/SNR (gaps have ivar 0)
        groups.update(snr_groups(snr))
    return groups


def _draw_plots(out: Path, z_true, z_pred, prediction: dict, extra: dict, edges) -> None:
    figures = out / "plots"
    figures.mkdir(exist_ok=True)
    plots.plot_z_true_vs_pred(z_true, z_pred, figures / "z_true_vs_pred.png")
    plots.plot_dz_histogram(z_true, z_pred, figures / "dz_histogram.png")
    plots.plot_learning_curves(out / "metrics.csv", figures / "learning_curves.png")
    if "probs" in prediction:
        plots.plot_pz_examples(prediction["probs"][:6].cpu(), edges.cpu(), z_true[:6], figures / "pz_examples.png")
        plots.plot_pit_histogram(extra["pit"], figures / "pit_histogram.png")


def finish(c: TrainConfig, out: Path, model, instrument, library, edges) -> dict:
    """Test metrics of the best checkpoint (its predict stats fitted first), overall and per noise level / EW(Hα)
    bin, written to metrics.json; plots. Returns the grouped metrics."""
    best_path = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    best = checkpoints.read(best_path)
    model.load_state_dict(best.model)
    store_predict_stats(c, out, best_path, best, model, library, instrument, edges)
    flux, ivar, z, sed_index = augmented(c, library, instrument, "test").fixed_set(c.n_test, seed=SEEDS.test + c.split_seed)
    prediction = predict_set(model, c, flux, edges, ivar=ivar, calibration=best.stats.calibration)
    z_true, z_pred = z.double().cpu(), prediction["z"].cpu()
    extra = interval_columns(prediction, edges, z_true)
    results = grouped_metrics(z_true, z_pred, _test_groups(c, library, ivar, sed_index), **extra)
    strict = {group: {k: (v if math.isfinite(v) else None) for k, v in values.items()} for group, values in results.items()}
    record = {"step": best.step, "test": strict}
    if c.outside_prob > 0:
        record["outside"] = outside_detection(c, model, library, instrument, edges, prediction)
        print("flag_z_range (P(outside) > 0.5 or z at an end of the range): " + ", ".join(
            f"{k} {v:.3f}" for k, v in record["outside"].items() if k.endswith("flagged")), file=sys.stderr)  # fmt: skip
    write_text(out / "metrics.json", json.dumps(record, indent=1, allow_nan=False))
    _draw_plots(out, z_true, z_pred, prediction, extra, edges)
    overall = results["all"]
    print(f"test ({overall['n']} spectra, step {best.step}): sigma_NMAD {overall['sigma_nmad']:.5f}  "
          f"eta(>0.003) {overall['outlier_003']:.4f}  eta(>0.01) {overall['outlier_01']:.4f}  MAE {overall['mae']:.5f}  "
          f"R2 {overall['r2']:.4f}  -> {out}", file=sys.stderr)  # fmt: skip
    return results


def run_network(c: TrainConfig, device) -> torch.nn.Module:
    """The untrained network of ``c`` on ``device``: the one a checkpoint of ``c`` rebuilds (``build_network``)."""
    return checkpoints.build_network(dataclasses.asdict(c))[0].to(device)


def plots_on_demand(run_dir: Path) -> dict:
    """``finish`` for an existing run folder (finished or not): test metrics of its best checkpoint, plots."""
    state = checkpoints.read(Path(run_dir) / "last.pt")
    if not isinstance(state, RunCheckpoint):
        raise ValueError(f"{run_dir}/last.pt: an ensemble file, not a run checkpoint")
    c = config_from_dict(state.config)
    device = pick_device(c.device)
    library = load_library(c.library).to(device)
    instrument = make_instrument(c)
    edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)
    return finish(c, Path(run_dir), run_network(c, device), instrument, library, edges)
