"""Outlier rates on large test sets: η(>0.01) at white-noise SNR 10 and 3 on N spectra per condition (default
16,384, eight times the table's 2048), for table checkpoints, next to the true-template χ² on the same spectra.

    python benchmarks/studies/large_test_sets.py --library lib10k.h5 runs/resnet1d__classification-800/best.pt ...

``--templates`` adds the template fit with all training SEDs (no network) on the same spectra; ``--conditions snr10``
restricts the noise levels, ``--profile`` adds the fit by the best SED alone (its valley not marginalised over the
SEDs). Without checkpoints (``--templates``), the split is the table's (paper_table's plan).
``--device cuda`` runs the fits and networks on the GPU; the spectra are drawn on the CPU either way (the same spectra
on every machine), and each fit's wall time is printed.

With 2048 spectra an η of ~1.3 % carries a binomial error of ±0.25 points, as large as the gap to the issue's 1 %
target; here ±0.09. Spectra: the table's protocol (test SEDs and the held-out recipe of the first checkpoint's
split), drawn with seeds 60,000 (SNR 10) and 60,001 (SNR 3). Runs on the CPU: ~8 min for the χ² of 4 × 16,384
spectra on 2 cores, ~30 s per checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_table

import zfast
from zfast.checkpoint import EnsembleModel
from zfast.data import Instrument
from zfast.data.sets import load_library
from zfast.devices import pick_device
from zfast.template_fit import library_fit_redshift, template_fit_redshift
from zfast.training import TrainConfig, augmented, config_from_dict, splits

SEEDS = {"snr10": 60_000, "snr3": 60_001}


def _eta(z_fit: torch.Tensor, z: torch.Tensor) -> float:
    return (((z_fit.double().cpu() - z.double().cpu()).abs() / (1 + z.double().cpu())) > 0.01).double().mean().item()


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _error(eta: float, n: int) -> float:
    return math.sqrt(eta * (1 - eta) / n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="best.pt of table runs (trained on the same library), or ensemble files")
    parser.add_argument("--no-chi2", action="store_true", help="skip the true-template χ² (8 min; same spectra every time)")
    parser.add_argument("--library", required=True)
    parser.add_argument("--n", type=int, default=16_384, help="spectra per condition and test set")
    parser.add_argument("--holdout-sfh", default="lognormal")
    parser.add_argument("--templates", action="store_true",
                        help="also the template fit with all training SEDs (zfast.template_fit.library_fit_redshift; ~14 spectra/s on 2 cores)")
    parser.add_argument("--conditions", default=",".join(SEEDS), help="comma-separated subset of snr10,snr3")
    parser.add_argument("--device", default="cpu", help="where the fits and networks run (spectra are drawn on the CPU)")
    parser.add_argument("--profile", action="store_true",
                        help="with --templates: also the fit that picks the valley by the best SED alone (marginalise=False)")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.templates:
        parser.error("give checkpoints, --templates, or both")
    device = pick_device(args.device)
    library = load_library(args.library)
    models = [zfast.load_model(p, device) for p in args.checkpoints]
    if models:
        config = config_from_dict(models[0].config)  # (an ensemble's: its first member's)
    else:  # the table's split (every row of the plan shares it)
        plan = paper_table.runs(argparse.Namespace(library=args.library, holdout_sfh=args.holdout_sfh, device="cpu", quick=True, steps=0))
        config = TrainConfig(**next(iter(plan.values())))
    first = dataclasses.replace(config, library=args.library, holdout_sfh=args.holdout_sfh,
                                noise="white", min_line_snr=0.0)  # fmt: skip
    sets = {}
    for split in ("test", "holdout") if args.holdout_sfh else ("test",):
        for condition, seed in SEEDS.items():
            if condition not in args.conditions.split(","):
                continue
            instrument = Instrument.preset(first.instrument, paper_table.CONDITIONS[condition])
            sets[split, condition] = tuple(t.to(device) for t in augmented(first, library, instrument, split).fixed_set(args.n, seed=seed))
    train_seds = splits(first, library)["train"]
    library = library.to(device)
    for (split, condition), (flux, ivar, z, sed) in sets.items() if not args.no_chi2 else ():
        instrument = Instrument.preset(first.instrument, paper_table.CONDITIONS[condition])
        started = _clock(device)
        eta = _eta(template_fit_redshift(library, instrument, sed, flux, ivar, (first.z_min, first.z_max)), z)
        print(f"{'χ² with the true template':48s} {split:8s} {condition:6s} η {100 * eta:.2f} ± {100 * _error(eta, args.n):.2f} %"
              f"  ({_clock(device) - started:.1f} s)", flush=True)  # fmt: skip
    for marginalise in (True, False) if args.profile else (True,):
        label = "template fit, all training SEDs" + ("" if marginalise else " (best SED)")
        for (split, condition), (flux, ivar, z, _) in sets.items() if args.templates else ():
            instrument = Instrument.preset(first.instrument, paper_table.CONDITIONS[condition])
            started = _clock(device)
            fit = library_fit_redshift(library, instrument, flux, ivar, train_seds, (first.z_min, first.z_max), marginalise=marginalise)
            eta = _eta(fit["z"], z)
            print(f"{label:48s} {split:8s} {condition:6s} η {100 * eta:.2f} ± {100 * _error(eta, args.n):.2f} %"
                  f"  ({_clock(device) - started:.1f} s)", flush=True)  # fmt: skip
    for path, model in zip(args.checkpoints, models):
        ensemble = isinstance(model, EnsembleModel)
        name = f"{Path(path).parent.name} (ensemble of {len(model.members)})" if ensemble else Path(path).parent.name
        for (split, condition), data in sets.items():
            with torch.no_grad():
                if ensemble:
                    m = paper_table.ensemble_metrics(model, data)
                else:
                    m = paper_table.score(config_from_dict(model.config), model.network, data, model.bin_edges, model.stats.calibration)
            eta = m["outlier_01"]
            print(f"{name:48s} {split:8s} {condition:6s} η {100 * eta:.2f} ± {100 * _error(eta, args.n):.2f} %  "
                  f"σ_NMAD {m['sigma_nmad']:.2e}  68 % coverage {m.get('coverage68', math.nan):.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
