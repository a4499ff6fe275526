"""SDSS spec-lite files written with astropy for the tests, built from the SDSS data model, not from a real file.

The data model of ``spec-PLATE-MJD-FIBER.fits`` (DR8 and later; data.sdss.org datamodel SPECTRO_REDUX/spec):
HDU 0 an empty primary; HDU 1 ``COADD``, one row per pixel with columns ``flux`` E (10⁻¹⁷ erg/s/cm²/Å),
``loglam`` E (log10 Å, vacuum), ``ivar`` E, ``and_mask`` J, ``or_mask`` J, ``wdisp`` E, ``sky`` E, ``model`` E;
HDU 2 ``SPECOBJ``, the spAll/specObj row (here PLATE J, MJD J, FIBERID J, Z E, CLASS 6A, and SPECOBJID as the
19-character text the spAll files store); HDU 3 ``SPZLINE`` (emission-line fits; here a stub row). No PyPI wheel
we looked at (specutils, astroquery, bossdata, cospecpy) ships a real SDSS spec file, so these stand in for one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# BOSS pixels are 1e-4 in log10(λ) wide; the first one of a BOSS spectrum is near 3600 Å.
LOGLAM_START, LOGLAM_STEP = 3.5563, 1e-4


def spec_lite_arrays(n_pixels: int = 300, seed: int = 0) -> dict:
    """The COADD columns [n_pixels] of the data model (float32 / int32), with a few pixels flagged bad in each
    of the ways the reader must honour: and_mask set, ivar 0, ivar negative, flux NaN; or_mask bits alone (not bad)."""
    rng = np.random.default_rng(seed)
    index = np.arange(n_pixels, dtype=np.float64)
    arrays = {
        "flux": (5.0 + rng.normal(0.0, 1.0, n_pixels)).astype(np.float32),
        "loglam": (LOGLAM_START + LOGLAM_STEP * index).astype(np.float32),
        "ivar": rng.uniform(0.5, 2.0, n_pixels).astype(np.float32),
        "and_mask": np.zeros(n_pixels, np.int32),
        "or_mask": np.zeros(n_pixels, np.int32),
        "wdisp": np.full(n_pixels, 1.1, np.float32),
        "sky": rng.uniform(0.0, 3.0, n_pixels).astype(np.float32),
        "model": np.full(n_pixels, 5.0, np.float32),
    }
    arrays["and_mask"][[3, 50, 51]] = [1 << 24, 1 << 22, (1 << 24) | 1]  # BRIGHTSKY, NOSKY, NOPLUG | BRIGHTSKY
    arrays["or_mask"][[7, 8]] = 1 << 23  # set in one exposure only: the pixel stays usable
    arrays["ivar"][[10, 11]] = [0.0, -1.0]
    arrays["flux"][12] = np.nan
    return arrays


COADD_FORMATS = {"flux": "E", "loglam": "E", "ivar": "E", "and_mask": "J", "or_mask": "J", "wdisp": "E", "sky": "E", "model": "E"}


def write_spec_lite(path: Path, arrays: dict | None = None, specobj: dict | None = None, drop: tuple = ()) -> Path:
    """A spec-lite file at ``path`` (module docstring) from ``arrays`` (default ``spec_lite_arrays()``) and the
    SPECOBJ columns ``specobj`` (name -> (format, value); default plate 266, MJD 51630, fiber 4); the COADD columns
    in ``drop`` are left out (to test a damaged layout)."""
    from astropy.io import fits

    arrays = spec_lite_arrays() if arrays is None else arrays
    if specobj is None:
        specobj = {"PLATE": ("J", 266), "MJD": ("J", 51630), "FIBERID": ("J", 4), "Z": ("E", 0.0219),
                   "CLASS": ("6A", "GALAXY"), "SPECOBJID": ("19A", "299490346961430528")}  # fmt: skip
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column(name=name, format=COADD_FORMATS[name], array=arrays[name]) for name in COADD_FORMATS if name not in drop],
        name="COADD")  # fmt: skip
    obj = fits.BinTableHDU.from_columns(
        [fits.Column(name=name, format=form, array=np.asarray([value])) for name, (form, value) in specobj.items()],
        name="SPECOBJ")  # fmt: skip
    zline = fits.BinTableHDU.from_columns([fits.Column(name="LINENAME", format="13A", array=np.asarray(["H_alpha"]))],
                                          name="SPZLINE")  # fmt: skip
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "SDSS 2.5-M"
    fits.HDUList([primary, coadd, obj, zline]).writeto(path, overwrite=True)
    return path
