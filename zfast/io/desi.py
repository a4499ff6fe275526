"""DESI coadd and spectra files (``coadd-*.fits``, ``spectra-*.fits``): the cameras combined into one spectrum per row.

Layout (desidatamodel): ``FIBERMAP``, a table whose ``TARGETID`` gives the ids, and per camera X (``B``, ``R``,
``Z``, or the single combined ``BRZ``; any prefix is taken) the images ``X_WAVELENGTH`` [M_X] (vacuum Å, its
``BUNIT`` read by ``zfast.units``), ``X_FLUX`` [N, M_X] (10⁻¹⁷ erg/s/cm²/Å, f_λ: kept as is), ``X_IVAR`` [N, M_X]
and ``X_MASK`` [N, M_X] (nonzero: bad; optional). Other HDUs (``X_RESOLUTION``, ``SCORES``, ``EXP_FIBERMAP``) are
not read.

The cameras overlap (B/R near 5800 Å, R/Z near 7560 Å) on one 0.8 Å grid, so their pixels coincide. Each row is
put on the union grid [M] of the cameras by inverse-variance weighting, pixel by pixel, over the cameras that
have a usable value there (MASK == 0, IVAR > 0, both finite):

    flux = Σ_X ivar_X · flux_X / Σ_X ivar_X,      ivar = Σ_X ivar_X,

which is the minimum-variance combination of independent measurements. A pixel no camera measures gets flux NaN
and ivar 0; a row with no such pixel at all is ``bad``. Cameras whose grids do not lie on one common step are
refused (ValueError): resampling them would correlate neighbouring pixels, which this weighting ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..units import to_angstrom
from .formats import Chunk, Format, damaged, is_fits, open_fits
from .spectra import damaged_errors

# A camera's grid lies on the union grid when each of its wavelengths is within this share of a step of it.
ALIGN_TOLERANCE = 1e-3


def image_rows(hdu, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of an image HDU, read alone from the file (``section``), scaled by BZERO/BSCALE."""
    return np.asarray(hdu.section[start:stop])


def camera_prefixes(extnames) -> list:
    """The camera prefixes X (file order) with both an ``X_WAVELENGTH`` and an ``X_FLUX`` HDU."""
    names, suffix = set(extnames), "_WAVELENGTH"
    return [n[: -len(suffix)] for n in extnames if n.endswith(suffix) and len(n) > len(suffix) and n[: -len(suffix)] + "_FLUX" in names]


def union_grid(path: Path, grids: dict) -> tuple[np.ndarray, dict]:
    """(the union grid [M] float64 Å, camera -> its first pixel's index in it) for camera grids [M_X] that all lie
    on the first camera's lattice (its step and pixel phase, to ``ALIGN_TOLERANCE`` of a step). Built from an
    integer index (no float-step arange). ValueError naming the cameras otherwise."""
    steps = {cam: float(np.median(np.diff(g))) if len(g) >= 2 else np.nan for cam, g in grids.items()}
    if any(not np.isfinite(s) or s <= 0 for s in steps.values()):
        raise ValueError(f"{path}: each camera's wavelength grid must increase with >= 2 pixels (steps: {steps})")
    first = next(iter(grids))
    origin, step = float(grids[first][0]), steps[first]
    offsets = {}
    for cam, grid in grids.items():
        index = (grid - origin) / step
        offsets[cam] = int(round(float(index[0])))
        if np.max(np.abs(index - (offsets[cam] + np.arange(len(grid))))) > ALIGN_TOLERANCE:
            found = ", ".join(f"{c} {g[0]:.3f}-{g[-1]:.3f} Å step {steps[c]:.4f}" for c, g in grids.items())
            raise ValueError(f"{path}: camera {cam}'s wavelengths are not on camera {first}'s {step:.4f} Å grid "
                             f"({found}); zfast combines only cameras whose pixels coincide (DESI's aligned grid)")  # fmt: skip
    low = min(offsets.values())
    offsets = {cam: offset - low for cam, offset in offsets.items()}
    width = max(offsets[cam] + len(g) for cam, g in grids.items())
    return origin + step * (low + np.arange(width, dtype=np.float64)), offsets


class DesiFile:
    """A DESI coadd or spectra file (module docstring), opened and checked; ``chunks`` yields its rows combined
    over the cameras (the reader contract of ``zfast.io.formats``). ``options`` are ignored."""

    format = "desi"
    knows_units = True

    def __init__(self, path, **options):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such input file")
        self._hdul = None
        try:
            self._hdul = open_fits(self.path)
            self._read_layout()
        except ImportError:
            raise
        except damaged_errors() as error:
            self.close()
            if isinstance(error, ValueError) and str(error).startswith(str(self.path)):
                raise  # ours: already names the file and what is wrong
            raise damaged(self.path, error, "DESI") from error

    def _hdu(self, name: str, what: str):
        names = [str(h.name).upper() for h in self._hdul]
        if name not in names:
            raise ValueError(f"{self.path}: no HDU {name} ({what}); found {', '.join(n for n in names if n)}")
        return self._hdul[name]

    def _read_layout(self):
        """Sets the cameras, their HDUs and offsets on the union grid, the ids and ``n_spectra``; checks shapes."""
        fibermap = self._hdu("FIBERMAP", "the targets' table")
        columns = [c.upper() for c in (fibermap.columns.names if hasattr(fibermap, "columns") else [])]
        if "TARGETID" not in columns:
            raise ValueError(f"{self.path}: HDU FIBERMAP has no column TARGETID (the ids); found {columns}")
        self._ids = np.asarray(fibermap.data["TARGETID"]).astype(np.int64)
        self.n_spectra = len(self._ids)
        cameras = camera_prefixes([str(h.name).upper() for h in self._hdul])
        if not cameras:
            raise ValueError(f"{self.path}: no camera HDUs (need X_WAVELENGTH, X_FLUX, X_IVAR for a camera X)")
        grids, self._cameras = {}, {}
        for cam in cameras:
            wave_hdu = self._hdu(f"{cam}_WAVELENGTH", f"camera {cam}'s wavelengths")
            unit, where = wave_hdu.header.get("BUNIT"), f"{self.path}: HDU {cam}_WAVELENGTH"
            grids[cam] = to_angstrom(np.asarray(wave_hdu.data).ravel(), unit, where)
            hdus = {part: self._hdu(f"{cam}_{part}", f"camera {cam}'s {part.lower()}") for part in ("FLUX", "IVAR")}
            if f"{cam}_MASK" in [str(h.name).upper() for h in self._hdul]:
                hdus["MASK"] = self._hdul[f"{cam}_MASK"]
            for part, hdu in hdus.items():
                shape = tuple(hdu.shape) if hdu.is_image else ()
                if shape != (self.n_spectra, len(grids[cam])):
                    raise ValueError(f"{self.path}: HDU {cam}_{part} has shape {shape}, need ({self.n_spectra}, "
                                     f"{len(grids[cam])}) ({self.n_spectra} FIBERMAP rows, {cam}_WAVELENGTH pixels)")  # fmt: skip
            self._cameras[cam] = hdus
        self._wave, self._offsets = union_grid(self.path, grids)

    def close(self):
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wavelength(self) -> np.ndarray:
        """The union grid [M] float64 (vacuum Å) of the cameras."""
        return self._wave.copy()

    def combine(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(flux, ivar) [stop - start, M] float64 of rows start..stop-1 on the union grid (module docstring)."""
        weighted = np.zeros((stop - start, len(self._wave)))
        ivar = np.zeros_like(weighted)
        for cam, hdus in self._cameras.items():
            flux_x = image_rows(hdus["FLUX"], start, stop).astype(np.float64)
            ivar_x = image_rows(hdus["IVAR"], start, stop).astype(np.float64)
            good = np.isfinite(flux_x) & np.isfinite(ivar_x) & (ivar_x > 0)
            if "MASK" in hdus:
                good &= image_rows(hdus["MASK"], start, stop) == 0
            pixels = slice(self._offsets[cam], self._offsets[cam] + flux_x.shape[1])
            weighted[:, pixels] += np.where(good, ivar_x * np.where(good, flux_x, 0.0), 0.0)
            ivar[:, pixels] += np.where(good, ivar_x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(ivar > 0, weighted / ivar, np.nan)
        return flux, ivar

    def chunks(self, size: int) -> Iterator[Chunk]:
        """``Chunk`` s of at most ``size`` rows: ids [n] (TARGETID), the union grid [M], flux and ivar [n, M]
        float64 (NaN / 0 where no camera has a usable pixel), bad [n] (rows with none at all)."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        for start in range(0, self.n_spectra, size):
            stop = min(self.n_spectra, start + size)
            try:
                flux, ivar = self.combine(start, stop)
            except damaged_errors() as error:
                raise damaged(self.path, error, "DESI", f" (rows {start}-{stop - 1})") from error
            yield Chunk(self._ids[start:stop].copy(), self._wave, flux, ivar, ~(ivar > 0).any(axis=1))


def _sniff(probe) -> bool:
    """A FITS file with a FIBERMAP and at least one camera's X_WAVELENGTH and X_FLUX (never zfast's own unprefixed
    WAVELENGTH/FLUX images, nor a Euclid SIR file)."""
    if not is_fits(probe.path):
        return False
    names = probe.extnames()
    if "FIBERMAP" not in names or not camera_prefixes(names):
        return False
    primary = probe.primary()
    return primary is None or not str(primary.get("FITS_DEF", "")).lower().startswith("sir.")


FORMAT = Format("desi", "a DESI coadd/spectra FITS file: FIBERMAP and per-camera X_WAVELENGTH, X_FLUX, X_IVAR HDUs",
                _sniff, DesiFile)  # fmt: skip
