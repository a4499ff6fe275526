"""A spectra file in, a redshift table out: ``predict_file`` (what ``zfast-predict`` runs)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from typing import NamedTuple, Optional

from ..files import atomic_path
from ..flags import BIT, MIN_VALID
from ..predict import Model, Templates, check_coverage, load_templates, predict_batch
from .readers import open_spectra
from .tables import TABLES, catalogue_columns, open_table


def checked_output(output_path, overwrite: bool, pz: bool, model: Model) -> Path:
    """``output_path`` checked before any work: a known format, a folder that exists and can be written, and not
    an existing file unless ``overwrite`` (never a folder)."""
    output_path = Path(output_path)
    if output_path.suffix.lower() not in TABLES:
        raise ValueError(f"{output_path}: unknown output format (use .csv, .fits or .parquet)")
    if output_path.is_dir():
        raise IsADirectoryError(f"{output_path} is a folder; give the table's file name")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists (--overwrite to replace it)")
    folder = output_path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{output_path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{output_path}: the folder {folder} is not writable")
    if pz and model.estimator == "regression":
        raise ValueError("--pz: a regression model has no P(z)")
    return output_path


def _warn_duplicates(ids, seen: set, path) -> bool:
    """Record ``ids`` in ``seen``; warn (once: the caller stops calling) when one repeats. Every row is kept."""
    values = [i.item() if hasattr(i, "item") else i for i in ids]
    counts = Counter(values)
    repeated = next((v for v in values if v in seen or counts[v] > 1), None)
    seen.update(values)
    if repeated is not None:
        warnings.warn(f"{path}: duplicate TARGETID {repeated!r} (every row is kept; later duplicates not warned)", stacklevel=3)
    return repeated is not None


class Written(NamedTuple):
    """What ``write_catalogue`` wrote: spectra (rows) and how many of them have ZWARN != 0."""

    n_spectra: int
    n_flagged: int


def predict_file(model: Model, input_path, output_path, *, pz: bool = False, air: bool = False, flux_unit: str = "flam",
                 batch_size: int = 1024, min_valid: float = MIN_VALID, overwrite: bool = False,
                 progress: Optional[bool] = None, templates=None, template_points: Optional[int] = None,
                 input_format: Optional[str] = None,
                 reader_options: Optional[dict] = None) -> int:  # fmt: skip
    """Predict every spectrum of ``input_path`` and write the catalogue to ``output_path`` (.csv, .fits or .parquet;
    ``zfast.io.tables``), atomically: nothing appears under the name, and nothing is left behind, unless the whole
    file is done. Returns the number of spectra. The reader is chosen from the file (``zfast.io.readers``), or by
    ``input_format``; ``reader_options`` go to it (e.g. ``sir_bad_bits``). Survey readers know their units, so
    ``air`` and ``flux_unit`` apply only to zfast's own layout. ``templates``, ``template_points``: as
    ``zfast.predict``'s (adds the template-fit columns and ZWARN's FIT_DISAGREES)."""
    output_path = checked_output(output_path, overwrite, pz, model)
    progress = sys.stderr.isatty() if progress is None else progress
    written = write_catalogue(model, input_path, output_path, pz=pz, air=air, flux_unit=flux_unit, batch_size=batch_size,
                              min_valid=min_valid, overwrite=overwrite, progress=progress,
                              templates=load_templates(templates, model, template_points), input_format=input_format,
                              reader_options=reader_options)  # fmt: skip
    print(f"{written.n_spectra:,} spectra -> {output_path} ({written.n_flagged:,} flagged)", file=sys.stderr)
    return written.n_spectra


def _checked_units(source, model: Model, min_valid: float, air: bool, flux_unit: str) -> tuple:
    """(air, flux_unit) for ``source``: a survey reader's own units win (with a warning if the user gave others);
    the coverage check, its error naming the instrument when a survey file is from another one."""
    if source.knows_units:
        if air or flux_unit != "flam":
            warnings.warn(f"{source.path}: --air / --flux-unit ignored: the {source.format} reader knows its file's units", stacklevel=3)
        air, flux_unit = False, "flam"
    try:
        check_coverage(model, source.wavelength(), min_valid, air)
    except ValueError as error:
        if not source.knows_units:
            raise
        raise ValueError(f"{source.path} ({source.format} file): {str(error).split(' (are the')[0]}; this model was trained "
                         f"for {model.instrument.name}: predicting these spectra needs a model trained for their "
                         "instrument (docs/training.md)") from error  # fmt: skip
    return air, flux_unit


def write_catalogue(model: Model, input_path, output_path: Path, *, templates: Optional[Templates], pz: bool = False,
                    air: bool = False, flux_unit: str = "flam", batch_size: int = 1024, min_valid: float = MIN_VALID,
                    overwrite: bool = False, progress: bool = False, input_format: Optional[str] = None,
                    reader_options: Optional[dict] = None) -> Written:  # fmt: skip
    """``predict_file``'s work, for a checked ``output_path`` and ``templates`` already loaded (``load_templates``):
    shared by ``predict_file`` and the many-file runs of ``zfast.survey``. Prints only the progress line."""
    columns = catalogue_columns(templates is not None)
    done, flagged, started, seen, duplicated = 0, 0, time.perf_counter(), set(), False
    with open_spectra(input_path, input_format, **(reader_options or {})) as source:
        air, flux_unit = _checked_units(source, model, min_valid, air, flux_unit)
        with atomic_path(output_path, make_parents=False, exclusive=not overwrite) as temporary:
            table = open_table(temporary, output_path.suffix.lower(), pz, columns)
            try:
                for ids, wave, flux, ivar, bad in source.chunks(batch_size):
                    result = predict_batch(model, wave, flux, ivar, air=air, flux_unit=flux_unit, pz=pz,
                                           min_valid=min_valid, templates=templates)  # fmt: skip
                    if bad is not None:  # the file's entry was unusable: flagged, never dropped
                        result["zwarn"] = result["zwarn"] | (torch.as_tensor(bad) * BIT["NODATA"])
                    duplicated = duplicated or _warn_duplicates(ids, seen, source.path)
                    table.write(ids, result)
                    done += len(ids)
                    flagged += int((result["zwarn"] != 0).sum())
                    if progress:
                        rate = done / max(1e-9, time.perf_counter() - started)
                        print(f"\r{done:,}/{source.n_spectra:,} spectra  {rate:,.0f}/s", end="", file=sys.stderr)
                table.finish(model)
            finally:
                table.close()
    if progress:
        print(file=sys.stderr)
    return Written(done, flagged)
