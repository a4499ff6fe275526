"""A run's settings: ``TrainConfig`` (every option of zfast-train, with its default), the presets, and one table of
the seeds of every random stream and fixed set.

The three estimators share one definition of the redshift bins (zfast.bins):
* regression: one output, MSE on the scaled z of ``z_to_target``;
* classification: ``n_bins`` logits, cross-entropy on ``z_to_bin`` (the paper: 800 bins of 0.001, or 80);
* distribution: ``n_bins`` logits, ``jsd_entropy`` against Gaussian ``soft_labels``, starting with JS alone against
  wide labels (``label_start_factor`` x the final σ of ``label_sigma_bins``) that narrow over ``schedule_fraction``
  of the steps while the entropy weight ramps in to ``lambda_ent`` (default 0: minimising H rewards a confident
  spike exactly where a spectrum is uninformative; the paper's 0.15 and its effect: docs/training.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ..checkpoint import LEGACY_CONFIG
from ..data import Perturbations
from ..models.layers import ACTIVATIONS


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
    outside_weight: float = field(default=1.0, metadata={"help": "weight of the outside output's cross-entropy in the loss (docs/results.md: how the flag rates depend on it)"})
    max_gap: int = field(default=32, metadata={"help": "longest masked gap, in pixels"})
    bad_pixel_prob: float = field(default=0.0, metadata={"help": "training spectra: share given scattered bad pixels (ivar 0, pixel by pixel, as real SIR spectra's NOT_USE / ABS_FLUX pixels)"})
    bad_pixel_max: float = field(default=0.15, metadata={"help": "training spectra: highest rate of scattered bad pixels (drawn uniform below it per spectrum)"})
    distortion: float = field(default=0.0, metadata={"help": "training spectra: rms (in ln flux, per Legendre order 1-3) of a smooth multiplicative continuum distortion (flux calibration, dust laws)"})
    noise_variation: float = field(default=0.0, metadata={"help": "training spectra: rms of ln sigma along the spectrum (smooth, orders 1-2): noise that is not flat across the band"})
    sed_mix_prob: float = field(default=0.0, metadata={"help": "training spectra: share that mix two SEDs of the split at the same z (weights U(0,1), each SED normalised to its band mean): composite populations"})
    line_contrast: float = field(default=0.0, metadata={"help": "training spectra: rms of ln α, each spectrum's features raised to the power α about their smooth continuum (absorption depths and emission EWs scaled together: other metallicities and ages than the library's)"})
    min_line_snr: float = field(default=0.0, metadata={"help": "train (and validate) only on spectra whose Hα + [NII] detection SNR is at least this (Euclid convention; 3.5 with --noise euclid is the survey's 2e-16 erg/s/cm² line-flux limit, i.e. the galaxies it targets); 0: all"})
    z_min: float = field(default=1.0, metadata={"help": "lowest redshift drawn (and first bin edge)"})
    z_max: float = field(default=1.8, metadata={"help": "redshifts are drawn below this (last bin edge)"})
    weak_line_weight: float = field(default=1.0, metadata={"help": "how often a training SED with rest-frame EW(Hα) < 20 Å (weak lines: the hard ones) is drawn relative to the others (library params ew_halpha); 1: uniform"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val/test split by SED"})
    train_seds: int = field(default=0, metadata={"help": "train on only this many of the training SEDs, a seeded random subset (0: all)"})
    holdout_sfh: str = field(default="", metadata={"help": "keep every SED of this star-formation-history recipe (library params sfh_type) out of training, as a 'holdout' test set"})
    model: str = field(default="resnet1d", metadata={"help": "network: resnet1d, resnet1d-wide (2x the channels, ~3x the compute), resnet1d-log (resnet1d on a log-λ resampling of the input), resnet1d-shift (resnet1d-log plus rest-frame templates slid over z), resnet1d-shift-fine (resnet1d-shift plus a second template branch on the stem's finer features), paper-cnn"})
    estimator: str = field(default="classification", metadata={"help": "regression, classification, distribution"})
    activation: str = field(default="silu", metadata={"help": "the residual networks' activation: silu, or hardswish (no exp: ~4x cheaper on CPUs without AVX-512, docs/performance.md)"})
    log_pixels: int = field(default=0, metadata={"help": "resnet1d-log / resnet1d-shift: pixels of the log-λ grid (other models ignore it); 0: as many as keep the instrument's finest sampling (636 on NISP); the quick preset takes 512, ~1.4x faster per step (docs/real_galaxies.md)"})
    n_bins: int = field(default=800, metadata={"help": "redshift bins of the binned estimators"})
    label_sigma_bins: float = field(default=1.5, metadata={"help": "distribution: soft-label σ, in bins"})
    label_start_factor: float = field(default=4.0, metadata={"help": "distribution: initial label σ / final σ"})
    lambda_js: float = field(default=0.85, metadata={"help": "distribution: weight of JS(P, Q)"})
    lambda_ent: float = field(default=0.0, metadata={"help": "distribution: weight of H(P) reached after the ramp (the paper: 0.15; it collapses weak-line spectra: docs/training.md)"})
    lambda_ce: float = field(default=0.0, metadata={"help": "distribution: weight of an added cross-entropy against z's bin (a proper scoring rule: P(z) widths then follow each spectrum's uncertainty, which JS against fixed-width labels does not; docs/training.md); 0: the JS(+H) loss alone"})
    schedule_fraction: float = field(default=0.5, metadata={"help": "distribution: share of steps for the label/entropy ramp"})
    batch_size: int = field(default=256, metadata={"help": "spectra per step"})
    steps: int = field(default=2000, metadata={"help": "optimisation steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW, one-cycle schedule)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    ema: float = field(default=0.0, metadata={"help": "decay of an exponential moving average of the weights (and BatchNorm statistics), which is then what is validated, checkpointed and predicted with; 0: the weights themselves"})
    eval_every: int = field(default=250, metadata={"help": "steps between validation passes (and checkpoints)"})
    n_val: int = field(default=2048, metadata={"help": "fixed validation spectra"})
    n_test: int = field(default=4096, metadata={"help": "fixed test spectra"})
    n_calibration: int = field(default=0, metadata={"help": "spectra of the validation SEDs (plus a quarter as many noiseless) to which the per-SNR P(z) temperatures are fitted at the end of a run; 0: 8 x n_val within 1024-8192 (the coverage of n spectra scatters by sqrt(0.68 x 0.32 / n): ~1,000 per SNR bin know it to 1.5 points)"})
    seed: int = field(default=0, metadata={"help": "seed of the model and of the training draws"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    amp: str = field(default="auto", metadata={"help": "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, off"})
    out: str = field(default="runs/zfast", metadata={"help": "run folder"})


PRESETS = {
    # A few minutes on 2 CPU cores with the built-in library. The redshift-equivariant ResNet (learned rest-frame
    # templates slid over ln(1+z)) on a 512-pixel log grid (1.4x faster per step than the finest, 636), scattered
    # bad pixels as real spectra have them, and weak-line (passive) SEDs drawn 6x as often: docs/real_galaxies.md.
    "quick": dict(model="resnet1d-shift", log_pixels=512, estimator="classification", n_bins=800, steps=900,
                  eval_every=150, n_val=1024, n_test=2048, bad_pixel_prob=0.8, bad_pixel_max=0.25,
                  weak_line_weight=6.0, out="runs/quick"),  # fmt: skip
    # The talk's protocol: a 10K library from `zfast-sed build --n 10000`, the paper's CNN.
    "paper": dict(library="lib.h5", model="paper-cnn", estimator="classification", n_bins=800, steps=20000,
                  batch_size=32, lr=1e-4, eval_every=1000, out="runs/paper"),  # fmt: skip
}


@dataclass(frozen=True)
class Seeds:
    """The seeds of a run's random draws, in one place. Training streams: ``seed + rank_stride · rank`` (each DDP
    rank its own stream; the outside stream one more). Fixed sets: their offset + ``split_seed``, so runs of one
    split share them whatever their ``seed``."""

    rank_stride: int = 7919
    outside_stream: int = 1
    validation: int = 10_000
    test: int = 20_000
    test_outside: int = 25_000
    ood_train: int = 30_000
    ood_validation: int = 40_000
    calibration_noiseless: int = 45_000
    calibration: int = 46_000
    deltachi2: int = 47_000  # + condition index (zfast.training.thresholds)


SEEDS = Seeds()
ESTIMATORS = ("regression", "classification", "distribution")
NOISES = ("none", "white", "euclid")
AMP = ("auto", "bf16", "off")


def _type_problems(c: TrainConfig) -> list:
    """Fields whose value is not of the field's type (bool for flags, int for counts, a finite number for reals)."""
    problems = []
    for f in dataclasses.fields(TrainConfig):
        value, default = getattr(c, f.name), f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            problems.append(f"{f.name} must be {'a finite number' if isinstance(default, float) else type(default).__name__}, got {value!r}")
    return problems


RANGES = {  # field: (lowest, highest, whether the ends are allowed)
    "outside_prob": (0.0, 1.0, (True, False)),
    "outside_weight": (0.0, math.inf, (True, False)),
    "schedule_fraction": (0.0, 1.0, (False, True)),
    "snr_min": (0.0, math.inf, (False, False)),
    "label_sigma_bins": (0.0, math.inf, (False, False)),
    "label_start_factor": (1.0, math.inf, (True, False)),
    "lambda_js": (0.0, math.inf, (True, False)),
    "lambda_ent": (0.0, math.inf, (True, False)),
    "lr": (0.0, math.inf, (False, False)),
    "weight_decay": (0.0, math.inf, (True, False)),
    "ema": (0.0, 1.0, (True, False)),
    "min_line_snr": (0.0, 1e6, (True, True)),
    "mask_prob": (0.0, 1.0, (True, True)),
}


def _range_problems(c: TrainConfig) -> list:
    problems = []
    for name, (lo, hi, (lo_ok, hi_ok)) in RANGES.items():
        v = getattr(c, name)
        if not ((v > lo or (lo_ok and v == lo)) and (v < hi or (hi_ok and v == hi))):
            problems.append(f"{name} must be in {'[' if lo_ok else '('}{lo:g}, {hi:g}{']' if hi_ok else ')'}, got {v!r}")
    return problems


def check_config(c: TrainConfig) -> None:
    """ValueError listing every setting of ``c`` that is of the wrong type or out of range, before any work."""
    problems = _type_problems(c)
    if problems:
        raise ValueError("bad configuration: " + "; ".join(problems))
    if c.estimator not in ESTIMATORS:
        problems.append(f"estimator {c.estimator!r} ({', '.join(ESTIMATORS)})")
    if c.noise not in NOISES:
        problems.append(f"noise {c.noise!r} ({', '.join(NOISES)})")
    problems += [f"{name} must be >= 1" for name in ("steps", "batch_size", "eval_every", "n_val", "n_test", "n_bins") if getattr(c, name) < 1]
    problems += [f"{name} must be >= 0" for name in ("train_seds", "n_calibration") if getattr(c, name) < 0]
    problems += _range_problems(c)
    if c.lambda_ce < 0:
        problems.append("lambda_ce must be >= 0")
    if c.activation not in ACTIVATIONS:
        problems.append(f"activation {c.activation!r} ({', '.join(sorted(ACTIVATIONS))})")
    if c.log_pixels < 0:
        problems.append(f"log_pixels must be >= 0 (0: the instrument's finest sampling), got {c.log_pixels}")
    if c.weak_line_weight <= 0:
        problems.append("weak_line_weight must be > 0")
    if c.max_gap < 1:
        problems.append("max_gap must be >= 1")
    if c.snr_max < c.snr_min:
        problems.append("need snr_min <= snr_max")
    try:
        Perturbations(c.bad_pixel_prob, c.bad_pixel_max, c.distortion, c.noise_variation, c.sed_mix_prob, c.line_contrast)
    except ValueError as error:
        problems.append(str(error))
    if not (0 <= c.z_min < c.z_max):
        problems.append("need 0 <= z_min < z_max")
    if c.amp not in AMP:
        problems.append(f"amp {c.amp!r} ({', '.join(AMP)})")
    if problems:
        raise ValueError("bad configuration: " + "; ".join(problems))


def read_config_file(path: str) -> dict:
    """The TrainConfig fields of a TOML file; ValueError naming the file for unknown settings."""
    try:
        import tomllib
    except ImportError as error:  # Python < 3.11
        raise ValueError(f"{path}: reading TOML needs Python >= 3.11 (tomllib)") from error
    try:
        with open(path, "rb") as stream:
            values = tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from error
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; see zfast-train --help")
    return values


def resolve_config(preset: Optional[str] = None, config_file: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """The defaults, then the preset, then the TOML file, then ``overrides`` (None values ignored); checked."""
    values = dataclasses.asdict(TrainConfig())
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r}: no such preset ({', '.join(sorted(PRESETS))})")
        values.update(PRESETS[preset])
    if config_file:
        values.update(read_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in values})
    config = TrainConfig(**values)
    check_config(config)
    return config


def config_from_dict(values: dict) -> TrainConfig:
    """The TrainConfig of a checkpoint's ``config``; settings added since it was written take the value that
    reproduces it (``zfast.checkpoint.LEGACY_CONFIG``)."""
    return TrainConfig(**{**LEGACY_CONFIG, **values})
