"""Many spectra files in, one catalogue per file, a manifest and optionally one merged catalogue out:
``predict_files`` (``zfast-predict`` with several inputs, a folder, a glob or a list, or a folder as --output).

Each input's catalogue is ``<output>/<its path below the inputs' common folder>`` with ``.zfast.<format>`` for its
spectra suffix, written atomically by ``zfast.survey.jobs.run_job``; ``manifest.jsonl`` records every outcome as
it happens (``zfast.survey.manifest``). The catalogues depend only on the model, the options and the input: the
same bytes from one process or many Dask workers, in any order. Inputs run in this process, one after another,
or on Dask (``workers``: a local cluster; ``scheduler``: an existing one; ``zfast.survey.engine``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

from .inputs import catalogue_names, expand_inputs
from .jobs import Job, remove_leftovers, run_job, worker_model
from .manifest import Manifest, header
from .merge import merge_catalogues

FORMATS = (".fits", ".csv", ".parquet")
# The options that change a catalogue's bytes, kept in the manifest's header (batch_size and the engine do not).
CATALOGUE_OPTIONS = ("pz", "air", "flux_unit", "min_valid", "input_format", "reader_options")


class SurveyRun(NamedTuple):
    """What ``predict_files`` did: inputs found, done now, skipped (complete from an earlier run), failed (with
    [(input, error)]), spectra predicted now, the merged catalogue (None if not asked or not written)."""

    n_inputs: int
    n_done: int
    n_skipped: int
    n_failed: int
    n_spectra: int
    failures: list
    merged: Optional[Path]


class Progress:
    """Files and spectra done, their rate and the failures: one rewritten line on a terminal, a line every
    ``every`` seconds otherwise (batch logs); each failure on its own line at once."""

    def __init__(self, total: int, skipped: int, show: bool, every: float = 30.0):
        self.total, self.done, self.spectra, self.failed = total, skipped, 0, 0
        self.show, self.tty, self.every = show, sys.stderr.isatty(), every
        self.started = self.last = time.perf_counter()

    def update(self, entry: dict) -> None:
        self.done += 1
        if entry["status"] == "done":
            self.spectra += entry["n_spectra"]
        else:
            self.failed += 1
            print(f"{'' if not self.tty else chr(13)}zfast-predict: {entry['input']}: {entry['error']}", file=sys.stderr)
        now = time.perf_counter()
        if self.show and (self.tty or now - self.last >= self.every or self.done == self.total):
            self.last = now
            line = (f"{self.done:,}/{self.total:,} files  {self.spectra:,} spectra  "
                    f"{self.spectra / max(1e-9, now - self.started):,.0f}/s  {self.failed:,} failed")  # fmt: skip
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)

    def close(self) -> None:
        if self.show and self.tty:
            print(file=sys.stderr)


def _format_of(catalogue_format: str, merge) -> str:
    suffix = ("." + catalogue_format.lstrip(".")).lower()
    if suffix not in FORMATS:
        raise ValueError(f"--catalogue-format {catalogue_format!r}: use fits, csv or parquet")
    if merge is not None and Path(merge).suffix.lower() != suffix:
        raise ValueError(f"--merge {merge}: the catalogues are {suffix} files: merge into a {suffix} file")
    return suffix


def _output_folder(output) -> Path:
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {folder}: the folder is not writable")
    return folder


def plan_jobs(checkpoints, inputs, folder: Path, suffix: str, device: str, options: dict, templates, template_points,
              threads: Optional[int] = None) -> list:  # fmt: skip
    """(label, Job) per input, in input order; label is the input's path below the inputs' common folder."""
    names = catalogue_names(inputs, suffix)
    jobs = []
    for path, name in zip(inputs, names):
        target = Path(folder) / name
        label = str(name.with_name(path.name))
        jobs.append((label, Job(str(path), str(target), tuple(checkpoints), device, dict(options), templates, template_points, threads)))
    return jobs


def predict_files(checkpoints, inputs, output, *, catalogue_format: str = "fits", merge=None, resume: bool = False,
                  overwrite: bool = False, workers: Optional[int] = None, scheduler: Optional[str] = None,
                  device: str = "auto", templates=None, template_points: Optional[int] = None,
                  progress: Optional[bool] = None, **options) -> SurveyRun:  # fmt: skip
    """Predict every spectrum of every input (``zfast.survey.inputs``) into ``output`` (a folder), one catalogue per
    input, and with ``merge`` one merged catalogue of them all (written only when no input failed). ``resume``:
    keep the inputs the folder's manifest says are complete; ``overwrite``: redo every input. ``options``: as
    ``predict_file``'s (pz, air, flux_unit, batch_size, min_valid, input_format, reader_options)."""
    checkpoints = [str(Path(c).resolve()) for c in ([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints)]
    for path in checkpoints:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {path}: no such file")
    suffix = _format_of(catalogue_format, merge)
    if merge is not None and Path(merge).exists() and not (resume or overwrite):
        raise FileExistsError(f"--merge {merge} exists (--overwrite to replace it, or --resume to finish that run)")
    inputs = expand_inputs(inputs)
    if Path(output).exists() and not Path(output).is_dir():
        raise NotADirectoryError(f"--output {output}: several inputs write one catalogue each into a folder; this is a file")
    threads = None if not (workers or scheduler) else max(1, (os.cpu_count() or 1) // max(1, workers or 1))
    planned = plan_jobs(checkpoints, inputs, Path(output).resolve(), suffix, device, options, templates, template_points,
                        threads if scheduler is None else None)  # fmt: skip
    # A model that cannot load, or options it cannot take, fail here, before anything is written, not once per file.
    model, _ = worker_model(planned[0][1] if not (workers or scheduler) else dataclasses.replace(planned[0][1], device="cpu"))
    if options.get("pz") and model.estimator == "regression":
        raise ValueError("--pz: a regression model has no P(z)")
    folder = _output_folder(output).resolve()
    wanted = {k: options.get(k) for k in CATALOGUE_OPTIONS} | {"templates": templates, "template_points": template_points,
                                                               "catalogue_format": suffix}  # fmt: skip
    manifest = Manifest.open(folder, header(checkpoints, wanted), resume=resume, overwrite=overwrite)
    todo = []
    for _, job in planned:
        remove_leftovers(Path(job.catalogue))
        if not (resume and manifest.complete(job.input, Path(job.catalogue))):
            todo.append(job)
    tracker = Progress(len(planned), len(planned) - len(todo), sys.stderr.isatty() if progress is None else progress)
    done, spectra, failures = 0, 0, []
    try:
        for entry in _results(todo, workers, scheduler):
            entry["catalogue"] = os.path.relpath(entry["catalogue"], folder)  # the folder can move with its manifest
            manifest.record(entry)
            tracker.update(entry)
            if entry["status"] == "done":
                done, spectra = done + 1, spectra + entry["n_spectra"]
            else:
                failures.append((entry["input"], entry["error"]))
    finally:
        tracker.close()
    for _, job in planned:  # what writers killed in this run left (a dead Dask worker's half-written table)
        remove_leftovers(Path(job.catalogue))
    merged = None
    if merge is not None and not failures:
        merge_catalogues([(label, Path(job.catalogue)) for label, job in planned], Path(merge))
        merged = Path(merge)
    return SurveyRun(len(planned), done, len(planned) - len(todo), len(failures), spectra, failures, merged)


def _results(jobs: list, workers: Optional[int], scheduler: Optional[str]):
    """Each job's manifest entry as it finishes: here, in order, or from Dask as the workers finish them."""
    if not jobs:
        return
    if workers or scheduler:
        from .engine import dask_results

        yield from dask_results(jobs, scheduler=scheduler, workers=workers)
        return
    for job in jobs:
        yield run_job(job)
