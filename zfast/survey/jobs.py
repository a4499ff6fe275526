"""One input file's work, the same in this process and on a Dask worker: ``run_job``.

A ``Job`` names the checkpoints, not the model: each process loads the model once (``worker_model``, cached per
process) and reuses it for every file it is given, so nothing large is pickled per task. ``run_job`` never raises
for a bad input: it returns the manifest entry, "failed" with the one-line error, so one file cannot stop a run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import load_ensemble, load_model
from ..devices import pick_device, steady_allocator
from ..io.catalogue import checked_output, write_catalogue
from ..predict import load_templates
from .manifest import catalogue_stamp, input_stamp

# What a bad input file raises (reading, coverage, formats); anything else is a bug and propagates.
FILE_ERRORS = (ValueError, TypeError, KeyError, OSError, EOFError, ImportError, MemoryError, RuntimeError)


@dataclass(frozen=True)
class Job:
    """One input and where its catalogue goes. ``options``: ``write_catalogue``'s keyword options (pz, air,
    flux_unit, batch_size, min_valid, input_format, reader_options); ``templates``/``template_points`` as
    ``zfast.predict``'s; ``threads``: torch's CPU threads for it (None: as the process has them)."""

    input: str
    catalogue: str
    checkpoints: tuple
    device: str = "auto"
    options: dict = field(default_factory=dict)
    templates: Optional[str] = None
    template_points: Optional[int] = None
    threads: Optional[int] = None  # torch CPU threads of the process that runs it (Dask workers share the cores)


_MODELS: dict = {}


def worker_device(requested: str) -> str:
    """``requested``, except that "auto" on a Dask worker of a machine with several GPUs pins the worker's own GPU
    (its name modulo the GPU count: LocalCluster names its workers 0, 1, ...; other names hash)."""
    if requested != "auto" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return requested
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return requested
    index = int(name) if str(name).isdigit() else sum(str(name).encode())
    return f"cuda:{index % torch.cuda.device_count()}"


def worker_model(job: Job):
    """(model, templates) for ``job``, loaded once per process and kept for the next job of the same run."""
    key = (job.checkpoints, job.device, job.templates, job.template_points)
    if key not in _MODELS:
        _MODELS.clear()  # one run's model at a time
        steady_allocator()  # (a Dask nanny's MALLOC_TRIM_THRESHOLD_ halves the rate otherwise)
        device = pick_device(worker_device(job.device))
        paths = list(job.checkpoints)
        model = load_model(paths[0], device) if len(paths) == 1 else load_ensemble(paths, device)
        _MODELS[key] = (model, load_templates(job.templates, model, job.template_points))
    return _MODELS[key]


def run_job(job: Job) -> dict:
    """Predict ``job.input`` into ``job.catalogue`` (written atomically, replacing any earlier one) and return its
    manifest entry: "done" with the catalogue's stamp, or "failed" with the error on one line."""
    started = time.perf_counter()
    entry = {"input": job.input, "catalogue": job.catalogue}
    if job.threads is not None and torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)
    try:
        model, templates = worker_model(job)
        Path(job.catalogue).parent.mkdir(parents=True, exist_ok=True)  # the input's subfolder, mirrored
        catalogue = checked_output(job.catalogue, True, bool(job.options.get("pz")), model)
        stamp = input_stamp(job.input)
        written = write_catalogue(model, job.input, catalogue, templates=templates, overwrite=True, **job.options)
        entry.update(status="done", n_spectra=written.n_spectra, n_flagged=written.n_flagged, **catalogue_stamp(catalogue), **stamp)
    except FILE_ERRORS as error:
        message = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
        entry.update(status="failed", error=f"{type(error).__name__}: {message}")
    entry["seconds"] = round(time.perf_counter() - started, 3)
    entry["pid"] = os.getpid()
    return entry


def remove_leftovers(path: Path) -> int:
    """Remove the temporary files a killed writer of ``path`` left beside it (``zfast.files.atomic_path`` names
    them ``.<name>.<random><suffix>``); the number removed."""
    removed = 0
    if path.parent.is_dir():
        for left in path.parent.glob(f".{path.name}.*{path.suffix}"):
            left.unlink(missing_ok=True)
            removed += 1
    return removed
