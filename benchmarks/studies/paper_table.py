"""The talk's results table, reproduced and beaten: every estimator and network on held-out SEDs, at several
noise levels, next to the talk's numbers and the information limit (a χ² fit with the true template).

    zfast-sed build --n 10000 --seed 0 --out lib10k.h5
    python benchmarks/studies/paper_table.py --library lib10k.h5 --work runs/table --out benchmarks/results --quick
    python benchmarks/studies/paper_table.py ... --quick --rows all     # plus every study of ours (~5.7 h of training on 2 CPU cores)

By default (``--rows talk``) the rows of the talk's protocol and its two studies: main and size below, with chi2 and
library_fit (with --quick under 3 h on 2 CPU cores); ``--rows all`` adds the rest, ``--only`` names rows.

Protocol (the talk's, with our additions): rest-frame SEDs from the library split by SED (80/10/10, seeded), one
recipe (``--holdout-sfh``, default lognormal star-formation histories) kept out of training altogether and scored
as a second test set; z ~ U[1, 1.8) on the Euclid NISP red grism; training on white noise at a per-pixel SNR
drawn log-uniform in 3-30, with masked gaps (zfast-train's defaults); a separate run trained on Euclid-like noise.
Test conditions: noiseless, white SNR 10, white SNR 3, Euclid-like (AB 19-22.5), and euclid-target: the
Euclid-like spectra the survey targets (Hα + [NII] above its 2e-16 erg s⁻¹ cm⁻² limit). Rows:
* main: {paper-cnn, resnet1d} x {regression, classification 800 bins, classification 80 bins, distribution 800};
* euclid: resnet1d classification 800 trained on Euclid-like noise (and 4x longer, with the outside output);
* ablations of the distribution estimator: the paper's loss from step 0 (no-schedule), JS alone after the
  wide-label start (js-only, λ2 = 0), and an entropy bonus (entropy-bonus, λ2 = -0.05);
* 4x-steps, 8x-steps: the best of these (resnet1d, distribution, JS alone) trained 4x longer (on white and on
  Euclid-like noise) and 8x longer (white; trained with the outside output, zfast-train's default since);
* ensembles: the 4x JS and the 4x 800-class recipes again with seeds 1 and 2, and each three as one
  ``zfast-train --ensemble`` file (<work>/<row>/ensemble.pt: mean P(z), temperatures of its own);
* js-ce: the 4x JS recipe with a cross-entropy term (``--lambda-ce 0.1``);
* size: resnet1d classification 800 trained on 800, 1600, 4000 SEDs (80 % of 1K, 2K, 5K) and on all;
* chi2: the information limit, ``zfast.template_fit.template_fit_redshift`` on the very same test spectra.
* library_fit: the classical peer, ``zfast.template_fit.library_fit_redshift``: each test spectrum fitted with every
  training SED at every z (free amplitude), no network (~2.5 min per 2048 spectra on 2 CPU cores); its 68 / 95 %
  intervals from the tempered χ² (``fit_quantiles``), temperatures per SNR bin and group (``fit_groups``: the share of the
  marginal likelihood in the chosen valley; noiseless: the reduced χ²), times the reduced χ² where the noise is known
  (``fit_scale``), fitted once on 7,168 spectra of the validation SEDs (``library_fit_calibration``, ~9 min on 2 cores).
Every run is a zfast-train run in ``--work/<name>``; a finished run (its metrics.json exists) is reused, so an
interrupted table resumes. ``--quick`` is the CPU setting (900 steps of 256 spectra, as zfast-train's quick
preset); without it, 10,000 steps (a GPU). Results: <out>/paper_table.json, paper_table.md, size_study.png.
On a GPU, ``--parallel 6`` trains six runs at a time (each in its own process; these small networks leave the GPU
mostly idle alone) and ``--deadline S`` stops them after S seconds, resumable, scoring only the finished ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from zfast import checkpoint
from zfast.bins import PzSummary, redshift_bin_edges
from zfast.calibration import CALIBRATION_VERSION, SNR_EDGES, spectrum_snr
from zfast.checkpoint import RunCheckpoint, load_model
from zfast.data import Instrument, NoiseModel
from zfast.data.instrument import EUCLID_LINE_SNR_AT_LIMIT
from zfast.data.sets import load_library
from zfast.devices import pick_device
from zfast.metrics import redshift_metrics
from zfast.models import build_model
from zfast.predict import ensemble_summary
from zfast.template_fit import (
    calibrate_fit_temperatures,
    fit_groups,
    fit_quantiles,
    fit_scale,
    fit_temperature,
    library_fit_redshift,
    template_fit_redshift,
)
from zfast.training import TrainConfig, augmented, build_ensemble, check_config, config_from_dict, make_instrument, run, splits
from zfast.training.evaluation import predict_set, store_predict_stats
from zfast.training.streams import calibration_size

# The talk's results (MSE, MAE, R²): Stivaktakis et al., noiseless, on their data.
TALK = {"regression": (0.03811, 0.16469, 0.28188), "classification-800": (0.00791, 0.02325, 0.85082),
        "classification-80": (0.00364, 0.00968, 0.93128)}  # fmt: skip
CONDITIONS = {"noiseless": NoiseModel("none"), "snr10": NoiseModel("white", snr=(10.0, 10.0)),
              "snr3": NoiseModel("white", snr=(3.0, 3.0)), "euclid": NoiseModel("euclid")}  # fmt: skip
ESTIMATORS = {"regression": dict(estimator="regression"), "classification-800": dict(estimator="classification", n_bins=800),
              "classification-80": dict(estimator="classification", n_bins=80),
              "distribution-800": dict(estimator="distribution", n_bins=800, lambda_ent=0.15)}  # the talk's loss  # fmt: skip
# The subset of the Euclid-like set that the survey targets: Hα + [NII] >= 2e-16 erg s⁻¹ cm⁻² (its line-flux limit),
# i.e. expected line SNR >= 3.5 (Instrument.halpha_snr on the noiseless spectra). Scored as its own column.
EUCLID_TARGET = "euclid-target"
COLUMNS = (*CONDITIONS, EUCLID_TARGET)
SIZES = (800, 1600, 4000)
TEST_SEED = 50_000
# Deep ensembles: each recipe again with seeds 1 and 2, and the three as one row (an ensemble file).
LIBRARY_FIT_ROW = "template fit, all training SEDs (no network)"
ENSEMBLE_OF = ("resnet1d/distribution-800/js-only/4x-steps", "resnet1d/classification-800/4x-steps")
ENSEMBLE_SEEDS = (0, 1, 2)
ENSEMBLES = {f"{recipe}/ensemble-of-{len(ENSEMBLE_SEEDS)}": [recipe] + [f"{recipe}/seed-{s}" for s in ENSEMBLE_SEEDS[1:]]
             for recipe in ENSEMBLE_OF}  # fmt: skip


def runs(args) -> dict:
    """name -> TrainConfig overrides."""
    base = dict(library=args.library, holdout_sfh=args.holdout_sfh, device=args.device, n_val=1024, n_test=256)
    base.update(dict(steps=900, batch_size=256, eval_every=300) if args.quick else dict(steps=10_000, batch_size=256, eval_every=1000))
    table = {}
    for model in ("paper-cnn", "resnet1d"):
        for name, estimator in ESTIMATORS.items():
            table[f"{model}/{name}"] = dict(base, model=model, **estimator)
    table["resnet1d/classification-800/euclid-trained"] = dict(base, model="resnet1d", noise="euclid", **ESTIMATORS["classification-800"])
    # Ablation of the distribution estimator's schedule: the paper's 0.85·JS + 0.15·H against 1.5-bin labels from
    # step 0 (no wide-label start, no entropy ramp).
    # And of its entropy weight after the ramp: JS alone (λ2 = 0) and an entropy bonus (λ2 = -0.05).
    for model in ("paper-cnn", "resnet1d"):
        distribution = dict(base, model=model, **ESTIMATORS["distribution-800"])
        table[f"{model}/distribution-800/no-schedule"] = dict(distribution, label_start_factor=1.0, schedule_fraction=0.0)
        table[f"{model}/distribution-800/js-only"] = dict(distribution, lambda_ent=0.0)
    # The best estimator trained 4x longer: how far do the targets move with steps?
    table["resnet1d/distribution-800/js-only/4x-steps"] = dict(base, model="resnet1d", steps=4 * base["steps"], eval_every=4 * base["eval_every"],
                                                               **dict(ESTIMATORS["distribution-800"], lambda_ent=0.0))  # fmt: skip
    table["resnet1d-wide/distribution-800/js-only/4x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                                    model="resnet1d-wide")  # fmt: skip
    # Training weighted to the hard end: white-noise SNR 3-15 instead of 3-30 (log-uniform).
    table["resnet1d/distribution-800/js-only/4x-steps/snr-3-15"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                                        snr_max=15.0)  # fmt: skip
    # Weak-line SEDs (EW(Hα) < 20 Å, nearly all the outliers) drawn 3x as often in training.
    table["resnet1d/distribution-800/js-only/4x-steps/weak-lines-3x"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                                            weak_line_weight=3.0)  # fmt: skip
    # Finer bins (0.0005): is the noiseless MAE (1.2e-4 at 800 bins) set by the bin width?
    table["resnet1d/distribution-1600/js-only/4x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"], n_bins=1600)
    table["resnet1d/distribution-800/js-only/8x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                               steps=8 * base["steps"], eval_every=8 * base["eval_every"])  # fmt: skip
    # Cross-entropy's P(z) adapts its width to the spectrum (JS against fixed-width labels does not): the 800-bin
    # classifier 4x longer, to compare outlier rates and the held-out recipe's coverage at equal steps.
    table["resnet1d/classification-800/4x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                         **ESTIMATORS["classification-800"])  # fmt: skip
    # JS plus a cross-entropy term (λ = 0.1): JS's outlier rates with cross-entropy's per-spectrum widths?
    table["resnet1d/distribution-800/js-ce/4x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"], lambda_ce=0.1,
                                                                 outside_prob=0.0)  # as the js-only 4x run was trained
    table["resnet1d/distribution-800/js-ce-0.5/4x-steps"] = dict(table["resnet1d/distribution-800/js-ce/4x-steps"], lambda_ce=0.5)
    # The same network on a log-λ resampling of its input (a redshift becomes a shift): does equivariance of the
    # convolutions cut the noisy outliers at equal steps?
    table["resnet1d-log/distribution-800/js-only/4x-steps"] = dict(table["resnet1d/distribution-800/js-only/4x-steps"],
                                                                   model="resnet1d-log", outside_prob=0.0)  # fmt: skip
    # ... plus rest-frame templates slid over its features (ShiftResNet1D: a redshift-equivariant score per z).
    table["resnet1d-shift/distribution-800/js-only/4x-steps"] = dict(table["resnet1d-log/distribution-800/js-only/4x-steps"],
                                                                     model="resnet1d-shift")  # fmt: skip
    # Deep ensembles (ENSEMBLES): the 4x JS recipe (outside output off, as its seed-0 run was trained) and the 4x
    # 800-class recipe again with seeds 1 and 2: are the noiseless errors of one network its own noise?
    for seed in ENSEMBLE_SEEDS[1:]:
        table[f"{ENSEMBLE_OF[0]}/seed-{seed}"] = dict(table[ENSEMBLE_OF[0]], seed=seed, outside_prob=0.0)
        table[f"{ENSEMBLE_OF[1]}/seed-{seed}"] = dict(table[ENSEMBLE_OF[1]], seed=seed)
    table["resnet1d/classification-800/euclid-trained/4x-steps"] = dict(
        table["resnet1d/classification-800/euclid-trained"], steps=4 * base["steps"], eval_every=4 * base["eval_every"])
    # Trained on the survey's target sample only (Hα + [NII] above the line-flux limit), as scored in EUCLID_TARGET.
    table["resnet1d/classification-800/euclid-target-trained"] = dict(
        table["resnet1d/classification-800/euclid-trained"], min_line_snr=EUCLID_LINE_SNR_AT_LIMIT)
    table["resnet1d/classification-800/euclid-target-trained/4x-steps"] = dict(
        table["resnet1d/classification-800/euclid-target-trained"], steps=4 * base["steps"], eval_every=4 * base["eval_every"])
    table["resnet1d/distribution-800/js-only/euclid-trained/4x-steps"] = dict(
        table["resnet1d/distribution-800/js-only/4x-steps"], noise="euclid")
    table["paper-cnn/distribution-800/entropy-bonus"] = dict(base, model="paper-cnn", **dict(ESTIMATORS["distribution-800"], lambda_ent=-0.05))
    for size in SIZES:
        table[f"resnet1d/classification-800/{size}-seds"] = dict(base, model="resnet1d", train_seds=size, **ESTIMATORS["classification-800"])
    if args.steps:
        table = {name: dict(overrides, steps=args.steps, eval_every=args.steps) for name, overrides in table.items()}
    return table


def talk_rows(names) -> list:
    """The rows of the talk's protocol and its two studies (architecture, training-set size): ``--rows talk``."""
    talk = {f"{model}/{name}" for model in ("paper-cnn", "resnet1d") for name in ESTIMATORS}
    talk |= {f"resnet1d/classification-800/{size}-seds" for size in SIZES}
    return [name for name in names if name in talk]


def select_rows(plan: dict, rows: str, only: str) -> dict:
    """The runs one call trains and scores: ``--only`` names them; else ``--rows talk`` (the talk's rows, the
    default: under 3 h on 2 CPU cores with --quick) or ``--rows all`` (with every study of ours, ~5.7 h of training on 2 cores)."""
    if only:
        wanted = only.split(",")
        unknown = [name for name in wanted if name not in plan and name not in ENSEMBLES]
        if unknown:
            raise SystemExit(f"--only: unknown rows {', '.join(unknown)}")
        return {k: v for k, v in plan.items() if k in wanted}
    if rows == "all":
        return plan
    return {k: plan[k] for k in talk_rows(plan)}


def run_folder(name: str) -> str:
    return name.replace("/", "__")


def train_in_parallel(names: list, args, work: Path) -> None:
    """Train ``names`` ``args.parallel`` at a time, each with ``--train-only`` in a child process (its log:
    <work>/<run>.log), until all end or ``args.deadline`` seconds have passed (then SIGTERM: they checkpoint)."""
    import subprocess

    common = [sys.executable, str(Path(__file__).resolve()), "--library", args.library, "--work", str(work),
              "--device", args.device, "--holdout-sfh", args.holdout_sfh, "--train-only"]  # fmt: skip
    common += (["--quick"] if args.quick else []) + (["--steps", str(args.steps)] if args.steps else [])
    deadline = time.monotonic() + args.deadline if args.deadline > 0 else math.inf
    queue, running = [n for n in names if not (work / run_folder(n) / "metrics.json").exists()], {}
    while (queue or running) and time.monotonic() < deadline:
        while queue and len(running) < args.parallel:
            name = queue.pop(0)
            log = open(work / f"{run_folder(name)}.log", "a")  # noqa: SIM115 (closed when the child ends)
            running[name] = (subprocess.Popen([*common, "--only", name], stdout=log, stderr=subprocess.STDOUT), log)
            print(f"[{name}] training (log {log.name})", file=sys.stderr)
        time.sleep(1.0)
        for name, (child, log) in list(running.items()):
            if child.poll() is not None:
                log.close()
                del running[name]
                print(f"[{name}] {'done' if child.returncode == 0 else f'failed (exit {child.returncode})'}", file=sys.stderr)
    for name, (child, log) in running.items():
        child.terminate()
        print(f"[{name}] deadline: stopped (resumable)", file=sys.stderr)
    for name, (child, log) in running.items():
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def stale_settings(run_dir: Path, overrides: dict) -> dict:
    """key -> (trained with, asked for) for the row's own settings that a finished run in ``run_dir`` was not
    trained with (its config.json; where and on what it ran are not compared)."""
    try:
        trained = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {key: (trained.get(key), value) for key, value in overrides.items()
            if key not in ("device", "library", "out") and key in trained and trained[key] != value}


def train_once(name: str, overrides: dict, work: Path) -> Path:
    out = work / run_folder(name)
    if (out / "metrics.json").exists():
        print(f"[{name}] reusing {out}", file=sys.stderr)
        for key, (was, asked) in stale_settings(out, overrides).items():
            print(f"[{name}] warning: trained with {key}={was!r}, the table now asks {asked!r} (delete {out} to retrain)",
                  file=sys.stderr)
        return out
    config = TrainConfig(**dict(overrides, out=str(out)))
    check_config(config)
    started = time.perf_counter()
    state = checkpoint.read(out / "last.pt") if (out / "last.pt").exists() else None
    outcome = run(config, resume=state)
    if "stopped_at" in outcome:
        print(f"[{name}] stopped at step {outcome['stopped_at']} after {time.perf_counter() - started:.0f} s", file=sys.stderr)
    else:
        print(f"[{name}] trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


def test_sets(c: TrainConfig, library, n: int) -> dict:
    """(split, condition) -> (flux, ivar, z, sed_index): the same spectra for every run; plus (split,
    EUCLID_TARGET): the Euclid-like spectra whose Hα + [NII] flux is above the survey's limit."""
    sets = {}
    c = dataclasses.replace(c, min_line_snr=0.0)  # every test set unselected (EUCLID_TARGET selects below)
    split_names = ["test"] + (["holdout"] if c.holdout_sfh else [])
    for split in split_names:
        for condition, noise in CONDITIONS.items():
            instrument = Instrument.preset(c.instrument, noise)
            data = augmented(c, library, instrument, split)
            seed = TEST_SEED + list(CONDITIONS).index(condition)
            if condition != "euclid":
                sets[split, condition] = data.fixed_set(n, seed=seed)
                continue
            *drawn, clean = data.fixed_set(n, seed=seed, clean=True)
            sets[split, condition] = tuple(drawn)
            flux, ivar, z, _ = drawn
            keep = instrument.halpha_snr(clean, ivar, z) >= EUCLID_LINE_SNR_AT_LIMIT
            sets[split, EUCLID_TARGET] = tuple(t[keep] for t in drawn)
    return sets


def load_network(c: TrainConfig, state: RunCheckpoint, device="cpu") -> torch.nn.Module:
    """The network of a run's checkpoint ``state`` (config ``c``), with its weights, on ``device``."""
    instrument = Instrument.preset(c.instrument)
    model = build_model(c.model, instrument.n_pixels, c.estimator, c.n_bins, c.outside_prob > 0, wave_edges=instrument.wave_edges,
                        z_range=(c.z_min, c.z_max))
    model.load_state_dict(state.model)
    return model.to(device)


def score(c: TrainConfig, model, data, edges, calibration) -> dict:
    """``redshift_metrics`` of ``model`` (config ``c``) on a test set; ``calibration``: the run's P(z) temperatures
    (``PredictStats.calibration``) or None."""
    flux, ivar, z, _ = data
    prediction = predict_set(model, c, flux, edges, ivar=ivar, calibration=calibration)
    extra = {}
    if "summary" in prediction:
        s = prediction["summary"]
        extra = dict(lo68=s.lo68.cpu(), hi68=s.hi68.cpu(), lo95=s.lo95.cpu(), hi95=s.hi95.cpu())
    return redshift_metrics(z.double().cpu(), prediction["z"].cpu(), **extra)


def score_ensemble(name: str, members: list, work: Path, sets: dict, device, library) -> dict:
    """Row ``name`` of ENSEMBLES: the finished runs ``members`` used as one ``zfast.checkpoint.EnsembleModel`` (mean P(z), its own
    per-SNR temperatures: an ensemble file, ``zfast-train --ensemble``, in <work>/<name>/) on every test set."""
    path = work / run_folder(name) / "ensemble.pt"
    if not path.exists():
        build_ensemble([work / run_folder(m) / "best.pt" for m in members], path, str(device))
    ensemble = load_model(path, device)
    c = config_from_dict(checkpoint.read(work / run_folder(members[0]) / "best.pt").config)
    entry = {"config": dict(members=members), "step": c.steps, "n_train_seds": int(splits(c, library)["train"].numel()),
             "train_seconds": sum(_train_seconds(work / run_folder(m)) for m in members)}  # fmt: skip
    for (split, condition), data in sets.items():
        entry[f"{split}/{condition}"] = ensemble_metrics(ensemble, data)
    return entry


def _score_peer(results: dict, results_path: Path, key: str, sets: dict, first, fit, needs=()) -> None:
    """results[key]["split/condition"]: metrics of ``fit(instrument, flux, ivar, sed) -> z`` (or a dict of z and
    ``redshift_metrics``'s interval keywords) on each test set not scored yet, or scored without the metrics
    ``needs`` (saved after each, so an interrupted table resumes)."""
    entry = results.setdefault(key, {})
    started = time.perf_counter()
    for (split, condition), (flux, ivar, z, sed) in sets.items():
        done = entry.get(f"{split}/{condition}")
        if done is not None and all(m in done for m in needs):
            continue
        instrument = Instrument.preset(first.instrument, CONDITIONS[condition if condition != EUCLID_TARGET else "euclid"])
        out = fit(instrument, flux, ivar, sed)
        out = out if isinstance(out, dict) else {"z_pred": out}
        entry[f"{split}/{condition}"] = redshift_metrics(z.double().cpu(), **{k: v.cpu() for k, v in out.items()})
        print(f"[{key}] {split}/{condition}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        _write(results_path, results)


LEVELS = (0.16, 0.84, 0.025, 0.975)
CALIBRATION_SEED = 47_000  # the template fit's calibration spectra (validation SEDs), one seed per noise


def library_fit_calibration(results: dict, results_path: Path, first, library, train_seds) -> dict:
    """The template fit's temperatures per SNR bin and group (``zfast.template_fit.calibrate_fit_temperatures``), fitted once per
    json (results["library_fit_calibration"]) on spectra of the *validation* SEDs: 4096 with the training noise
    (white, SNR 3-30), 2048 Euclid-like, 1024 noiseless — as a network's calibration set, plus the Euclid-like ones
    (the fit trains on nothing, so nothing says which noise it will meet)."""
    stored = results.get("library_fit_calibration")
    if stored and "n_groups" in stored:  # else one from before the calibration groups: refit
        return {k: torch.tensor(v) for k, v in stored.items()}
    started = time.perf_counter()
    fits, zs, snrs, groups, scales = [], [], [], [], []
    for i, (noise, n) in enumerate([(make_instrument(first).noise, 4096), (NoiseModel("euclid"), 2048), (NoiseModel("none"), 1024)]):
        instrument = Instrument.preset(first.instrument, noise)
        flux, ivar, z, _ = augmented(first, library, instrument, "val").fixed_set(n, seed=CALIBRATION_SEED + i)
        fits.append(library_fit_redshift(library, instrument, flux, ivar, train_seds, (first.z_min, first.z_max)))
        groups.append(fit_groups(fits[-1]))
        scales.append(fit_scale(fits[-1]))
        zs.append(z)
        snrs.append(spectrum_snr(ivar))
    merged = {"modes": {k: torch.cat([f["modes"][k] for f in fits]) for k in fits[0]["modes"]}}
    calibration = calibrate_fit_temperatures(merged, torch.cat(zs), torch.cat(snrs), torch.cat(groups), torch.cat(scales))
    results["library_fit_calibration"] = {k: v.tolist() for k, v in calibration.items()}
    results.pop("library_fit", None)  # its intervals came from another calibration: score it again
    print(f"[library_fit] calibration on {sum(z.numel() for z in zs)} validation spectra: {time.perf_counter() - started:.0f} s, "
          f"temperatures {[f'{t:.3g}' for t in calibration['temperatures'].reshape(-1).tolist()]}", file=sys.stderr)  # fmt: skip
    _write(results_path, results)
    return calibration


def ensemble_metrics(ensemble, data) -> dict:
    """``score`` for a ``zfast.checkpoint.EnsembleModel``: z the refined mode of the mean softmax, intervals from its P(z)."""
    flux, ivar, z, _ = data
    parts = [ensemble_summary(ensemble, flux[i:i + 1024], spectrum_snr(ivar[i:i + 1024]))[1] for i in range(0, flux.shape[0], 1024)]
    s = PzSummary(*(torch.cat(field).cpu() for field in zip(*parts)))
    return redshift_metrics(z.double().cpu(), s.z_mode, lo68=s.lo68, hi68=s.hi68, lo95=s.lo95, hi95=s.hi95)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", required=True, help="SED library file (zfast-sed build --n 10000)")
    parser.add_argument("--work", default="runs/table", help="folder of the training runs")
    parser.add_argument("--out", default="benchmarks/results", help="folder of the table and figures")
    parser.add_argument("--quick", action="store_true", help="CPU settings: 900 steps per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-test", type=int, default=2048, help="test spectra per condition and test set")
    parser.add_argument("--holdout-sfh", default="lognormal", help="recipe kept out of training ('' for none)")
    parser.add_argument("--rows", choices=("talk", "all"), default="talk",
                        help="talk: the talk's rows and studies (default; --quick: 1 h 18 min measured on 2 CPU cores, the library fit "
                             "included); all: with every study of ours (--quick: ~5.7 h of training on 2 cores)")
    parser.add_argument("--only", default="", help="comma-separated run names (instead of --rows)")
    parser.add_argument("--steps", type=int, default=0, help="override the steps of every run (a smoke test)")
    parser.add_argument("--refit-calibration", action="store_true",
                        help="refit the P(z) temperatures of runs whose SNR bins or fit version differ from zfast.calibration's "
                             "or that were fitted to fewer spectra than zfast-train's calibration set")
    parser.add_argument("--report", action="store_true", help="only rewrite paper_table.md and the figure from the json")
    parser.add_argument("--train-only", action="store_true", help="train the runs (one after another) and stop")
    parser.add_argument("--parallel", type=int, default=1,
                        help="train this many runs at a time, each in a process of its own (small networks leave a GPU "
                             "mostly idle: six shared an H200 at ~30 ms per step each), then score them here")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="with --parallel: seconds after which no run is started and running ones are stopped "
                             "(SIGTERM: zfast-train checkpoints, a later call resumes them); unfinished runs are not scored")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads((Path(args.out) / "paper_table.json").read_text())
        (Path(args.out) / "paper_table.md").write_text(markdown(results))
        size_figure(results, Path(args.out) / "size_study.png")
        return 0
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    every = runs(args)
    plan = select_rows(every, args.rows, args.only)
    if args.train_only:
        for name, overrides in plan.items():
            train_once(name, overrides, work)
        return 0
    if args.parallel > 1:
        train_in_parallel(list(plan), args, work)
        unfinished = [name for name in plan if not (work / run_folder(name) / "metrics.json").exists()]
        if unfinished:
            print(f"not finished, not scored: {', '.join(unfinished)}", file=sys.stderr)
        plan = {k: v for k, v in plan.items() if k not in unfinished}
        if not plan:
            return 1
    results_path = out / "paper_table.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("runs", {})
    device = pick_device(args.device)
    first = TrainConfig(**next(iter(every.values())))  # every row shares its library, split and test sets
    library = load_library(first.library).to(device)
    sets = test_sets(first, library, args.n_test)
    trained_on = results.get("protocol", {}).get("trained_on")  # a table trained elsewhere and scored here keeps it
    results["protocol"] = dict(library=args.library, n_seds=len(library), holdout_sfh=args.holdout_sfh, n_test=args.n_test,
                               quick=args.quick, device=str(device), torch=torch.__version__)  # fmt: skip
    if trained_on:
        results["protocol"]["trained_on"] = trained_on

    results["protocol"]["euclid_target_fraction"] = {
        split: sets[split, EUCLID_TARGET][2].numel() / sets[split, "euclid"][2].numel() for split, c in sets if c == "euclid"}
    z_range = (first.z_min, first.z_max)
    # The information limit: each test spectrum fitted with its own SED.
    _score_peer(results, results_path, "chi2", sets, first,
                lambda instrument, flux, ivar, sed: template_fit_redshift(library, instrument, sed, flux, ivar, z_range))
    # The classical peer: every test spectrum against every *training* SED (of the first run's split) at every z,
    # free amplitude (zfast.template_fit.library_fit_redshift): no network, no test SED among them.
    train_seds = splits(first, library)["train"]
    calibration = library_fit_calibration(results, results_path, first, library, train_seds)

    def library_fit(instrument, flux, ivar, sed):
        fit = library_fit_redshift(library, instrument, flux, ivar, train_seds, z_range)
        temperature = fit_temperature(calibration, spectrum_snr(ivar), fit_groups(fit), fit_scale(fit))
        lo68, hi68, lo95, hi95 = fit_quantiles(fit, temperature, LEVELS).unbind(dim=1)
        return dict(z_pred=fit["z"], lo68=lo68, hi68=hi68, lo95=lo95, hi95=hi95)

    _score_peer(results, results_path, "library_fit", sets, first, library_fit, needs=("coverage68",))

    for name, overrides in plan.items():
        run_dir = train_once(name, overrides, work)
        state = checkpoint.read(run_dir / "best.pt")
        c = config_from_dict(state.config)
        model = load_network(c, state, device)
        edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)
        stats = state.stats.calibration or {}
        stale = ("snr_edges" in stats and tuple(stats["snr_edges"].tolist()) != SNR_EDGES) or (
            int(stats.get("calibration_n", 0)) < calibration_size(c)
            or int(stats.get("calibration_version", 1)) < CALIBRATION_VERSION)
        if c.estimator != "regression" and ("temperatures" not in stats or (stale and args.refit_calibration)):
            # Runs trained before zfast.calibration existed (or, with --refit-calibration, before its SNR bins
            # changed or its calibration set grew): fit (and store) their per-SNR temperatures now, on spectra of
            # their validation SEDs.
            store_predict_stats(c, run_dir, run_dir / "best.pt", state, model, library, make_instrument(c), edges)
        entry = {"config": overrides, "step": state.step, "train_seconds": _train_seconds(run_dir),
                 "n_train_seds": int(splits(c, library)["train"].numel())}  # fmt: skip
        for (split, condition), data in sets.items():
            entry[f"{split}/{condition}"] = score(c, model, data, edges, state.stats.calibration)
        results["runs"][name] = entry
        _write(results_path, results)
    for name, members in ENSEMBLES.items():
        wanted = name in args.only.split(",") if args.only else args.rows == "all"
        if wanted and all((work / run_folder(m) / "metrics.json").exists() for m in members):
            results["runs"][name] = score_ensemble(name, members, work, sets, device, library)
            _write(results_path, results)
    (out / "paper_table.md").write_text(markdown(results))
    size_figure(results, out / "size_study.png")
    print(markdown(results))
    return 0


def _train_seconds(run_dir: Path) -> float:
    try:
        return (run_dir / "metrics.json").stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    except OSError:
        return math.nan


def _write(path: Path, results: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(results, indent=1, default=float))
    temporary.replace(path)


def _fmt(value, digits=5) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def markdown(results: dict) -> str:
    lines = []
    p = results.get("protocol", {})
    lines.append(f"Library {p.get('library')} ({p.get('n_seds')} SEDs), held-out recipe {p.get('holdout_sfh')!r}, "
                 f"{p.get('n_test')} test spectra per condition, {'quick CPU settings' if p.get('quick') else 'full settings'}, "
                 f"scored on {p.get('device')}.\n")  # fmt: skip
    if p.get("trained_on"):
        lines.append(f"Trained on {p['trained_on']}.\n")
    lines.append("### Noiseless test SEDs, next to the talk (MSE / MAE / R²)\n")
    lines.append("| run | MSE | MAE | R² | talk MSE | talk MAE | talk R² | σ_NMAD | η(>0.003) | η(>0.01) | cov68 |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, entry in results.get("runs", {}).items():
        m = entry.get("test/noiseless")
        if not m:
            continue
        talk = next((v for k, v in TALK.items() if name.endswith("/" + k)), (None, None, None))
        lines.append(f"| {name} | {_fmt(m['mse'])} | {_fmt(m['mae'])} | {_fmt(m['r2'], 4)} | {_fmt(talk[0])} | {_fmt(talk[1])} | "
                     f"{_fmt(talk[2])} | {_fmt(m['sigma_nmad'], 3)} | {_fmt(m['outlier_003'], 3)} | {_fmt(m['outlier_01'], 3)} | "
                     f"{_fmt(m.get('coverage68'), 3)} |")  # fmt: skip
    chi2 = results.get("chi2", {})
    library_fit = results.get("library_fit", {})
    for label, entry in ((LIBRARY_FIT_ROW, library_fit), ("χ² with the true template", chi2)):
        if "test/noiseless" in entry:
            m = entry["test/noiseless"]
            lines.append(f"| {label} | {_fmt(m['mse'])} | {_fmt(m['mae'])} | {_fmt(m['r2'], 4)} | | | | "
                         f"{_fmt(m['sigma_nmad'], 3)} | {_fmt(m['outlier_003'], 3)} | {_fmt(m['outlier_01'], 3)} | "
                         f"{_fmt(m.get('coverage68'), 3) if m.get('coverage68') is not None else ''} |")  # fmt: skip
    for split in ("test", "holdout"):
        fraction = p.get("euclid_target_fraction", {}).get(split)
        lines.append(f"\n### σ_NMAD / η(>0.01) / 68 % coverage by noise, {split} SEDs\n")
        if fraction is not None:
            lines.append(f"euclid-target: the {100 * fraction:.0f} % of the Euclid-like spectra with Hα + [NII] >= 2e-16 erg s⁻¹ cm⁻².\n")
        lines.append("| run | " + " | ".join(COLUMNS) + " |")
        lines.append("| --- |" + " ---: |" * len(COLUMNS))
        rows = list(results.get("runs", {}).items()) + [(LIBRARY_FIT_ROW, library_fit), ("χ² with the true template", chi2)]
        for name, entry in rows:
            cells = []
            for condition in COLUMNS:
                m = entry.get(f"{split}/{condition}")
                cells.append("–" if not m else f"{_fmt(m['sigma_nmad'], 2)} / {_fmt(m['outlier_01'], 2)} / {_fmt(m.get('coverage68'), 2)}")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def size_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(((entry["n_train_seds"], entry) for name, entry in results.get("runs", {}).items()
                     if name.startswith("resnet1d/classification-800") and "euclid" not in name), key=lambda p: p[0])  # fmt: skip
    if not points:
        return
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for condition in ("noiseless", "snr10", "snr3"):
        xs = [s for s, _ in points]
        axes[0].plot(xs, [e[f"test/{condition}"]["sigma_nmad"] for _, e in points], "o-", label=condition)
        axes[1].plot(xs, [e[f"test/{condition}"]["outlier_01"] for _, e in points], "o-", label=condition)
    for ax, label in zip(axes, ("σ_NMAD", "η(|Δz|/(1+z) > 0.01)")):
        ax.set_xscale("log")
        ax.set_xticks([s for s, _ in points], [str(s) for s, _ in points])
        ax.minorticks_off()
        ax.set_xlabel("training SEDs (rightmost: all)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
