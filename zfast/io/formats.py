"""What every spectra reader gives (``zfast.io.readers`` picks one per file), and what they share.

Every reader gives the same thing, whatever the survey's layout (the reader contract):

- ``path``, ``format`` (its name in ``FORMATS``), ``n_spectra`` (rows it will yield, in file order),
  ``knows_units`` (True: it converted wavelengths to vacuum Å and flux to f_λ itself, so ``--air`` and
  ``--flux-unit`` do not apply; False for zfast's own layout, whose units the user states);
- ``wavelength()``: a grid [M] (float64, Å) spanning what the spectra cover, for the coverage check;
- ``chunks(size)``: ``Chunk`` s of at most ``size`` consecutive spectra;
- ``close()``, and use as a context manager.

A row whose input is unusable (a Euclid object with its table missing or empty, a spectrum with every pixel
masked) is yielded all the same, with flux NaN, ivar 0 and ``bad`` True: the catalogue flags it, never drops it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


class Chunk(NamedTuple):
    """Consecutive spectra of a file, in vacuum Å and f_λ when the reader ``knows_units``.

    ids [n] (the survey's TARGETID, or the row number), wavelength [M] (one grid) or [n, M] (one per row) float64,
    flux [n, M] float64 (NaN: bad pixel), ivar [n, M] float64 (0: bad pixel) or None (unknown noise), bad [n] bool
    or None (rows whose input was unusable, see the module docstring)."""

    ids: np.ndarray
    wavelength: np.ndarray
    flux: np.ndarray
    ivar: Optional[np.ndarray]
    bad: Optional[np.ndarray] = None


def is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_SUFFIXES)


class Probe:
    """What the readers' ``sniff`` functions look at, read once per file: the suffix, the FITS primary header and
    the EXTNAMEs of the HDUs (read lazily: a Euclid tile's 10,000 headers are read only if asked)."""

    def __init__(self, path: Path):
        self.path = path
        self.fits = is_fits(path)
        self._primary, self._names = None, None

    def primary(self):
        """The primary header (an astropy Header), or None for a non-FITS or unreadable file."""
        if self._primary is None and self.fits:
            from astropy.io import fits

            try:
                self._primary = fits.getheader(self.path, 0)
            except (OSError, ValueError, TypeError, EOFError):
                return None
        return self._primary

    def extnames(self) -> tuple:
        """The upper-case EXTNAMEs of every HDU ('' for unnamed ones); () for a non-FITS or unreadable file."""
        if self._names is None:
            self._names = ()
            if self.fits:
                from astropy.io import fits

                try:
                    with fits.open(self.path, memmap=True, lazy_load_hdus=True) as hdul:
                        self._names = tuple(str(hdu.header.get("EXTNAME", "")).upper() for hdu in hdul)
                except (OSError, ValueError, TypeError, EOFError):
                    self._names = ()
        return self._names


@dataclass(frozen=True)
class Format:
    """A reader: its ``name`` (for ``--format``), what ``sniff`` looks for (in the no-reader error), the test on a
    ``Probe`` and the opener ``open(path, **options)`` returning an object of the reader contract."""

    name: str
    looks_for: str
    sniff: Callable[[Probe], bool]
    open: Callable[..., object]


def padded_rows(grids: list, fluxes: list, ivars: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength, flux, ivar) for spectra of different grids [M_i]: one grid [M] if they all lie on one
    (the same values), else [n, M_max] per row, each grid extended past its end by its last step with flux NaN
    and ivar 0 (masked pixels that ``zfast.predict`` leaves out)."""
    first = grids[0]
    if all(g.shape == first.shape and np.array_equal(g, first) for g in grids[1:]):
        return first.astype(np.float64), np.stack(fluxes).astype(np.float64), np.stack(ivars).astype(np.float64)
    width = max(len(g) for g in grids)
    wave = np.empty((len(grids), width))
    flux = np.full((len(grids), width), np.nan)
    ivar = np.zeros((len(grids), width))
    for i, (g, f, v) in enumerate(zip(grids, fluxes, ivars)):
        m = len(g)
        step = g[-1] - g[-2] if m >= 2 else 1.0
        wave[i, :m] = g
        wave[i, m:] = g[-1] + step * np.arange(1, width - m + 1)
        flux[i, :m], ivar[i, :m] = f, v
    return wave, flux, ivar


# --- what the FITS readers share ------------------------------------------------------------------------------
def damaged(path: Path, error: BaseException, kind: str, where: str = "") -> ValueError:
    """The one-line ValueError naming the file (and ``where`` in it) for an error of ``damaged_errors()``."""
    message = (str(error).strip().splitlines() or [""])[0]
    hint = ", truncated?" if isinstance(error, TypeError) else ""
    return ValueError(f"{path}: not a readable {kind} file{where}{hint} ({type(error).__name__}: {message})")


def open_fits(path: Path):
    """``path`` opened with astropy, every header read now; OSError if truncated (astropy only warns). Not
    memory-mapped: astropy cannot scale a mapped image (DESI's uint32 masks carry BZERO), and ``image_rows``
    (zfast.io.desi) reads only the rows asked for anyway. Other warnings are passed on."""
    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
    if truncated:
        hdul.close()
        raise OSError(f"the file is truncated ({truncated[0]})")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return hdul
