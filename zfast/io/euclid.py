"""Euclid SIR combined 1D spectra: the per-tile file and the single-object table (built from the archive's
published data model: no real file could be had here, see docs/euclid_sir.md).

Tile (``FITS_DEF = 'sir.combinedSpectra'`` in the primary header): for each object ``<k>`` (its index in the file,
not its id) a ``<k>_META`` table (``OBJ_ID``, ...) and a ``<k>_COMBINED1D_SIGNAL`` table (``WAVELENGTH`` [Å, its
TUNIT honoured], ``SIGNAL``, ``MASK``, ``QUALITY``, ``VAR``, ``NDITH``; header ``FSCALE``); the per-dither
``<k>_DITH1D_*`` HDUs are not the combined spectrum and are not read. Groups are found from EXTNAME, in any order.
flux = SIGNAL·FSCALE, variance = VAR·FSCALE². A pixel is unusable when ``MASK & sir_bad_bits`` (default: NOT_USE = 1
and ABS_FLUX = 64 and above; LOW_SNR = 2 is kept, its variance weighs it), VAR <= 0 or non-finite, or SIGNAL
non-finite. An object whose tables are missing or empty is yielded as a ``bad`` row (its id from META, else -1).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..units import to_angstrom
from .desi import damaged, open_fits
from .formats import Chunk, Format, padded_rows
from .spectra import damaged_errors

DEFAULT_BAD_BITS = 1 | ~63  # NOT_USE (bit 0) and ABS_FLUX (bit 6) and every bit above
SIGNAL_COLUMNS = ("WAVELENGTH", "SIGNAL", "MASK", "VAR")
_GROUP = re.compile(r"^(\d+)_(META|COMBINED1D_SIGNAL)$")


def _open_fits(path: Path):
    """``path`` read with every header (a truncated file refused); a one-line ValueError naming it if damaged."""
    try:
        return open_fits(path)
    except damaged_errors() as error:
        raise damaged(path, error, "Euclid SIR") from error


def spectrum_of(path: Path, hdu, bad_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength [M] Å, flux [M], ivar [M]) float64 of one COMBINED1D_SIGNAL table (the module's rules)."""
    names = {n.upper(): n for n in hdu.columns.names}
    missing = [c for c in SIGNAL_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: HDU {hdu.name} has no column {', '.join(missing)} (a SIR signal table needs {', '.join(SIGNAL_COLUMNS)})")
    data = hdu.data
    unit = hdu.columns[names["WAVELENGTH"]].unit
    wave = to_angstrom(np.asarray(data[names["WAVELENGTH"]], dtype=np.float64).ravel(), unit, f"{path}: HDU {hdu.name}, column WAVELENGTH")
    scale = float(hdu.header.get("FSCALE", 1.0))
    signal = np.asarray(data[names["SIGNAL"]], dtype=np.float64).ravel() * scale
    var = np.asarray(data[names["VAR"]], dtype=np.float64).ravel() * scale**2
    mask = np.asarray(data[names["MASK"]]).astype(np.int64).ravel()
    good = ((mask & bad_bits) == 0) & np.isfinite(var) & (var > 0) & np.isfinite(signal)
    return wave, np.where(good, signal, np.nan), np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)


class SIRTile:
    """A Euclid SIR per-tile combined-spectra file (module docstring; the reader contract of zfast.io.formats)."""

    format = "euclid-sir"
    knows_units = True

    def __init__(self, path, sir_bad_bits: int = DEFAULT_BAD_BITS, **options):
        self.path, self.bad_bits = Path(path), int(sir_bad_bits)
        self.hdul = _open_fits(self.path)
        groups: dict = {}
        for index, hdu in enumerate(self.hdul):
            match = _GROUP.match(str(hdu.name).upper())
            if match:
                groups.setdefault(int(match.group(1)), {})[match.group(2)] = index
        if not groups:
            self.close()
            raise ValueError(f"{self.path}: a SIR tile with no <k>_META / <k>_COMBINED1D_SIGNAL HDUs")
        self.objects = [groups[k] for k in sorted(groups)]
        n_obj = self.hdul[0].header.get("N_OBJ")
        if n_obj is not None and int(n_obj) != len(self.objects):
            warnings.warn(f"{self.path}: N_OBJ = {n_obj} but {len(self.objects)} objects found; reading those found", stacklevel=2)
        self.n_spectra = len(self.objects)

    def _object(self, group: dict):
        """(id, spectrum or None) of one object; None when its signal table is missing or empty."""
        obj_id = -1
        if "META" in group and self.hdul[group["META"]].data is not None and len(self.hdul[group["META"]].data):
            meta = self.hdul[group["META"]]
            names = {n.upper(): n for n in meta.columns.names}
            if "OBJ_ID" in names:
                obj_id = int(meta.data[names["OBJ_ID"]][0])
        hdu = self.hdul[group["COMBINED1D_SIGNAL"]] if "COMBINED1D_SIGNAL" in group else None
        if hdu is None or hdu.data is None or len(hdu.data) == 0 or "META" not in group:
            return obj_id, None
        return obj_id, spectrum_of(self.path, hdu, self.bad_bits)

    def wavelength(self) -> np.ndarray:
        """The first readable object's grid, widened to the range of every object's (for the coverage check)."""
        lo, hi, grid = np.inf, -np.inf, None
        for group in self.objects:
            _, spectrum = self._object(group)
            if spectrum is not None:
                grid = spectrum[0] if grid is None else grid
                lo, hi = min(lo, spectrum[0][0]), max(hi, spectrum[0][-1])
        if grid is None:
            return np.linspace(11900.0, 19000.0, 531)  # nothing readable: every row comes out bad
        step = float(np.median(np.diff(grid)))
        return np.arange(lo, hi + 0.5 * step, step)

    def chunks(self, size: int):
        for start in range(0, self.n_spectra, size):
            ids, grids, fluxes, ivars, bad = [], [], [], [], []
            for group in self.objects[start:start + size]:
                obj_id, spectrum = self._object(group)
                ids.append(obj_id)
                bad.append(spectrum is None)
                if spectrum is not None:
                    grids.append(spectrum[0]), fluxes.append(spectrum[1]), ivars.append(spectrum[2])
                else:
                    grids.append(None), fluxes.append(None), ivars.append(None)
            template = next((g for g in grids if g is not None), self.wavelength())
            for i, g in enumerate(grids):
                if g is None:
                    grids[i], fluxes[i], ivars[i] = template, np.full(template.shape, np.nan), np.zeros(template.shape)
            wave, flux, ivar = padded_rows(grids, fluxes, ivars)
            yield Chunk(np.asarray(ids, dtype=np.int64), wave, flux, ivar, np.asarray(bad))

    def close(self):
        self.hdul.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SIRSingle(SIRTile):
    """A single-object SIR table (FITS: the first binary table with the SIGNAL columns; OBJ_ID from its header or
    the primary's, else 0)."""

    format = "euclid-sir-single"

    def __init__(self, path, sir_bad_bits: int = DEFAULT_BAD_BITS, **options):
        self.path, self.bad_bits = Path(path), int(sir_bad_bits)
        self.hdul = _open_fits(self.path)
        self.table = next((i for i, h in enumerate(self.hdul) if _has_signal(h)), None)
        if self.table is None:
            self.close()
            raise ValueError(f"{self.path}: no binary table with the SIR columns {', '.join(SIGNAL_COLUMNS)}")
        self.n_spectra = 1

    def wavelength(self) -> np.ndarray:
        return spectrum_of(self.path, self.hdul[self.table], self.bad_bits)[0]

    def chunks(self, size: int):
        hdu = self.hdul[self.table]
        obj_id = int(hdu.header.get("OBJ_ID", self.hdul[0].header.get("OBJ_ID", 0)))
        wave, flux, ivar = spectrum_of(self.path, hdu, self.bad_bits)
        yield Chunk(np.array([obj_id], dtype=np.int64), wave, flux[None], ivar[None], np.array([not (ivar > 0).any()]))


def _has_signal(hdu) -> bool:
    columns = getattr(hdu, "columns", None)
    return columns is not None and all(c in {n.upper() for n in columns.names} for c in SIGNAL_COLUMNS)


def _sniff_tile(probe) -> bool:
    header = probe.primary()
    return header is not None and str(header.get("FITS_DEF", "")).startswith("sir.combinedSpectra")


def _sniff_single(probe) -> bool:
    if not probe.fits or _sniff_tile(probe):
        return False
    from astropy.io import fits

    try:
        with fits.open(probe.path, memmap=True) as hdul:
            return any(_has_signal(h) for h in hdul[:4])
    except (OSError, ValueError, TypeError, EOFError):
        return False


FORMAT = Format("euclid-sir", "FITS primary header FITS_DEF = 'sir.combinedSpectra' (a SIR per-tile file)", _sniff_tile, SIRTile)
SINGLE_FORMAT = Format("euclid-sir-single", "a FITS binary table with WAVELENGTH, SIGNAL, MASK, VAR columns (one SIR spectrum)",
                       _sniff_single, SIRSingle)  # fmt: skip
