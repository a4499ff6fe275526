"""zfast-train: train a redshift estimator on on-the-fly augmented spectra, evaluate it, checkpoint, resume.

    zfast-train --preset quick                  # the built-in library, a few minutes on 2 CPU cores
    zfast-train --config run.toml --steps 5000  # a TOML file of TrainConfig fields, then CLI overrides
    zfast-train --resume runs/quick             # continue a stopped run exactly where it stopped

Every option is a field of ``zfast.training.TrainConfig`` (``--help`` lists them by group, with their defaults);
docs/training.md explains the run folder, the estimators and the presets.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional

from .. import checkpoint as checkpoints
from ..checkpoint import RunCheckpoint
from ..training.config import PRESETS, TrainConfig, config_from_dict, resolve_config
from ..training.ensemble import build_ensemble
from ..training.evaluation import plots_on_demand
from ..training.loop import run
from . import one_line

# Every TrainConfig field in exactly one group of --help (tests/test_cli.py checks none is missing).
GROUPS = {
    "data": ("library", "instrument", "noise", "snr_min", "snr_max", "mask_prob", "max_gap", "bad_pixel_prob", "bad_pixel_max",
             "distortion", "noise_variation", "sed_mix_prob", "line_contrast", "min_line_snr", "z_min", "z_max", "outside_prob", "weak_line_weight",
             "split_seed", "train_seds", "holdout_sfh"),
    "model": ("model", "log_pixels", "activation", "compile"),
    "estimator": ("estimator", "n_bins", "label_sigma_bins", "label_start_factor", "lambda_js", "lambda_ent", "lambda_ce",
                  "schedule_fraction", "outside_weight"),
    "optimisation": ("batch_size", "steps", "lr", "weight_decay", "ema", "seed", "amp"),
    "run": ("out", "device"),
    "evaluation": ("eval_every", "n_val", "n_test", "n_calibration"),
}
TITLES = {
    "data": "data: the SED library, instrument, noise and augmentation",
    "model": "model: the network",
    "estimator": "estimator: what the network outputs and its loss",
    "optimisation": "optimisation",
    "run": "run: where and on what",
    "evaluation": "evaluation: validation, test and calibration sets",
}


def _add_field(group, f: dataclasses.Field) -> None:
    name = "--" + f.name.replace("_", "-")
    help_text = f.metadata["help"] + f" (default {f.default})"
    if isinstance(f.default, bool):
        group.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        group.add_argument(name, type=type(f.default), default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfast-train", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    run_group = parser.add_argument_group(TITLES["run"])
    run_group.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset (then --config, then options)")
    run_group.add_argument("--config", help="a TOML file of TrainConfig fields")
    run_group.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    evaluation = parser.add_argument_group(TITLES["evaluation"])
    evaluation.add_argument("--ensemble", nargs="+", metavar="CHECKPOINT",
                            help="instead of training: combine these finished runs' checkpoints (binned estimators, same bins; e.g. one "
                                 "recipe with several --seed) into <out>/ensemble.pt, their P(z) averaged and calibrated together on "
                                 "the first run's calibration set; zfast-predict reads it like a checkpoint")
    evaluation.add_argument("--plots", metavar="RUN_DIR", help="on demand, also mid-run: evaluate RUN_DIR's best checkpoint on the test set, rewrite metrics.json and redraw plots/")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    groups = {"run": run_group, "evaluation": evaluation}
    for key, names in GROUPS.items():
        group = groups.get(key) or parser.add_argument_group(TITLES[key])
        for name in names:
            _add_field(group, fields[name])
    return parser


RESUME_OPTIONS = ("device",)  # the settings --resume may change: where it runs, not what it computes


def _resume(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """(config, checkpoint) of the run in ``args.resume``, written into that folder wherever it was first run."""
    given = [f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None and f.name not in RESUME_OPTIONS]
    given += [name for name in ("preset", "config") if getattr(args, name)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"--resume continues a run exactly as it was configured: drop {options} (or start a new run with them)")
    run_dir = Path(args.resume)
    record = checkpoints.read(run_dir / "last.pt")
    if not isinstance(record, RunCheckpoint):
        raise ValueError(f"{run_dir / 'last.pt'}: an ensemble file, not a run to resume")
    config = dataclasses.replace(config_from_dict(record.config), out=str(run_dir))
    if args.device is not None:
        config = dataclasses.replace(config, device=args.device)
    return config, record


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.plots:
            plots_on_demand(Path(args.plots))
        elif args.ensemble:
            build_ensemble(args.ensemble, Path(args.out or "runs/ensemble") / "ensemble.pt", args.device or "auto")
        else:
            if args.resume:
                config, resume = _resume(parser, args)
            else:
                overrides = {name: getattr(args, name, None) for name in (f.name for f in dataclasses.fields(TrainConfig))}
                config, resume = resolve_config(args.preset, args.config, overrides), None
            run(config, resume)
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as error:  # bad settings, files, disk full, device
        raise SystemExit(one_line("zfast-train", error)) from error
    return 0


if __name__ == "__main__":
    sys.exit(main())
