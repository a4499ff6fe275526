"""Checkpoints: a typed payload with one layout version, its one save and its one load, and the models built
from it (``RedshiftModel``, ``EnsembleModel``).

On disk a checkpoint is a ``torch.save`` of plain values and tensors only, read back with
``torch.load(weights_only=True)``: no code runs from the file. Two kinds share ``CHECKPOINT_VERSION``:

* a run (``RunCheckpoint``: zfast-train's best.pt / last.pt): the configuration (``TrainConfig`` fields), the
  weights, the step, the best validation σ_NMAD, the state to resume from (``resume``: optimiser, scheduler and
  the random generators of every rank; absent in ensemble members) and ``PredictStats``, what prediction needs
  beside the weights (OOD statistics, P(z) calibration, the regression scatter), fitted at the end of a run;
* an ensemble (``EnsembleCheckpoint``: zfast-train ``--ensemble``): member runs without their resume state, the
  checkpoints they came from, and the ensemble's own P(z) calibration.

Files of layout version 1 (zfast 0.1.0 before the redesign: an untyped dict) are converted on load by
``upgrade_v1``, so runs users already have keep working; CHANGELOG.md records the versions.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .bins import redshift_bin_edges
from .data.instrument import Instrument
from .devices import pick_device, serial_linear_layers
from .files import atomic_path
from .models import build_model, fold_batchnorm
from .ood import OODStats

CHECKPOINT_VERSION = 2
PathLike = Union[str, os.PathLike]
# TrainConfig settings added after checkpoints were first written, with the value that reproduces those runs
# (no outside output, no realism perturbations).
LEGACY_CONFIG = {"outside_prob": 0.0, "bad_pixel_prob": 0.0, "distortion": 0.0, "noise_variation": 0.0, "sed_mix_prob": 0.0,
                 "log_pixels": 0}
_OOD_KEYS = ("ood_means", "ood_precisions", "ood_scales", "ood_threshold", "ood_mean", "ood_precision")


@dataclass
class PredictStats:
    """What prediction needs beside the weights: ``ood`` (``zfast.ood.OODStats``), ``calibration`` (the record of
    ``zfast.calibration.fit_temperatures``, plus ``calibration_n``), ``z_scatter`` (regression: the validation
    σ_NMAD that becomes z_err). None where the run stopped before fitting them."""

    ood: Optional[OODStats] = None
    calibration: Optional[dict] = None
    z_scatter: Optional[float] = None

    def to_dict(self) -> dict:
        return {"ood": None if self.ood is None else self.ood.to_dict(), "calibration": self.calibration,
                "z_scatter": self.z_scatter}  # fmt: skip

    @classmethod
    def from_dict(cls, record: Optional[dict]) -> "PredictStats":
        record = record or {}
        ood = record.get("ood")
        scatter = record.get("z_scatter")
        return cls(None if ood is None else OODStats.from_dict(ood), record.get("calibration"),
                   None if scatter is None else float(scatter))  # fmt: skip


@dataclass
class RunCheckpoint:
    """One trained network (module docstring). ``config``: the ``TrainConfig`` fields; ``model``: state_dict."""

    config: dict
    model: dict
    step: int = 0
    best: float = math.inf
    resume: Optional[dict] = None
    stats: PredictStats = field(default_factory=PredictStats)

    kind = "run"

    def to_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "kind": self.kind, "config": dict(self.config), "model": self.model,
                "step": int(self.step), "best": float(self.best), "resume": self.resume,
                "stats": self.stats.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, record: dict) -> "RunCheckpoint":
        return cls(dict(record["config"]), record["model"], int(record.get("step", 0)),
                   float(record.get("best", math.inf)), record.get("resume"), PredictStats.from_dict(record.get("stats")))  # fmt: skip


@dataclass
class EnsembleCheckpoint:
    """Member runs (``RunCheckpoint`` without ``resume``), their source paths, the ensemble's P(z) calibration."""

    members: list
    sources: list = field(default_factory=list)
    calibration: Optional[dict] = None

    kind = "ensemble"

    def to_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "kind": self.kind, "members": [m.to_dict() for m in self.members],
                "sources": [str(s) for s in self.sources], "calibration": self.calibration}  # fmt: skip

    @classmethod
    def from_dict(cls, record: dict) -> "EnsembleCheckpoint":
        return cls([RunCheckpoint.from_dict(m) for m in record["members"]], list(record.get("sources", [])),
                   record.get("calibration"))  # fmt: skip


def save(path: PathLike, checkpoint: Union[RunCheckpoint, EnsembleCheckpoint]) -> None:
    """Write ``checkpoint`` to ``path`` atomically (``zfast.files.atomic_path``: a kill never leaves half a file)."""
    with atomic_path(path) as temporary:
        torch.save(checkpoint.to_dict(), temporary)


def read(path: PathLike) -> Union[RunCheckpoint, EnsembleCheckpoint]:
    """The checkpoint in ``path`` (either kind; layout version 1 converted). ValueError, naming the file, for a
    file that is not a zfast checkpoint or is of a layout this version cannot read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, not a checkpoint, or holds objects weights_only refuses
        first = (str(error).strip().splitlines() or [""])[0]  # torch.load's messages run to many lines: one for a CLI
        raise ValueError(f"{path}: not a readable zfast checkpoint ({type(error).__name__}: {first})") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not a zfast checkpoint (a {type(record).__name__}, not a dict)")
    check_integrity(path)
    try:
        checkpoint = from_dict(record, path)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: a damaged zfast checkpoint ({type(error).__name__}: {error}); retrain with zfast-train") from error
    for run in checkpoint.members if isinstance(checkpoint, EnsembleCheckpoint) else [checkpoint]:
        check_run(run, path)
    return checkpoint


MAX_WEIGHT = 1e12  # |weight| above this is no trained network's: damage, or a diverged run
CONFIG_TYPES = {"instrument": str, "model": str, "estimator": str, "n_bins": int, "z_min": (int, float), "z_max": (int, float)}


def check_integrity(path: Path) -> None:
    """ValueError naming ``path`` when a member of its zip archive fails its CRC (torch.load does not check)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a readable zfast checkpoint ({type(error).__name__}: {error})") from error
    if bad is not None:
        raise ValueError(f"{path}: damaged (CRC mismatch in {bad}); use another copy or retrain with zfast-train")


def check_run(run: "RunCheckpoint", path) -> None:
    """ValueError naming ``path``: a config without the keys (and types) a network is built from, or weights
    that are not finite or absurdly large."""
    for key, kind in CONFIG_TYPES.items():
        if key not in run.config:
            raise ValueError(f"{path}: the checkpoint's config has no {key!r}; not a zfast-train checkpoint")
        if isinstance(run.config[key], bool) or not isinstance(run.config[key], kind):
            raise ValueError(f"{path}: the checkpoint's config {key!r} is {run.config[key]!r}, not a {kind}")
    for name, tensor in run.model.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{path}: weight {name} is not finite (a diverged run, or a damaged file)")
            if tensor.numel() and float(tensor.abs().max()) > MAX_WEIGHT:
                raise ValueError(f"{path}: weight {name} reaches {float(tensor.abs().max()):.3g} (a damaged file?)")


def from_dict(record: dict, path: PathLike = "<checkpoint>") -> Union[RunCheckpoint, EnsembleCheckpoint]:
    """``read`` for a loaded dict: layout version 2, or version 1 through ``upgrade_v1``."""
    if record.get("ensemble_version") == 1 or record.get("version") == 1:
        record = upgrade_v1(record)
    version = record.get("version")
    if version != CHECKPOINT_VERSION:
        found = "no layout version" if version is None else f"layout version {version!r}"
        raise ValueError(f"{path}: {found}; this zfast reads zfast checkpoints of versions 1-{CHECKPOINT_VERSION} "
                         "(a newer zfast wrote it: upgrade zfast; otherwise retrain with zfast-train)")  # fmt: skip
    if record.get("kind") == "ensemble":
        return EnsembleCheckpoint.from_dict(record)
    if not {"config", "model"} <= set(record):
        raise ValueError(f"{path}: not a zfast-train checkpoint (no config/model)")
    return RunCheckpoint.from_dict(record)


def _stats_v1(stats: dict) -> dict:
    """Version-1 ``predict_stats`` (one flat dict) → version-2 ``stats``. The oldest files hold one unscaled
    penultimate layer (``ood_mean``): one layer with scale 1 and no taps scores them as before; calibrations from
    before the P(z) peak groups (no ``peak_edges``) become one group spanning every peak share."""
    ood = None
    if "ood_means" in stats:
        ood = {"means": stats["ood_means"], "precisions": stats["ood_precisions"], "scales": stats["ood_scales"],
               "threshold": float(stats["ood_threshold"]), "taps": True}  # fmt: skip
    elif "ood_mean" in stats:
        ood = {"means": [stats["ood_mean"]], "precisions": [stats["ood_precision"]],
               "scales": torch.ones(1, dtype=torch.float64), "threshold": float(stats["ood_threshold"]), "taps": False}  # fmt: skip
    calibration = None
    if "temperatures" in stats:
        calibration = {k: v for k, v in stats.items() if k not in _OOD_KEYS and k != "z_scatter"}
        if "peak_edges" not in calibration:
            calibration["peak_edges"] = torch.tensor([0.0, math.inf], dtype=torch.float64)
            calibration["temperatures"] = torch.as_tensor(calibration["temperatures"])[None]
            if "counts" in calibration:
                calibration["counts"] = torch.as_tensor(calibration["counts"])[None]
    scatter = stats.get("z_scatter")
    return {"ood": ood, "calibration": calibration, "z_scatter": None if scatter is None else float(scatter)}


def upgrade_v1(record: dict) -> dict:
    """A layout-1 run or ensemble dict as the layout-2 dict of the same checkpoint (nothing is lost)."""
    if record.get("ensemble_version") == 1:
        members = [upgrade_v1({"version": 1, **member}) for member in record.get("members", [])]
        calibration = _stats_v1(dict(record.get("predict_stats", {})))["calibration"]
        return {"version": CHECKPOINT_VERSION, "kind": "ensemble", "members": members,
                "sources": list(record.get("sources", [])), "calibration": calibration}  # fmt: skip
    resume_keys = ("optimiser", "scheduler", "augment_generators", "outside_generators", "torch_rngs", "cuda_rngs")
    resume = {k: record[k] for k in resume_keys if k in record} or None
    return {"version": CHECKPOINT_VERSION, "kind": "run", "config": {**LEGACY_CONFIG, **record["config"]},
            "model": record["model"], "step": int(record.get("step", 0)), "best": float(record.get("best", math.inf)),
            "resume": resume, "stats": _stats_v1(dict(record.get("predict_stats", {})))}  # fmt: skip


# --- models -------------------------------------------------------------------------------------------------
def has_outside(config: dict) -> bool:
    """Whether a run of ``config`` has the "outside the trained range" output (``outside_prob`` > 0)."""
    return float(config.get("outside_prob", 0.0)) > 0


@dataclass
class RedshiftModel:
    """A trained network with everything needed to use it on real spectra (``load_model``)."""

    network: nn.Module
    estimator: str
    bin_edges: torch.Tensor  # [K+1] float64, the redshift bins (regression: its [z_min, z_max] scaling)
    instrument: Instrument  # the model's observed pixels
    stats: PredictStats = field(default_factory=PredictStats)
    config: dict = field(default_factory=dict)  # the TrainConfig fields of its run
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def outside(self) -> bool:
        """Whether the network has the "outside the trained range" output (trained with --outside-prob > 0)."""
        return has_outside(self.config)

    @property
    def z_range(self) -> tuple[float, float]:
        return float(self.bin_edges[0]), float(self.bin_edges[-1])

    def to(self, device) -> "RedshiftModel":
        self.network.to(device)
        return self


@dataclass
class EnsembleModel:
    """Several trained networks used as one (a deep ensemble: the same recipe trained with different seeds).

    Members must be binned estimators (classification or distribution) on the same instrument and redshift bins.
    For each spectrum the members' P(z) are averaged: z is the refined mode of the mean plain softmax. z_err, the
    intervals and ``pz`` come from that mean with the ensemble's own per-SNR temperature, P ∝ mean^(1/T) (an
    ensemble file holds it: ``calibration``), or else from the mean of the members' calibrated P(z), which is too
    wide when members agree better than each one's spread. ``p_outside`` is the members' mean; ``ood_score`` their
    median, and ``flag_ood`` is raised when more than half of the members flag the spectrum (each against its own
    threshold).
    """

    members: list
    calibration: Optional[dict] = None  # the ensemble's own P(z) temperatures (an ensemble file's), if any
    path: str = ""  # the ensemble file it was read from, if any

    def __post_init__(self):
        self.members = list(self.members)
        if not self.members or not all(isinstance(m, RedshiftModel) for m in self.members):
            raise ValueError("an ensemble needs at least one RedshiftModel")
        first = self.members[0]
        for m in self.members:
            if m.estimator == "regression":
                raise ValueError(f"{m.source}: a regression model has no P(z) to average; ensembles take binned estimators")
            if m.instrument.name != first.instrument.name or m.instrument.n_pixels != first.instrument.n_pixels:
                raise ValueError(f"{m.source}: instrument {m.instrument.name} differs from {first.source}'s {first.instrument.name}")
            if m.bin_edges.shape != first.bin_edges.shape or not torch.equal(m.bin_edges, first.bin_edges):
                raise ValueError(f"{m.source}: its redshift bins differ from {first.source}'s")
        devices = {m.device for m in self.members}
        if len(devices) > 1:
            raise ValueError(f"ensemble members on several devices: {sorted(map(str, devices))}")

    estimator = property(lambda self: "ensemble")
    bin_edges = property(lambda self: self.members[0].bin_edges)
    instrument = property(lambda self: self.members[0].instrument)
    device = property(lambda self: self.members[0].device)
    z_range = property(lambda self: self.members[0].z_range)
    config = property(lambda self: self.members[0].config)
    source = property(lambda self: self.path or "+".join(Path(m.source).parent.name or m.source for m in self.members))

    def to(self, device) -> "EnsembleModel":
        for m in self.members:
            m.to(device)
        return self


def build_network(config: dict) -> tuple[nn.Module, Instrument]:
    """(the untrained network of a run's ``config``, its instrument)."""
    instrument = Instrument.preset(config["instrument"])
    network = build_model(config["model"], instrument.n_pixels, config["estimator"], config["n_bins"], has_outside(config),
                          wave_edges=instrument.wave_edges, z_range=(config["z_min"], config["z_max"]),
                          n_log=int(config.get("log_pixels", 0)) or None, activation=config.get("activation", "silu"))  # fmt: skip
    return network, instrument


def model_from_checkpoint(checkpoint: RunCheckpoint, source: str = "", device=None) -> RedshiftModel:
    """A ``RedshiftModel`` in eval mode on ``device`` (``pick_device``) from a run checkpoint."""
    c = checkpoint.config
    network, instrument = build_network(c)
    try:
        network.load_state_dict(checkpoint.model)
    except RuntimeError as error:
        raise ValueError(f"{source}: the weights do not fit a {c['model']} {c['estimator']} network: {error}") from error
    serial_linear_layers(fold_batchnorm(network.eval()))  # one conv per conv+BN; the same results whatever the CPU threads (zfast.devices)
    return RedshiftModel(network.to(pick_device(device)), c["estimator"], redshift_bin_edges(c["z_min"], c["z_max"], c["n_bins"]),
                         instrument, checkpoint.stats, dict(c), source)  # fmt: skip


def load_model(checkpoint: PathLike, device: Union[str, torch.device, None] = None) -> Union[RedshiftModel, EnsembleModel]:
    """A ``RedshiftModel`` from a zfast-train checkpoint (``best.pt`` or ``last.pt``), in eval mode, on ``device``
    (default: CUDA if available); an ``EnsembleModel`` from an ensemble file (``zfast-train --ensemble``)."""
    record = read(checkpoint)
    if isinstance(record, EnsembleCheckpoint):
        members = [model_from_checkpoint(m, f"{checkpoint}[{i}]", device) for i, m in enumerate(record.members)]
        return EnsembleModel(members, record.calibration, str(checkpoint))
    return model_from_checkpoint(record, str(checkpoint), device)


def load_ensemble(checkpoints, device: Union[str, torch.device, None] = None) -> EnsembleModel:
    """An ``EnsembleModel`` of zfast-train checkpoints (``load_model`` for each)."""
    return EnsembleModel([load_model(path, device) for path in checkpoints])
