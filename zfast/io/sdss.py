"""SDSS spec and spec-lite files (``spec-PLATE-MJD-FIBER.fits``, DR8 and later, BOSS and SDSS-V): one spectrum a file.

Layout (the SDSS data model of ``spec``): HDU 1 ``COADD``, a table of one row per pixel with ``loglam`` (log10 of
the vacuum wavelength in Å), ``flux`` (10⁻¹⁷ erg/s/cm²/Å, f_λ: kept as is), ``ivar``, ``and_mask`` (a bit set in
every exposure: the pixel is bad), and ``or_mask``, ``wdisp``, ``sky``, ``model`` (not read); HDU 2 ``SPECOBJ``
(``SPALL`` in SDSS-V), one row describing the spectrum. ``SPZLINE`` and the per-exposure HDUs are not read.

A pixel is used when ``and_mask`` == 0, ``ivar`` > 0 and both flux and ivar are finite; others get flux NaN and
ivar 0, and a spectrum with no used pixel is ``bad``. The id is the SPECOBJ row's ``SPECOBJID`` (an integer,
parsed from its text where stored as digits), else its ``TARGETID``, else the text PLATE-MJD-FIBER.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..units import angstrom_per_unit
from .formats import Chunk, Format, damaged, is_fits, open_fits
from .spectra import damaged_errors

COADD_COLUMNS = ("loglam", "flux", "ivar", "and_mask")
OBJECT_HDUS = ("SPECOBJ", "SPALL")


def spectrum_id(row, names: dict):
    """The id of a SPECOBJ row (module docstring): ``names`` maps upper-case column names to the file's own."""
    for key in ("SPECOBJID", "TARGETID"):
        if key in names:
            value = row[names[key]]
            text = value.decode() if isinstance(value, bytes) else str(value)
            text = text.strip()
            if re.fullmatch(r"\d+", text):
                number = int(text)
                return np.int64(number) if number < 2**63 else np.uint64(number)
            if re.fullmatch(r"-\d+", text):
                return np.int64(int(text))
            if text:
                return text
    if all(k in names for k in ("PLATE", "MJD", "FIBERID")):
        return f"{int(row[names['PLATE']]):04d}-{int(row[names['MJD']]):05d}-{int(row[names['FIBERID']]):04d}"
    return None


def loglam_factor(unit, where: str) -> float:
    """Å per unit of 10**loglam: ``unit`` blank (Å, the data model's), or 'log(Angstrom)'-like, or 'Angstrom'."""
    text = "" if unit is None else re.sub(r"\s+", "", str(unit))
    inner = re.fullmatch(r"(?i)(?:log|log10|lg)\((.*)\)", text)
    return angstrom_per_unit(inner.group(1) if inner else (text or None), where)


class SdssFile:
    """An SDSS spec or spec-lite file (module docstring), opened and checked: ``n_spectra`` 1 (the reader contract
    of ``zfast.io.formats``). ``options`` are ignored."""

    format = "sdss"
    knows_units = True
    n_spectra = 1

    def __init__(self, path, **options):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such input file")
        self._hdul = None
        try:
            self._hdul = open_fits(self.path)
            self._read()
        except ImportError:
            raise
        except damaged_errors() as error:
            self.close()
            if isinstance(error, ValueError) and str(error).startswith(str(self.path)):
                raise  # ours: already names the file and what is wrong
            raise damaged(self.path, error, "SDSS spec") from error
        finally:
            self.close()  # everything is read: one spectrum is small

    def _table(self, names: tuple, what: str):
        found = [str(h.name).upper() for h in self._hdul]
        for name in names:
            if name in found:
                hdu = self._hdul[name]
                if hasattr(hdu, "columns"):
                    return hdu
                raise ValueError(f"{self.path}: HDU {name} ({what}) is not a table")
        raise ValueError(f"{self.path}: no HDU {' or '.join(names)} ({what}); found {', '.join(n for n in found if n)}")

    def _read(self):
        """Reads the COADD columns and the id; the arrays of the one spectrum [M] float64."""
        coadd = self._table(("COADD",), "the coadded spectrum")
        columns = {n.lower(): n for n in coadd.columns.names}
        missing = [c for c in COADD_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{self.path}: HDU COADD has no column {', '.join(missing)}; found {list(coadd.columns.names)}")
        data = coadd.data
        if data is None or len(data) < 2:
            raise ValueError(f"{self.path}: HDU COADD has {0 if data is None else len(data)} pixels, need >= 2")
        column = coadd.columns[columns["loglam"]]
        factor = loglam_factor(column.unit, f"{self.path}: HDU COADD, column {column.name}")
        self._wave = factor * 10.0 ** np.asarray(data[columns["loglam"]], dtype=np.float64)
        if not (np.all(np.isfinite(self._wave)) and np.all(np.diff(self._wave) > 0)):
            raise ValueError(f"{self.path}: HDU COADD, column {column.name}: wavelengths must be finite and increasing")
        flux = np.asarray(data[columns["flux"]], dtype=np.float64)
        ivar = np.asarray(data[columns["ivar"]], dtype=np.float64)
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (np.asarray(data[columns["and_mask"]]) == 0)
        self._flux, self._ivar = np.where(good, flux, np.nan), np.where(good, ivar, 0.0)
        specobj = self._table(OBJECT_HDUS, "the spectrum's description")
        names = {n.upper(): n for n in specobj.columns.names}
        if specobj.data is None or len(specobj.data) < 1:
            raise ValueError(f"{self.path}: HDU {specobj.name} has no row (need one describing the spectrum)")
        self._id = spectrum_id(specobj.data[0], names)
        if self._id is None:
            raise ValueError(f"{self.path}: HDU {specobj.name} has no id column (SPECOBJID, TARGETID or PLATE, MJD, "
                             f"FIBERID); found {list(specobj.columns.names)}")  # fmt: skip

    def close(self):
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wavelength(self) -> np.ndarray:
        """The spectrum's grid [M] float64, vacuum Å (10**loglam)."""
        return self._wave.copy()

    def chunks(self, size: int) -> Iterator[Chunk]:
        """One ``Chunk``: ids [1], the grid [M], flux and ivar [1, M] float64 (NaN / 0 at bad pixels), bad [1]."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        yield Chunk(np.asarray([self._id]), self._wave.copy(), self._flux[None].copy(), self._ivar[None].copy(),
                    np.asarray([not (self._ivar > 0).any()]))  # fmt: skip


def _sniff(probe) -> bool:
    """A FITS file with HDUs COADD and SPECOBJ (or SPALL): never zfast's own layout nor a Euclid SIR file."""
    if not is_fits(probe.path):
        return False
    names = probe.extnames()
    if "COADD" not in names or not any(n in names for n in OBJECT_HDUS):
        return False
    primary = probe.primary()
    return primary is None or not str(primary.get("FITS_DEF", "")).lower().startswith("sir.")


FORMAT = Format("sdss", "an SDSS spec/spec-lite FITS file: HDUs COADD (loglam, flux, ivar, and_mask) and SPECOBJ",
                _sniff, SdssFile)  # fmt: skip
