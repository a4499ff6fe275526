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
from .fitsindex import FitsIndex, FitsStructureError
from .formats import Chunk, Format, damaged, open_fits, padded_rows
from .spectra import damaged_errors

DEFAULT_BAD_BITS = 1 | ~63  # NOT_USE (bit 0) and ABS_FLUX (bit 6) and every bit above
SIGNAL_COLUMNS = ("WAVELENGTH", "SIGNAL", "MASK", "VAR")
_GROUP = re.compile(r"^(\d+)_(META|COMBINED1D_SIGNAL)$")
_GROUP_BYTES = rb"(?i:(\d+)_(META|COMBINED1D_SIGNAL))"


def _open_fits(path: Path):
    """``path`` read with every header (a truncated file refused); a one-line ValueError naming it if damaged."""
    try:
        return open_fits(path)
    except damaged_errors() as error:
        raise damaged(path, error, "Euclid SIR") from error


def spectrum_of(path: Path, hdu, bad_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength [M] Å, flux [M], ivar [M]) float64 of one COMBINED1D_SIGNAL table (the module's rules)."""
    names = {n.upper(): n for n in hdu.columns.names}
    columns = {c: hdu.data[names[c]] for c in SIGNAL_COLUMNS if c in names}
    unit = hdu.columns[names["WAVELENGTH"]].unit if "WAVELENGTH" in names else None
    return signal_arrays(f"{path}: HDU {hdu.name}", columns, unit, float(hdu.header.get("FSCALE", 1.0)), bad_bits)


def signal_arrays(where: str, columns: dict, unit, scale: float, bad_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength [M] Å, flux [M], ivar [M]) float64 from a SIR table's columns (by upper-case name) and FSCALE
    (the module's mask rule); ``where`` names the table in errors."""
    require_columns(where, columns)
    wave = to_angstrom(np.asarray(columns["WAVELENGTH"], dtype=np.float64).ravel(), unit, f"{where}, column WAVELENGTH")
    signal = np.array(columns["SIGNAL"], dtype=np.float64).ravel()
    var = np.array(columns["VAR"], dtype=np.float64).ravel()
    flux, ivar = apply_mask_rule(signal, var, np.asarray(columns["MASK"]).astype(np.int64).ravel(), scale, bad_bits)
    return wave, flux, ivar


def require_columns(where: str, names) -> None:
    """ValueError naming ``where`` and the SIR signal columns missing from ``names`` (upper case)."""
    missing = [c for c in SIGNAL_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{where} has no column {', '.join(missing)} (a SIR signal table needs {', '.join(SIGNAL_COLUMNS)})")


def apply_mask_rule(signal: np.ndarray, var: np.ndarray, mask: np.ndarray, scale, bad_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar) of SIR pixels, any shape, float64, computed in place of ``signal`` and ``var``: flux =
    SIGNAL·FSCALE and ivar = 1/(VAR·FSCALE²) (``scale`` broadcasts), NaN and 0 where ``mask & bad_bits``, VAR <= 0
    or not finite, or SIGNAL not finite."""
    good = (mask & bad_bits) == 0
    good &= var > 0
    good &= var < np.inf
    good &= np.isfinite(signal)
    bad = ~good
    signal *= scale
    np.putmask(signal, bad, np.nan)
    with np.errstate(divide="ignore", over="ignore"):
        ivar = np.reciprocal(var, out=var)
    ivar *= 1.0 / np.square(scale)
    np.putmask(ivar, bad, 0.0)
    return signal, ivar


class AstropyTile:
    """A Euclid SIR per-tile file read through astropy (module docstring; the reader contract of
    zfast.io.formats): for what ``SIRTile`` does not map (a gzipped tile, columns it does not decode)."""

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


class NotMapped(Exception):
    """The tile holds what ``zfast.io.fitsindex`` does not decode: ``open_tile`` reads it with astropy."""


def open_tile(path, sir_bad_bits: int = DEFAULT_BAD_BITS, **options):
    """The reader for a SIR tile: ``SIRTile`` (mapped), or ``AstropyTile`` for a gzipped tile or one whose
    columns the mapped reader does not decode."""
    if not str(path).lower().endswith(".gz"):
        try:
            return SIRTile(path, sir_bad_bits, **options)
        except NotMapped:
            pass
    return AstropyTile(path, sir_bad_bits, **options)


class SIRTile:
    """A Euclid SIR per-tile file, memory-mapped and indexed by ``zfast.io.fitsindex`` (the module docstring's
    rules; the reader contract of zfast.io.formats). The objects' tables are alike, so their layout is parsed once
    and each chunk's spectra are read as one array; a tile this does not map is read by ``AstropyTile``."""

    format = "euclid-sir"
    knows_units = True

    def __init__(self, path, sir_bad_bits: int = DEFAULT_BAD_BITS, **options):
        self.path, self.bad_bits = Path(path), int(sir_bad_bits)
        try:
            self.index = FitsIndex(self.path)
        except (FitsStructureError, OSError) as error:
            raise damaged(self.path, error, "Euclid SIR") from error
        hdus, matches = self.index.matching("EXTNAME", _GROUP_BYTES)
        groups: dict = {}
        for hdu, match in zip(hdus, matches):
            groups.setdefault(int(match.group(1)), {})[match.group(2).decode().upper()] = hdu
        if not groups:
            self.close()
            raise ValueError(f"{self.path}: a SIR tile with no <k>_META / <k>_COMBINED1D_SIGNAL HDUs")
        self.numbers = sorted(groups)  # each object's <k>
        ordered = [groups[k] for k in self.numbers]
        self.n_spectra = len(ordered)
        n_obj = self.index.header(0).get("N_OBJ")
        if isinstance(n_obj, int) and n_obj != self.n_spectra:
            warnings.warn(f"{self.path}: N_OBJ = {n_obj} but {self.n_spectra} objects found; reading those found", stacklevel=2)
        meta = np.array([g.get("META", -1) for g in ordered], dtype=np.int64)
        signal = np.array([g.get("COMBINED1D_SIGNAL", -1) for g in ordered], dtype=np.int64)
        self.ids = self._ids(meta)
        rows = self.index.naxis[np.maximum(signal, 0), 1]
        self.signal = np.where((meta >= 0) & (signal >= 0) & (rows > 0), signal, -1)  # -1: a bad row
        readable = np.flatnonzero(self.signal >= 0)
        self.layouts, self.layout_of = [], np.full(self.n_spectra, -1, dtype=np.int64)  # each object's, by number
        numbered: dict = {}
        for i, layout in zip(readable.tolist(), self.index.table_layouts(self.signal[readable])):
            if layout is None:
                self.close()
                raise NotMapped(f"{self.path}: HDU {int(self.signal[i])} holds columns fitsindex does not decode")
            if id(layout) not in numbered:
                self._check(layout, int(self.signal[i]))
                numbered[id(layout)] = len(self.layouts)
                self.layouts.append(layout)
            self.layout_of[i] = numbered[id(layout)]
        self.rows = np.where(self.signal >= 0, rows, 0)
        self.fscale = self.index.floats("FSCALE", 1.0)

    def _check(self, layout, hdu: int):
        try:
            require_columns(f"{self.path}: HDU {self.index.strings('EXTNAME')[hdu]}", layout.columns)
        except ValueError:
            self.close()
            raise

    def _ids(self, meta: np.ndarray) -> np.ndarray:
        """OBJ_ID of each object (its META table's first row), -1 where there is none."""
        ids = np.full(len(meta), -1, dtype=np.int64)
        has = np.flatnonzero((meta >= 0) & (self.index.naxis[np.maximum(meta, 0), 1] > 0))
        layouts = self.index.table_layouts(meta[has])
        for layout in {id(x): x for x in layouts if x is not None and "OBJ_ID" in x.columns}.values():
            members = has[[x is layout for x in layouts]]
            first_rows = self.index.first_rows(meta[members], layout)
            ids[members] = layout.values(first_rows, "OBJ_ID")
        return ids

    def _read(self, objects: list) -> list:
        """[(members, wavelength [n, M] Å, flux [n, M], ivar [n, M])] float64 for the readable ``objects``, one
        entry per group of one layout and length, each read as one array."""
        objects = np.asarray(objects, dtype=np.int64)
        if not len(objects):
            return []
        kinds, which = np.unique(np.stack([self.layout_of[objects], self.rows[objects]], axis=1), axis=0, return_inverse=True)
        out = []
        for kind in range(len(kinds)):
            members = objects[which.ravel() == kind]
            layout = self.layouts[int(kinds[kind, 0])]
            hdus = self.signal[members]
            records = self.index.tables(hdus, layout)  # [n, M]
            unit = layout.columns["WAVELENGTH"].unit or None
            wave = to_angstrom(layout.values(records, "WAVELENGTH", np.float64), unit,
                               f"{self.path}: HDU {self.numbers[members[0]]}_COMBINED1D_SIGNAL, column WAVELENGTH")  # fmt: skip
            flux, ivar = apply_mask_rule(layout.values(records, "SIGNAL", np.float64), layout.values(records, "VAR", np.float64),
                                         layout.values(records, "MASK", np.int64), self.fscale[hdus][:, None], self.bad_bits)  # fmt: skip
            out.append((members, wave, flux, ivar))
        return out

    def wavelength(self) -> np.ndarray:
        """The first readable object's grid, widened to the range of every object's (for the coverage check)."""
        readable = np.flatnonzero(self.signal >= 0).tolist()
        if not readable:
            return np.linspace(11900.0, 19000.0, 531)  # nothing readable: every row comes out bad
        groups = self._read(readable)
        lo, hi = min(g[1][:, 0].min() for g in groups), max(g[1][:, -1].max() for g in groups)
        first = groups[0][1][0]
        step = float(np.median(np.diff(first)))
        return np.arange(lo, hi + 0.5 * step, step)

    def chunks(self, size: int):
        for start in range(0, self.n_spectra, size):
            stop = min(start + size, self.n_spectra)
            readable = (start + np.flatnonzero(self.signal[start:stop] >= 0)).tolist()
            groups = self._read(readable)
            ids, bad = self.ids[start:stop].copy(), self.signal[start:stop] < 0
            if len(groups) == 1 and not bad.any() and (groups[0][1] == groups[0][1][0]).all():
                _, wave, flux, ivar = groups[0]  # every row read, on one grid: the arrays as they are
                yield Chunk(ids, wave[0], flux, ivar, bad)
                continue
            rows = {}
            for members, wave, flux, ivar in groups:
                rows.update({i: (wave[r], flux[r], ivar[r]) for r, i in enumerate(members.tolist())})
            template = rows[readable[0]][0] if readable else self.wavelength()
            empty = (template, np.full(template.shape, np.nan), np.zeros(template.shape))
            rows = [rows.get(i, empty) for i in range(start, stop)]
            wave, flux, ivar = padded_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
            yield Chunk(ids, wave, flux, ivar, bad)

    def close(self):
        index, self.index = getattr(self, "index", None), None
        if index is not None:
            index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SIRSingle(AstropyTile):
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


class SIRVOTable:
    """A single-object SIR spectrum as a VOTable: the first table with the SIGNAL columns (WAVELENGTH's unit
    honoured); FSCALE and OBJ_ID from its PARAMs where given (else 1 and 0)."""

    format = "euclid-sir-votable"
    knows_units = True

    def __init__(self, path, sir_bad_bits: int = DEFAULT_BAD_BITS, **options):
        from astropy.io import votable

        self.path, self.n_spectra = Path(path), 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", votable.exceptions.VOWarning)
                tables = list(votable.parse(str(self.path)).iter_tables())
        except Exception as error:  # noqa: BLE001 - astropy's XML and VOTable errors: one line naming the file
            raise damaged(self.path, error, "VOTable") from error
        table = next((t for t in tables if all(c in {f.name.upper() for f in t.fields} for c in SIGNAL_COLUMNS)), None)
        if table is None:
            raise ValueError(f"{self.path}: no VOTable table with the SIR columns {', '.join(SIGNAL_COLUMNS)}")
        fields = {f.name.upper(): f for f in table.fields}
        params = {p.name.upper(): p.value for p in table.params}
        columns = {name: np.ma.filled(np.ma.asarray(table.array[field.ID or field.name]).astype(np.float64), np.nan)
                   if name != "MASK" else np.ma.filled(np.ma.asarray(table.array[field.ID or field.name]), 1)
                   for name, field in fields.items() if name in SIGNAL_COLUMNS}  # fmt: skip
        unit = fields["WAVELENGTH"].unit
        self.obj_id = int(params.get("OBJ_ID", 0))
        self.spectrum = signal_arrays(f"{self.path}: VOTable table {table.ID or table.name or 0}", columns,
                                      None if unit is None else str(unit), float(params.get("FSCALE", 1.0)), int(sir_bad_bits))  # fmt: skip

    def wavelength(self) -> np.ndarray:
        return self.spectrum[0]

    def chunks(self, size: int):
        wave, flux, ivar = self.spectrum
        yield Chunk(np.array([self.obj_id], dtype=np.int64), wave, flux[None], ivar[None], np.array([not (ivar > 0).any()]))

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sniff_votable(probe) -> bool:
    if probe.fits or not probe.path.name.lower().endswith((".xml", ".vot", ".votable")):
        return False
    try:
        with open(probe.path, "rb") as handle:
            head = handle.read(65536).upper()
    except OSError:
        return False
    return b"<VOTABLE" in head and all(f'NAME="{c}"'.encode() in head for c in SIGNAL_COLUMNS)


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


FORMAT = Format("euclid-sir", "FITS primary header FITS_DEF = 'sir.combinedSpectra' (a SIR per-tile file)", _sniff_tile, open_tile)
SINGLE_FORMAT = Format("euclid-sir-single", "a FITS binary table with WAVELENGTH, SIGNAL, MASK, VAR columns (one SIR spectrum)",
                       _sniff_single, SIRSingle)  # fmt: skip
VOTABLE_FORMAT = Format("euclid-sir-votable", "a VOTable (.xml, .vot) with WAVELENGTH, SIGNAL, MASK, VAR fields (one SIR spectrum)",
                        _sniff_votable, SIRVOTable)  # fmt: skip
