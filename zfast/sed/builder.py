"""Building a library file: draw the parameters, evaluate the SEDs, measure EW(Hα), save the library and its
provenance (``<stem>.provenance.json`` beside it). Libraries are data: usable without bagpipes
(``SEDLibrary.default()`` ships one)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import platform
import time
from typing import Optional

import numpy as np
import torch

from ..data.lines import EW_HALPHA_DEFINITION, WEAK_LINE_EW, halpha_equivalent_width
from ..data.sed_library import SEDLibrary
from ..files import atomic_path, write_text
from .recipe import DLN, BuildConfig, draw_parameters
from .synthesis import bagpipes_version, synthesise


def provenance_path(out) -> pathlib.Path:
    """Where ``build`` writes the provenance of library ``out``: ``<stem>.provenance.json`` beside it."""
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".provenance.json")


def check_build_config(config: BuildConfig) -> None:
    """ValueError naming the option of ``config`` that is out of range."""
    if config.n < 1:
        raise ValueError(f"--n must be >= 1, got {config.n}")
    if config.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {config.workers}")
    if not 2000.0 <= config.wave_min < config.wave_max <= 30000.0:
        raise ValueError(f"need 2000 <= wave_min < wave_max <= 30000 Å, got {config.wave_min}, {config.wave_max}")


def compress_npz(path: pathlib.Path) -> None:
    """Rewrite an npz file zip-compressed (same arrays), atomically."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **arrays)


def zfast_version() -> str:
    from .. import __version__

    return __version__


def provenance_record(config: BuildConfig, command: Optional[str], parameters: dict, wavelength: np.ndarray,
                      ew: np.ndarray, seconds: float, file_bytes: int) -> dict:  # fmt: skip
    """The provenance of a built library: how it was made (command, config, versions, date) and what it holds."""
    types, counts = np.unique(parameters["sfh_type"], return_counts=True)
    return {
        "command": command or f"zfast-sed build --n {config.n} --seed {config.seed} --out {config.out}",
        "config": dataclasses.asdict(config),
        "n_seds": config.n,
        "seed": config.seed,
        "bagpipes_version": bagpipes_version(),
        "zfast_version": zfast_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "rest_grid": {
            "wavelength": "vacuum Å, rest frame",
            "first_centre": float(wavelength[0]), "last_centre": float(wavelength[-1]),
            "dln": DLN, "n_pixels": len(wavelength),
        },  # fmt: skip
        "flux": f"f_λ of each SED divided by its median over the grid, stored as {config.dtype}",
        "ew_halpha": EW_HALPHA_DEFINITION,
        "counts_per_sfh_type": {str(t): int(c) for t, c in zip(types, counts)},
        "weak_line_fraction": float(np.mean(ew < WEAK_LINE_EW)),
        "weak_line_fraction_per_sfh_type": {
            str(t): round(float(np.mean(ew[parameters["sfh_type"] == t] < WEAK_LINE_EW)), 3) for t in types
        },
        "weak_line_threshold_ew_halpha": WEAK_LINE_EW,
        "file_bytes": file_bytes,
    }


def build(config: BuildConfig, *, command: Optional[str] = None, progress: bool = True) -> SEDLibrary:
    """Draw, evaluate, measure and save a library (``config.out``) and its provenance file. Returns the library.

    npz outputs are written zip-compressed (``SEDLibrary.load`` reads either); ``config.dtype`` "float16" is
    safe because the SEDs are normalised by their median. From a script with ``config.workers`` > 1, call it
    under ``if __name__ == "__main__":``: the worker processes are spawned and import the script again.
    """
    started = time.monotonic()
    check_build_config(config)
    parameters = draw_parameters(config.n, config.seed, config.recipe, config.z_max)
    wavelength, flux, derived = synthesise(parameters, config, progress)
    ew = halpha_equivalent_width(wavelength, flux)
    library = SEDLibrary(wavelength, flux, params=dict(parameters, **derived, ew_halpha=ew))
    out = pathlib.Path(config.out)
    library.save(out, dtype=config.dtype)
    if out.suffix.lower() == ".npz":
        compress_npz(out)
    record = provenance_record(config, command, parameters, wavelength, ew, time.monotonic() - started, out.stat().st_size)
    write_text(provenance_path(out), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return library
