"""zfast-train: train a redshift estimator on on-the-fly augmented spectra, evaluate it, checkpoint, resume.

    zfast-train --preset quick                  # the built-in library, ~3 minutes on 2 CPU cores
    zfast-train --config run.toml --steps 5000  # a TOML file of TrainConfig fields, then CLI overrides
    zfast-train --resume runs/quick             # continue a stopped run exactly where it stopped

Every option is a field of ``TrainConfig`` (``zfast-train --help`` lists them with their defaults). A run folder
holds: config.json (the resolved configuration), splits.json (the SEDs of each set), last.pt and best.pt
(checkpoints, written atomically; best by validation σ_NMAD), metrics.csv (one row per evaluation),
metrics.json (the final test metrics, overall and per noise level and EW(Hα) bin) and plots/*.png.
Checkpoints are loaded with ``torch.load(weights_only=True)``: they hold tensors and plain values only.
SIGTERM/SIGINT save a checkpoint and exit cleanly.

The three estimators share one definition of the redshift bins (zfast.bins):
* regression: one output, MSE on the scaled z of ``z_to_target``;
* classification: ``n_bins`` logits, cross-entropy on ``z_to_bin`` (the paper: 800 bins of 0.001, or 80);
* distribution: ``n_bins`` logits, ``jsd_entropy`` against Gaussian ``soft_labels``. It starts with JS alone
  against wide labels (4x the final σ of 1.5 bins) and narrows them over the first half of training; the entropy
  weight λ2 ramps in over the same steps, to 0 by default (JS alone). Measured (benchmarks/results/paper_table.md,
  10K-SED library, 900 steps): the paper's 0.85·JS + 0.15·H from step 0 collapses P(z) into a spike away from Q
  (η(>0.01) = 94 %, both networks); with the ramp to λ2 = 0.15 the paper's CNN still collapses its weak-line
  spectra onto one z (η = 29 %, all weak-line, P_max ≈ 1): minimising H rewards a confident spike exactly where
  the spectrum is uninformative, and JS gives a spike away from Q the same loss, ln 2, wherever it sits. JS
  alone (λ2 = 0) gave η = 0.1 % noiseless and 1.9 % at SNR 10 with ResNet1D (4.0 % for 800-bin cross-entropy).
  ``--lambda-ent 0.15`` restores the paper's setting (reached after the ramp).
The point estimate of the binned heads is the mode refined over its neighbours (``pz_summary``), with the 68 %
and 95 % intervals and the PIT from P(z).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .calibration import calibrated_summary, fit_temperatures, spectrum_snr
from .bins import redshift_bin_edges, soft_labels, target_to_z, z_to_bin, z_to_target
from .data import AugmentedSpectra, Instrument, NoiseModel, Perturbations, SEDLibrary, save_splits, split_by_sed
from .models import build_model, split_outside
from .ops.jsd_entropy import jsd_entropy

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Every setting of a run, with its default."""

    library: str = field(default="default", metadata={"help": '"default" (built in) or an SED library file'})
    instrument: str = field(default="euclid-nisp-red", metadata={"help": "instrument preset: euclid-nisp-red, paper"})
    noise: str = field(default="white", metadata={"help": "noise model: none, white, euclid"})
    snr_min: float = field(default=3.0, metadata={"help": "white noise: lowest per-pixel continuum SNR"})
    snr_max: float = field(default=30.0, metadata={"help": "white noise: highest SNR (log-uniform draws)"})
    mask_prob: float = field(default=0.2, metadata={"help": "share of spectra given a masked gap (ivar 0), as real data have"})
    outside_prob: float = field(default=0.1, metadata={"help": "extra share of spectra per batch drawn at z outside [z_min, z_max) (where the library reaches), to train the network's 'outside the trained range' output (0: no such output)"})
    outside_weight: float = field(default=1.0, metadata={"help": "weight of the outside output's cross-entropy in the loss (measured: with 0.1 the quick preset flagged 0.40 instead of 0.89 of the spectra above the range; 1.0 cost a tiny 300-step paper-CNN distribution model 1.4-2.2x in σ_NMAD, ResNet1D classification nothing)"})
    max_gap: int = field(default=32, metadata={"help": "longest masked gap, in pixels"})
    bad_pixel_prob: float = field(default=0.0, metadata={"help": "training spectra: share given scattered bad pixels (ivar 0, pixel by pixel, as real SIR spectra's NOT_USE / ABS_FLUX pixels)"})
    bad_pixel_max: float = field(default=0.15, metadata={"help": "training spectra: highest rate of scattered bad pixels (drawn uniform below it per spectrum)"})
    distortion: float = field(default=0.0, metadata={"help": "training spectra: rms (in ln flux, per Legendre order 1-3) of a smooth multiplicative continuum distortion (flux calibration, dust laws)"})
    noise_variation: float = field(default=0.0, metadata={"help": "training spectra: rms of ln sigma along the spectrum (smooth, orders 1-2): noise that is not flat across the band"})
    min_line_snr: float = field(default=0.0, metadata={"help": "train (and validate) only on spectra whose Hα + [NII] detection SNR is at least this (Euclid convention; 3.5 with --noise euclid is the survey's 2e-16 erg/s/cm² line-flux limit, i.e. the galaxies it targets); 0: all"})
    z_min: float = field(default=1.0, metadata={"help": "lowest redshift drawn (and first bin edge)"})
    z_max: float = field(default=1.8, metadata={"help": "redshifts are drawn below this (last bin edge)"})
    weak_line_weight: float = field(default=1.0, metadata={"help": "how often a training SED with rest-frame EW(Hα) < 20 Å (weak lines: the hard ones) is drawn relative to the others (library params ew_halpha); 1: uniform"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val/test split by SED"})
    train_seds: int = field(default=0, metadata={"help": "train on only this many of the training SEDs, a seeded random subset (0: all)"})
    holdout_sfh: str = field(default="", metadata={"help": "keep every SED of this star-formation-history recipe (library params sfh_type) out of training, as a 'holdout' test set"})
    model: str = field(default="resnet1d", metadata={"help": "network: resnet1d, resnet1d-wide (2x the channels, ~3x the compute), resnet1d-log (resnet1d on a log-λ resampling of the input), resnet1d-shift (resnet1d-log plus rest-frame templates slid over z), paper-cnn"})
    estimator: str = field(default="classification", metadata={"help": "regression, classification, distribution"})
    n_bins: int = field(default=800, metadata={"help": "redshift bins of the binned estimators"})
    label_sigma_bins: float = field(default=1.5, metadata={"help": "distribution: soft-label σ, in bins"})
    label_start_factor: float = field(default=4.0, metadata={"help": "distribution: initial label σ / final σ"})
    lambda_js: float = field(default=0.85, metadata={"help": "distribution: weight of JS(P, Q)"})
    lambda_ent: float = field(default=0.0, metadata={"help": "distribution: weight of H(P) reached after the ramp (the paper: 0.15; it collapses weak-line spectra, see the module docstring)"})
    lambda_ce: float = field(default=0.0, metadata={"help": "distribution: weight of an added cross-entropy against z's bin (a proper scoring rule: P(z) widths then follow each spectrum's uncertainty, which JS against fixed-width labels does not; see README); 0: the JS(+H) loss alone"})
    schedule_fraction: float = field(default=0.5, metadata={"help": "distribution: share of steps for the label/entropy ramp"})
    batch_size: int = field(default=256, metadata={"help": "spectra per step"})
    steps: int = field(default=2000, metadata={"help": "optimisation steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW, one-cycle schedule)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    eval_every: int = field(default=250, metadata={"help": "steps between validation passes (and checkpoints)"})
    n_val: int = field(default=2048, metadata={"help": "fixed validation spectra"})
    n_test: int = field(default=4096, metadata={"help": "fixed test spectra"})
    n_calibration: int = field(default=0, metadata={"help": "spectra of the validation SEDs (plus a quarter as many noiseless) to which the per-SNR P(z) temperatures are fitted at the end of a run; 0: 8 x n_val within 1024-8192 (8192 puts ~1,000 in each SNR bin, so each bin's 68-percent coverage is known to ~1.5 points, against ~3.6 with 1024)"})
    seed: int = field(default=0, metadata={"help": "seed of the model and of the training draws"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    amp: str = field(default="auto", metadata={"help": "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, off"})
    out: str = field(default="runs/zfast", metadata={"help": "run folder"})


PRESETS = {
    # ~3 minutes on 2 CPU cores with the built-in library.
    # Real spectra's scattered bad pixels, weak-line (passive) SEDs drawn 3x as often: docs/real_galaxies.md.
    "quick": dict(model="resnet1d", estimator="classification", n_bins=800, steps=900, eval_every=150, n_val=1024,
                  n_test=2048, bad_pixel_prob=0.5, bad_pixel_max=0.15, weak_line_weight=3.0, out="runs/quick"),  # fmt: skip
    # The talk's protocol: a 10K library from `zfast-sed build --n 10000`, the paper's CNN.
    "paper": dict(library="lib.h5", model="paper-cnn", estimator="classification", n_bins=800, steps=20000,
                  batch_size=32, lr=1e-4, eval_every=1000, out="runs/paper"),  # fmt: skip
}


# --- configuration ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfast-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset (then --config, then options)")
    parser.add_argument("--config", help="a TOML file of TrainConfig fields")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--ensemble", nargs="+", metavar="CHECKPOINT",
                        help="instead of training: combine these finished runs' checkpoints (binned estimators, same bins; e.g. one "
                             "recipe with several --seed) into <out>/ensemble.pt, their P(z) averaged and calibrated together on "
                             "the first run's calibration set; zfast-predict reads it like a checkpoint")
    parser.add_argument("--plots", metavar="RUN_DIR", help="on demand, also mid-run: evaluate RUN_DIR's best checkpoint on the test set, rewrite metrics.json and redraw plots/")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool" or isinstance(f.default, bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"] + f" (default {f.default})")
        else:
            parser.add_argument(name, type=type(f.default), default=None, help=f.metadata["help"] + f" (default {f.default})")
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    values = dataclasses.asdict(TrainConfig())
    if args.preset:
        values.update(PRESETS[args.preset])
    if args.config:
        try:
            import tomllib
        except ImportError as error:  # Python < 3.11
            raise SystemExit("--config needs Python >= 3.11 (tomllib)") from error
        with open(args.config, "rb") as stream:
            from_file = tomllib.load(stream)
        unknown = sorted(set(from_file) - set(values))
        if unknown:
            raise SystemExit(f"{args.config}: unknown settings {unknown}; see zfast-train --help")
        values.update(from_file)
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    config = TrainConfig(**values)
    check_config(config)
    return config


def check_config(c: TrainConfig) -> None:
    problems = []
    if c.estimator not in ("regression", "classification", "distribution"):
        problems.append(f"estimator {c.estimator!r}")
    if c.noise not in ("none", "white", "euclid"):
        problems.append(f"noise {c.noise!r}")
    for name in ("steps", "batch_size", "eval_every", "n_val", "n_test", "n_bins"):
        if getattr(c, name) < 1:
            problems.append(f"{name} must be >= 1")
    for name in ("train_seds", "n_calibration"):
        if getattr(c, name) < 0:
            problems.append(f"{name} must be >= 0")
    if not (math.isfinite(c.lambda_ce) and c.lambda_ce >= 0):
        problems.append("lambda_ce must be >= 0")
    if not (math.isfinite(c.weak_line_weight) and c.weak_line_weight > 0):
        problems.append("weak_line_weight must be > 0")
    if not (0.0 <= c.mask_prob <= 1.0) or c.max_gap < 1:
        problems.append("need 0 <= mask_prob <= 1 and max_gap >= 1")
    try:
        Perturbations(c.bad_pixel_prob, c.bad_pixel_max, c.distortion, c.noise_variation)
    except ValueError as error:
        problems.append(str(error))
    if not (math.isfinite(c.min_line_snr) and c.min_line_snr >= 0):
        problems.append("min_line_snr must be >= 0")
    if not (0 <= c.z_min < c.z_max):
        problems.append("need 0 <= z_min < z_max")
    if c.amp not in ("auto", "bf16", "off"):
        problems.append(f"amp {c.amp!r} (auto, bf16, off)")
    if problems:
        raise SystemExit("bad configuration: " + "; ".join(problems))


# --- pieces -----------------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_library(name: str) -> SEDLibrary:
    return SEDLibrary.default() if name == "default" else SEDLibrary.load(name)


def make_instrument(c: TrainConfig) -> Instrument:
    return Instrument.preset(c.instrument, NoiseModel(c.noise, snr=(c.snr_min, c.snr_max)))


def run_splits(c: TrainConfig, library: SEDLibrary) -> dict:
    """{"train", "val", "test"[, "holdout"]} → SED indices: ``split_by_sed`` of the library; with ``holdout_sfh``,
    the SEDs of that recipe are taken out of all three and form "holdout"; with ``train_seds``, a seeded random
    subset of the training SEDs (val and test unchanged, so runs of different sizes share their test set)."""
    splits = split_by_sed(len(library), seed=c.split_seed)
    if c.holdout_sfh:
        sfh = library.params.get("sfh_type")
        if sfh is None:
            raise ValueError("holdout_sfh needs a library with an sfh_type parameter (zfast-sed build libraries have one)")
        held = torch.tensor([str(t) == c.holdout_sfh for t in sfh], dtype=torch.bool)
        if not bool(held.any()):
            raise ValueError(f"holdout_sfh {c.holdout_sfh!r}: no such recipe in the library ({sorted(set(map(str, sfh)))})")
        splits = {name: part[~held[part]] for name, part in splits.items()}
        splits["holdout"] = torch.nonzero(held).flatten()
    if c.train_seds:
        train = splits["train"]
        if c.train_seds > train.numel():
            raise ValueError(f"train_seds = {c.train_seds} but the training split has {train.numel()} SEDs")
        pick = torch.randperm(train.numel(), generator=torch.Generator().manual_seed(c.split_seed + 1))[: c.train_seds]
        splits["train"] = train[pick].sort().values
    return splits


def augmented(c: TrainConfig, library: SEDLibrary, instrument: Instrument, split: str, seed: int = 0) -> AugmentedSpectra:
    """The on-the-fly spectra of one split of the library (``run_splits``), as configured (``weak_line_weight``
    applies to the training split only: validation and test sets stay uniform over their SEDs)."""
    weights = None
    if split == "train" and c.weak_line_weight != 1.0:
        ew = library.params.get("ew_halpha")
        if ew is None:
            raise SystemExit("weak_line_weight needs a library with EW(Hα) per SED (params ew_halpha, zfast-sed build)")
        ew = torch.as_tensor(ew, dtype=torch.float64)
        weights = torch.where(ew < 20.0, c.weak_line_weight, 1.0)
    return AugmentedSpectra(library, instrument, (c.z_min, c.z_max), run_splits(c, library)[split], c.batch_size, seed,
                            mask_prob=c.mask_prob, max_gap=c.max_gap, min_line_snr=c.min_line_snr, sed_weights=weights,
                            perturbations=perturbations(c, split))  # fmt: skip


def perturbations(c: TrainConfig, split: str) -> Perturbations:
    """The realism perturbations of the training split (validation and test sets stay the plain simulation, so
    their metrics compare across runs); none for other splits."""
    if split != "train":
        return Perturbations()
    return Perturbations(c.bad_pixel_prob, c.bad_pixel_max, c.distortion, c.noise_variation if c.noise != "none" else 0.0)


OUTSIDE_MARGIN = 1e-6  # keeps the outside draws strictly inside the library's coverage


def outside_range(c: TrainConfig, library: SEDLibrary, instrument: Instrument) -> tuple:
    """z_prior (edges, weights) of the outside draws: the redshifts the library can put on the instrument's
    pixels, minus [z_min, z_max); half below and half above the range (where both exist), uniform within each
    side. (Measured, quick preset: weighting the sides by width, 0.21 below vs 0.65 above on NISP, flagged 60 %
    below / 93 % above; equal halves 74 % / 89 %, in-range false flags 1.0-1.2 % either way.)"""
    lo, hi = library.z_range(instrument.wave_edges)
    lo, hi = max(0.0, lo) + OUTSIDE_MARGIN, hi - OUTSIDE_MARGIN
    below, above = max(0.0, c.z_min - lo), max(0.0, hi - c.z_max)
    if below + above <= 0:
        raise ValueError(f"outside_prob > 0 but the library serves no redshift outside [{c.z_min}, {c.z_max}) "
                         f"on this instrument (it serves {lo:.4g}-{hi:.4g}): set --outside-prob 0")  # fmt: skip
    edges, weights = [c.z_min, c.z_max], [0.0]
    if below > 0:
        edges, weights = [lo] + edges, [1.0] + weights
    if above > 0:
        edges, weights = edges + [hi], weights + [1.0]
    return torch.tensor(edges, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)


def outside_stream(c: TrainConfig, library: SEDLibrary, instrument: Instrument, split: str, n: int, seed: int) -> AugmentedSpectra:
    """Spectra of ``split`` at redshifts outside the trained range (``outside_range``), ``n`` per batch."""
    edges, weights = outside_range(c, library, instrument)
    return AugmentedSpectra(library, instrument, (float(edges[0]), float(edges[-1])), run_splits(c, library)[split], n, seed,
                            z_prior=(edges, weights), mask_prob=c.mask_prob, max_gap=c.max_gap,
                            perturbations=perturbations(c, split))  # fmt: skip


def n_outside(c: TrainConfig) -> int:
    """Outside spectra added to each batch of ``batch_size`` in-range ones."""
    return max(1, round(c.outside_prob * c.batch_size)) if c.outside_prob > 0 else 0


def split_head(c: TrainConfig, output: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(the estimator's outputs [B, K], the outside logit [B] or None)."""
    return split_outside(output, c.outside_prob > 0)


def config_from_state(state: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint; settings added since it was written take the value that reproduces it
    (no outside output before outside_prob existed, no perturbations before they existed)."""
    return TrainConfig(**{"outside_prob": 0.0, "bad_pixel_prob": 0.0, "distortion": 0.0, "noise_variation": 0.0,
                          **state["config"]})  # fmt: skip


def distribution_schedule(c: TrainConfig, step: int) -> tuple[float, float]:
    """(soft-label σ in z, entropy weight) at ``step``: wide labels and JS alone first, then geometric narrowing
    of σ and a linear ramp of λ_ent over ``schedule_fraction`` of the steps."""
    progress = min(1.0, step / max(1.0, c.schedule_fraction * c.steps))
    width = (c.z_max - c.z_min) / c.n_bins
    sigma = c.label_sigma_bins * width * c.label_start_factor ** (1.0 - progress)
    return sigma, c.lambda_ent * progress


def training_loss(c: TrainConfig, output: torch.Tensor, z: torch.Tensor, edges: torch.Tensor, step: int,
                  n_beyond: int = 0) -> torch.Tensor:  # fmt: skip
    """The estimator's loss on the first B - ``n_beyond`` rows of ``output`` (z [B - n_beyond] in range) plus,
    with an outside output, the binary cross-entropy of its logit against "row is one of the last n_beyond"."""
    output, outside = split_head(c, output)
    inside = output.shape[0] - n_beyond
    loss = _estimator_loss(c, output[:inside], z, edges, step)
    if outside is not None:
        target = (torch.arange(outside.shape[0], device=outside.device) >= inside).to(outside.dtype)
        loss = loss + c.outside_weight * torch.nn.functional.binary_cross_entropy_with_logits(outside, target)
    return loss


def _estimator_loss(c: TrainConfig, output: torch.Tensor, z: torch.Tensor, edges: torch.Tensor, step: int) -> torch.Tensor:
    if c.estimator == "regression":
        return torch.nn.functional.mse_loss(output[:, 0], z_to_target(z, edges).to(output.dtype))
    if c.estimator == "classification":
        return torch.nn.functional.cross_entropy(output, z_to_bin(z, edges))
    sigma, lambda_ent = distribution_schedule(c, step)
    target = soft_labels(z, edges, sigma).to(output.dtype)
    loss = jsd_entropy(output, target, c.lambda_js, lambda_ent)
    if c.lambda_ce:
        loss = loss + c.lambda_ce * torch.nn.functional.cross_entropy(output, z_to_bin(z, edges))
    return loss


@torch.no_grad()
def predict(model, c: TrainConfig, flux: torch.Tensor, edges: torch.Tensor, chunk: int = 1024,
            ivar: Optional[torch.Tensor] = None, calibration: Optional[dict] = None) -> dict:  # fmt: skip
    """z (and for binned heads P(z), intervals) for a fixed set, in chunks; with ``calibration`` (and the
    spectra's ``ivar``), P(z) gets the per-SNR temperatures of zfast.calibration."""
    model.eval()
    outputs = torch.cat([model(flux[i:i + chunk]).float() for i in range(0, flux.shape[0], chunk)])
    model.train()
    outputs, outside = split_head(c, outputs)
    extra = {} if outside is None else {"p_outside": torch.sigmoid(outside.double())}
    if c.estimator == "regression":
        return {"z": target_to_z(outputs[:, 0].double(), edges), "outputs": outputs, **extra}
    probs, summary = calibrated_summary(outputs, None if ivar is None else spectrum_snr(ivar), calibration, edges)
    return {"z": summary.z_mode, "probs": probs, "summary": summary, "outputs": outputs, **extra}


def evaluate(model, c: TrainConfig, data: tuple, edges: torch.Tensor) -> tuple[dict, dict]:
    from .metrics import pit_values, redshift_metrics

    flux, _, z, _ = data
    prediction = predict(model, c, flux, edges)
    z_true = z.double().cpu()
    extra = {}
    if "summary" in prediction:
        s = prediction["summary"]
        extra = dict(lo68=s.lo68.cpu(), hi68=s.hi68.cpu(), lo95=s.lo95.cpu(), hi95=s.hi95.cpu(),
                     pit=pit_values(prediction["probs"].cpu(), edges.cpu(), z_true))  # fmt: skip
    return redshift_metrics(z_true, prediction["z"].cpu(), **extra), prediction


# --- checkpoints ------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a temporary file beside ``path``, fsync, then rename (a kill never leaves half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as stream:
        torch.save(state, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated or not a checkpoint
        raise SystemExit(f"{path}: not a readable zfast checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"{path}: not a zfast checkpoint of version {CHECKPOINT_VERSION}")
    return state


# --- the run ----------------------------------------------------------------------------------------------
class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def setup_distributed(c: TrainConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on GPUs (one per
    local rank), gloo on the CPU."""
    device = pick_device(c.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device, 0, 1
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), world


def _gather_rows(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """[world, ...]: ``tensor`` of every rank (CPU byte tensors such as RNG states), stacked."""
    if world == 1:
        return tensor[None]
    import torch.distributed as dist

    on_gpu = dist.get_backend() == "nccl"  # NCCL moves CUDA tensors only
    local = tensor.cuda() if on_gpu else tensor
    rows = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(rows, local)
    return torch.stack(rows).cpu()


def run(c: TrainConfig, resume_state: Optional[dict] = None) -> dict:
    device, rank, world = setup_distributed(c)
    if world == 1:
        return _run(c, resume_state, device, rank, world)
    import torch.distributed as dist

    try:
        result = _run(c, resume_state, device, rank, world)
        # Rank 0 evaluates the test set and draws the plots while the others wait here: all ranks then leave
        # together (a rank that tore its process group down early aborted at exit, seen under gloo).
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _run(c: TrainConfig, resume_state: Optional[dict], device: torch.device, rank: int, world: int) -> dict:
    main_rank = rank == 0
    out = Path(c.out)
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dict(dataclasses.asdict(c), world_size=world), indent=1))
    torch.manual_seed(c.seed)

    library = load_library(c.library).to(device)
    instrument = make_instrument(c)
    splits = run_splits(c, library)
    if main_rank:
        save_splits(out / "splits.json", splits, n_seds=len(library), seed=c.split_seed, library=c.library)
    # Each rank draws its own stream, seeded from (seed, rank).
    train = augmented(c, library, instrument, "train", c.seed + 7919 * rank)
    beyond = n_outside(c)
    outside = outside_stream(c, library, instrument, "train", beyond, c.seed + 7919 * rank + 1) if beyond else None
    val = augmented(c, library, instrument, "val").fixed_set(c.n_val, seed=10_000 + c.split_seed)
    edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)

    model = build_model(c.model, instrument.n_pixels, c.estimator, c.n_bins, outside=c.outside_prob > 0,
                        wave_edges=instrument.wave_edges, z_range=(c.z_min, c.z_max)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=c.lr, total_steps=c.steps, pct_start=0.1)
    step, best = 0, math.inf
    if resume_state is not None:
        generators = resume_state["augment_generators"]
        if generators.shape[0] != world:
            raise ValueError(f"the checkpoint was written by {generators.shape[0]} processes; resume it with as many, not {world}")
        model.load_state_dict(resume_state["model"])
        optimiser.load_state_dict(resume_state["optimiser"])
        scheduler.load_state_dict(resume_state["scheduler"])
        train.load_state_dict({"generator": generators[rank]})
        if outside is not None:
            outside.load_state_dict({"generator": resume_state["outside_generators"][rank]})
        torch.set_rng_state(resume_state["torch_rngs"][rank])
        if device.type == "cuda" and "cuda_rngs" in resume_state:
            torch.cuda.set_rng_state(resume_state["cuda_rngs"][rank], device)
        step, best = int(resume_state["step"]), float(resume_state["best"])
    forward = model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if c.compile:
        forward = torch.compile(forward)

    def state() -> dict:
        """The checkpoint (every rank must call it: the RNG states of all ranks are gathered)."""
        payload = dict(version=CHECKPOINT_VERSION, config=dataclasses.asdict(c), model=model.state_dict(),
                       optimiser=optimiser.state_dict(), scheduler=scheduler.state_dict(), step=step, best=best,
                       augment_generators=_gather_rows(train.state_dict()["generator"], world),
                       torch_rngs=_gather_rows(torch.get_rng_state(), world))  # fmt: skip
        if outside is not None:
            payload["outside_generators"] = _gather_rows(outside.state_dict()["generator"], world)
        if device.type == "cuda":
            payload["cuda_rngs"] = _gather_rows(torch.cuda.get_rng_state(device), world)
        return payload

    def checkpoint(*names: str) -> None:
        payload = state()
        if main_rank:
            for name in names:
                save_checkpoint(out / name, payload)

    mixed_precision = c.amp == "bf16" or (c.amp == "auto" and device.type == "cuda")
    metrics_csv = out / "metrics.csv"
    columns = ["step", "train_loss", "val_loss", "val_mae", "val_sigma_nmad", "val_outlier_003", "val_outlier_01", "lr"]
    if main_rank and not metrics_csv.exists():
        metrics_csv.write_text(",".join(columns) + "\n")
    stop = StopRequested()
    interactive = main_rank and sys.stderr.isatty()
    running_loss, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
    try:
        while step < c.steps and not _any_rank(stop.requested, world):
            flux, _, z, _ = next(train)
            if outside is not None:
                flux = torch.cat([flux, next(outside)[0]])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
                output = forward(flux)
            loss = training_loss(c, output.float(), z, edges, step, beyond)  # the loss in float32
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            running_loss += loss.detach()  # no host sync per step
            seen += 1
            if interactive and step % 10 == 0:
                rate = seen * c.batch_size * world / (time.perf_counter() - started)
                print(f"\rstep {step}/{c.steps}  loss {running_loss.item() / seen:.4f}  {rate:,.0f} spectra/s", end="", file=sys.stderr)
            if step % c.eval_every == 0 or step == c.steps:
                train_loss = _mean_over_ranks(running_loss, world).item() / seen
                metrics, _ = evaluate(model, c, val, edges)  # identical weights and set on every rank
                with torch.no_grad():
                    model.eval()
                    val_loss = training_loss(c, model(val[0]), val[2], edges, step).item()
                    model.train()
                row = [step, train_loss, val_loss, metrics["mae"], metrics["sigma_nmad"],
                       metrics["outlier_003"], metrics["outlier_01"], scheduler.get_last_lr()[0]]  # fmt: skip
                if main_rank:
                    with open(metrics_csv, "a", newline="") as stream:
                        csv.writer(stream).writerow(row)
                    line = "  ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(columns, row))
                    print(("\n" if interactive else "") + line, file=sys.stderr)
                running_loss, seen, started = torch.zeros((), device=device), 0, time.perf_counter()
                if metrics["sigma_nmad"] < best:
                    best = metrics["sigma_nmad"]
                    checkpoint("best.pt", "last.pt")
                else:
                    checkpoint("last.pt")
        checkpoint("last.pt")
    finally:
        stop.restore()
    if step < c.steps:
        if main_rank:
            print(f"\nstopped at step {step}: checkpoint saved to {out / 'last.pt'}", file=sys.stderr)
        return {"stopped_at": step}
    if not main_rank:
        return {}
    return finish(c, out, model, instrument, library, edges)


def _any_rank(flag: bool, world: int) -> bool:
    """Whether any rank asked to stop (so that all stop at the same step and no collective hangs)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world


def calibration_size(c: TrainConfig) -> int:
    """Noisy spectra the P(z) temperatures are fitted to (``n_calibration``, or 8 x n_val within 1024-8192)."""
    return c.n_calibration if c.n_calibration > 0 else max(1024, min(8192, 8 * c.n_val))


def calibration_set(c: TrainConfig, library, instrument: Instrument) -> tuple:
    """(flux, ivar, z) the P(z) temperatures are fitted to: ``calibration_size(c)`` spectra of the validation SEDs with
    the training noise (seed 46,000 + split_seed) and a quarter as many noiseless ones (seed 45,000 + split_seed)."""
    n_cal = calibration_size(c)
    flux, ivar, z, _ = augmented(c, library, instrument, "val").fixed_set(n_cal, seed=46_000 + c.split_seed)
    quiet = Instrument(instrument.name, instrument.wave_edges, instrument.lsf_fwhm, NoiseModel("none"))
    clean_flux, clean_ivar, clean_z, _ = augmented(c, library, quiet, "val").fixed_set(n_cal // 4, seed=45_000 + c.split_seed)
    return torch.cat([flux, clean_flux]), torch.cat([ivar, clean_ivar]), torch.cat([z, clean_z])


def store_predict_stats(c: TrainConfig, out: Path, best_path: Path, best: dict, model, library, instrument, edges) -> None:
    """What zfast-predict needs besides the weights, added to the best checkpoint (and to last.pt when it holds the
    same weights): the OOD statistics of the network's layers (zfast.inference.fit_ood: training spectra for
    the means and covariances, validation spectra for the scales and the threshold) and, for regression, the
    validation σ_NMAD that becomes z_err."""
    from .inference import fit_ood, ood_features
    from .metrics import redshift_metrics

    n = max(1024, min(4096, c.n_val))
    train_flux = augmented(c, library, instrument, "train").fixed_set(n, seed=30_000 + c.split_seed)[0]
    val_flux, _, val_z, _ = augmented(c, library, instrument, "val").fixed_set(n, seed=40_000 + c.split_seed)
    model.eval()
    with torch.no_grad():
        train_features = [torch.cat(blocks) for blocks in zip(*(ood_features(model, train_flux[i:i + 1024])[0]
                                                                for i in range(0, n, 1024)))]  # fmt: skip
        val_features = [torch.cat(blocks) for blocks in zip(*(ood_features(model, val_flux[i:i + 1024])[0]
                                                              for i in range(0, n, 1024)))]  # fmt: skip
    model.train()
    stats = fit_ood(train_features, val_features)
    if c.estimator == "regression":
        val = predict(model, c, val_flux, edges)
        stats["z_scatter"] = redshift_metrics(val_z.double().cpu(), val["z"].cpu())["sigma_nmad"]
    else:
        # Per-SNR temperatures (zfast.calibration) from spectra of the validation SEDs with the training noise, plus
        # noiseless ones (top SNR bin); a set of their own, larger than the validation set (n_calibration).
        cal_flux, cal_ivar, cal_z = calibration_set(c, library, instrument)
        stats.update(fit_temperatures(predict(model, c, cal_flux, edges)["outputs"], cal_z, edges, spectrum_snr(cal_ivar)))
        stats["calibration_n"] = torch.tensor(calibration_size(c))
    best["predict_stats"] = stats
    save_checkpoint(best_path, best)
    last_path = out / "last.pt"
    if last_path != best_path and last_path.exists():
        last = load_checkpoint(last_path)
        if last["step"] == best["step"]:
            last["predict_stats"] = stats
            save_checkpoint(last_path, last)


def finish(c: TrainConfig, out: Path, model, instrument, library, edges) -> dict:
    """Test metrics with the best checkpoint, overall and per noise level / EW(Hα) bin; plots."""
    from . import plots
    from .metrics import grouped_metrics, ew_groups, pit_values, snr_groups

    best_path = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    best = load_checkpoint(best_path)
    model.load_state_dict(best["model"])
    store_predict_stats(c, out, best_path, best, model, library, instrument, edges)
    data = augmented(c, library, instrument, "test")
    flux, ivar, z, sed_index = data.fixed_set(c.n_test, seed=20_000 + c.split_seed)
    prediction = predict(model, c, flux, edges, ivar=ivar, calibration=best.get("predict_stats"))
    z_true, z_pred = z.double().cpu(), prediction["z"].cpu()
    groups = {}
    ew = library.params.get("ew_halpha")
    if ew is not None:
        groups.update(ew_groups(torch.as_tensor(ew)[sed_index.cpu()]))
    if c.noise != "none":
        snr = ivar.amax(dim=1).sqrt().cpu()  # σ of the normalised continuum-1 spectrum is 1/SNR (gaps have ivar 0)
        groups.update(snr_groups(snr))
    extra = {}
    if "summary" in prediction:
        s = prediction["summary"]
        extra = dict(lo68=s.lo68.cpu(), hi68=s.hi68.cpu(), lo95=s.lo95.cpu(), hi95=s.hi95.cpu(),
                     pit=pit_values(prediction["probs"].cpu(), edges.cpu(), z_true))  # fmt: skip
    results = grouped_metrics(z_true, z_pred, groups, **extra)
    strict = {group: {k: (v if math.isfinite(v) else None) for k, v in values.items()} for group, values in results.items()}
    record = {"step": best["step"], "test": strict}
    if c.outside_prob > 0:
        record["outside"] = outside_detection(c, model, library, instrument, edges, prediction)
        print("flag_z_range (P(outside) > 0.5 or z at an end of the range): " + ", ".join(
            f"{k} {v:.3f}" for k, v in record["outside"].items() if k.endswith("flagged")), file=sys.stderr)  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    figures = out / "plots"
    figures.mkdir(exist_ok=True)
    plots.plot_z_true_vs_pred(z_true, z_pred, figures / "z_true_vs_pred.png")
    plots.plot_dz_histogram(z_true, z_pred, figures / "dz_histogram.png")
    plots.plot_learning_curves(out / "metrics.csv", figures / "learning_curves.png")
    if "probs" in prediction:
        plots.plot_pz_examples(prediction["probs"][:6].cpu(), edges.cpu(), z_true[:6], figures / "pz_examples.png")
        plots.plot_pit_histogram(extra["pit"], figures / "pit_histogram.png")
    overall = results["all"]
    print(f"test ({overall['n']} spectra, step {best['step']}): sigma_NMAD {overall['sigma_nmad']:.5f}  "
          f"eta(>0.003) {overall['outlier_003']:.4f}  eta(>0.01) {overall['outlier_01']:.4f}  MAE {overall['mae']:.5f}  "
          f"R2 {overall['r2']:.4f}  -> {out}", file=sys.stderr)  # fmt: skip
    return results


def outside_detection(c: TrainConfig, model, library, instrument, edges, in_range: dict) -> dict:
    """Shares of test spectra that zfast-predict would flag as outside the trained range
    (``zfast.inference.z_range_flag``): in range (``in_range``: ``predict`` of the test set), and below / above
    the range (fresh test-SED spectra at those redshifts)."""
    from .inference import z_range_flag

    def flagged(prediction):
        return z_range_flag(prediction["z"], prediction.get("p_outside"), c.z_min, c.z_max).double().mean().item()

    n = max(256, c.n_test // 2)
    flux, _, z, _ = outside_stream(c, library, instrument, "test", n, 0).fixed_set(n, seed=25_000 + c.split_seed)
    beyond = predict(model, c, flux, edges)  # z_mode and p_outside do not depend on the P(z) temperature
    result = {"in_range_flagged": flagged(in_range), "n_in_range": int(in_range["z"].numel())}
    for side, rows in (("below", z < c.z_min), ("above", z >= c.z_max)):
        picked = {k: beyond[k][rows] for k in ("z", "p_outside")}
        result[f"{side}_flagged"] = flagged(picked) if int(rows.sum()) else None
        result[f"n_{side}"] = int(rows.sum())
    return result


def plots_on_demand(run_dir: Path) -> dict:
    """``finish`` for an existing run folder (finished or not): test metrics of its best checkpoint, plots."""
    state = load_checkpoint(run_dir / "last.pt")
    c = config_from_state(state)
    device = pick_device(c.device)
    library = load_library(c.library).to(device)
    instrument = make_instrument(c)
    model = build_model(c.model, instrument.n_pixels, c.estimator, c.n_bins, outside=c.outside_prob > 0,
                        wave_edges=instrument.wave_edges, z_range=(c.z_min, c.z_max)).to(device)
    edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)
    return finish(c, run_dir, model, instrument, library, edges)


def build_ensemble(checkpoints: list, path: Path, device: str = "auto") -> dict:
    """Write an ensemble file: the members' weights and predict_stats (no optimiser state) and the ensemble's own
    per-SNR temperatures, fitted (``fit_temperatures``) to log of the members' mean plain softmax on the first
    member's calibration set (``calibration_set``: validation SEDs, the same for members of one split). The mixture
    of calibrated members is too wide when they disagree less than each one's spread (measured: README). Returns
    the ensemble's calibration stats."""
    from .inference import EnsembleModel, ensemble_outputs, load_model

    if len(checkpoints) < 2:
        raise ValueError(f"an ensemble needs at least two checkpoints, got {len(checkpoints)}")
    dev = pick_device(device)
    states = [load_checkpoint(Path(ckpt)) for ckpt in checkpoints]
    ensemble = EnsembleModel([load_model(ckpt, dev) for ckpt in checkpoints])  # checks bins, instrument, estimators
    c = config_from_state(states[0])
    for ckpt, state in zip(checkpoints, states):
        other = config_from_state(state)
        if (other.library, other.split_seed, other.holdout_sfh, other.train_seds) != (c.library, c.split_seed, c.holdout_sfh, c.train_seds):
            print(f"zfast-train: warning: {ckpt} was trained on another library or split than {checkpoints[0]}: its "
                  "validation SEDs may have been training SEDs of the first", file=sys.stderr)  # fmt: skip
    library = load_library(c.library).to(dev)
    flux, ivar, z = calibration_set(c, library, make_instrument(c))
    snr = spectrum_snr(ivar)
    plain = torch.cat([ensemble_outputs(ensemble, flux[i:i + 1024], snr[i:i + 1024])["plain"] for i in range(0, flux.shape[0], 1024)])
    stats = fit_temperatures(torch.log(plain.clamp_min(1e-300)), z, ensemble.bin_edges, snr)
    stats["calibration_n"] = torch.tensor(calibration_size(c))
    members = [{key: state[key] for key in ("config", "model", "predict_stats", "step") if key in state} for state in states]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"ensemble_version": 1, "members": members, "sources": [str(p) for p in checkpoints],
                           "predict_stats": stats})  # fmt: skip
    print(f"ensemble of {len(members)} -> {path}; temperatures per P(z) peak group and SNR bin "
          f"{[[round(float(t), 4) for t in row] for row in stats['temperatures'].reshape(-1, len(stats['snr_edges']) - 1)]}",
          file=sys.stderr)  # fmt: skip
    return stats


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plots:
        try:
            plots_on_demand(Path(args.plots))
        except (ValueError, FileNotFoundError, ImportError) as error:
            raise SystemExit(f"zfast-train: {error}") from error
        return 0
    if args.ensemble:
        try:
            build_ensemble(args.ensemble, Path(args.out or "runs/ensemble") / "ensemble.pt", args.device or "auto")
        except (ValueError, FileNotFoundError, ImportError) as error:
            raise SystemExit(f"zfast-train: {error}") from error
        return 0
    if args.resume:
        state = load_checkpoint(Path(args.resume) / "last.pt")
        config, resume_state = config_from_state(state), state
    else:
        config, resume_state = resolve_config(args), None
    try:
        run(config, resume_state=resume_state)
    except (ValueError, FileNotFoundError, ImportError) as error:  # bad library, coverage, device: no traceback
        raise SystemExit(f"zfast-train: {error}") from error
    return 0


if __name__ == "__main__":
    sys.exit(main())
