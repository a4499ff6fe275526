"""A spectra file in, a redshift table out: ``predict_file`` (what ``zfast-predict`` runs)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..files import atomic_path
from ..flags import MIN_VALID, any_flag
from ..predict import COLUMNS, TEMPLATE_COLUMNS, Model, check_coverage, load_templates, predict_batch
from .readers import open_spectra
from .tables import TABLES, open_table


def _checked_output(output_path, overwrite: bool, pz: bool, model: Model) -> Path:
    """``output_path`` checked before any work: a known format, a folder that exists and can be written, and not
    an existing file unless ``overwrite`` (never a folder)."""
    output_path = Path(output_path)
    if output_path.suffix.lower() not in TABLES:
        raise ValueError(f"{output_path}: unknown output format (use .csv or .fits)")
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


def predict_file(model: Model, input_path, output_path, *, pz: bool = False, air: bool = False, flux_unit: str = "flam",
                 batch_size: int = 1024, min_valid: float = MIN_VALID, overwrite: bool = False,
                 progress: Optional[bool] = None, templates=None, input_format: Optional[str] = None,
                 reader_options: Optional[dict] = None) -> int:  # fmt: skip
    """Predict every spectrum of ``input_path`` (``SpectraFile``) and write the table to ``output_path`` (.csv or
    .fits), atomically: nothing appears under the name, and nothing is left behind, unless the whole file is done.
    Returns the number of spectra. ``templates``: as ``zfast.predict``'s (adds the template-fit columns)."""
    output_path = _checked_output(output_path, overwrite, pz, model)
    progress = sys.stderr.isatty() if progress is None else progress
    templates = load_templates(templates, model)
    columns = COLUMNS + (TEMPLATE_COLUMNS if templates is not None else ())
    done, flagged, started = 0, 0, time.perf_counter()
    with open_spectra(input_path, input_format, **(reader_options or {})) as source:
        if source.knows_units:
            air, flux_unit = False, "flam"
        check_coverage(model, source.wavelength(), min_valid, air)
        with atomic_path(output_path, make_parents=False, exclusive=not overwrite) as temporary:
            table = open_table(temporary, output_path.suffix.lower(), pz, columns)
            try:
                for ids, wave, flux, ivar, bad in source.chunks(batch_size):
                    result = predict_batch(model, wave, flux, ivar, air=air, flux_unit=flux_unit, pz=pz,
                                           min_valid=min_valid, templates=templates)  # fmt: skip
                    table.write(ids, result)
                    done += len(ids)
                    flagged += int(any_flag(result).sum())
                    if progress:
                        rate = done / max(1e-9, time.perf_counter() - started)
                        print(f"\r{done:,}/{source.n_spectra:,} spectra  {rate:,.0f}/s", end="", file=sys.stderr)
                table.finish(model)
            finally:
                table.close()
    if progress:
        print(file=sys.stderr)
    print(f"{done:,} spectra -> {output_path} ({flagged:,} flagged)", file=sys.stderr)
    return done
