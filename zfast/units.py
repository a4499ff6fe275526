"""Wavelength units as files write them (FITS ``TUNIT``/``CUNIT``, VOTable ``unit``), to Å.

Files name their units in free text: 'Angstrom', 'angstrom', 'AA', 'Å', '0.1 nm', 'nm', 'um', 'micron', 'm'.
``angstrom_per_unit`` reads those without astropy (a reader's header strings), and ``to_angstrom`` scales an
array by them. A unit that is not a length is an error naming where it was found: a spectrum in Hz or in pixels
cannot be put on the model's grid by guessing.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

_ANGSTROM_PER = {
    "angstrom": 1.0, "angstroms": 1.0, "aa": 1.0, "a": 1.0, "å": 1.0, "ang": 1.0, "0.1nm": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "nanometre": 10.0, "nanometres": 10.0,
    "um": 1e4, "µm": 1e4, "μm": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4, "micrometre": 1e4,
    "mm": 1e7, "cm": 1e8, "m": 1e10, "meter": 1e10, "metre": 1e10,
}  # fmt: skip


def angstrom_per_unit(unit: Optional[str], where: str, default: Optional[float] = 1.0) -> float:
    """Å per ``unit`` (a length unit's name, case-insensitive, blanks ignored). ``unit`` None or blank: ``default``
    (None: an error). ValueError naming ``where`` (e.g. "HDU 3_COMBINED1D_SIGNAL, column WAVELENGTH") otherwise."""
    text = "" if unit is None else re.sub(r"\s+", "", str(unit)).lower()
    if not text:
        if default is None:
            raise ValueError(f"{where}: no wavelength unit given (need a length unit such as Angstrom, nm or um)")
        return float(default)
    factor = _ANGSTROM_PER.get(text)
    if factor is None:
        known = "Angstrom, nm, um/micron, mm, cm, m"
        raise ValueError(f"{where}: wavelength unit {unit!r} is not a length unit zfast knows ({known})")
    return factor


def to_angstrom(values, unit: Optional[str], where: str, default: Optional[float] = 1.0) -> np.ndarray:
    """``values`` (float64) in Å, from ``unit`` (``angstrom_per_unit``)."""
    factor = angstrom_per_unit(unit, where, default)
    values = np.asarray(values, dtype=np.float64)
    return values if factor == 1.0 else values * factor


FLAM = "erg / (s cm2 Angstrom)"


def _flam_factor(unit, wavelength_aa: np.ndarray):
    """[N] factors taking a flux in ``unit`` to f_λ at ``wavelength_aa`` (astropy's spectral_density: f_ν, f_λ in
    any scale, photon fluxes); None when ``unit`` is no spectral flux density (counts, dimensionless: kept as f_λ)."""
    import astropy.units as u

    try:
        return (1.0 * unit).to(u.Unit(FLAM), equivalencies=u.spectral_density(wavelength_aa * u.AA)).value
    except u.UnitConversionError:
        return None


def astropy_arrays(spectra) -> tuple:
    """(wavelength [N] Å, flux [B, N] or [N] f_λ, ivar or None) float64 from a specutils ``Spectrum`` /
    ``Spectrum1D`` (spectral axis in any length, frequency or energy unit, through astropy's spectral
    equivalencies; flux in any f_λ or f_ν unit; its uncertainty (InverseVariance, StdDevUncertainty,
    VarianceUncertainty) as ivar; ``mask`` True = bad) or an astropy ``Table`` with columns wavelength, flux and
    optional ivar (case-insensitive; Quantity columns are converted, plain ones are taken as Å and f_λ). Fluxes
    that are no spectral density (counts, dimensionless) are taken as f_λ. TypeError for anything else."""
    import astropy.units as u

    if hasattr(spectra, "spectral_axis") and hasattr(spectra, "flux"):
        wave = np.asarray(spectra.spectral_axis.to(u.AA, equivalencies=u.spectral()).value, dtype=np.float64)
        flux_q = spectra.flux
        ivar = None
        if getattr(spectra, "uncertainty", None) is not None:
            from astropy.nddata import InverseVariance

            ivar = np.asarray(spectra.uncertainty.represent_as(InverseVariance).array, dtype=np.float64)
        mask = None if getattr(spectra, "mask", None) is None else np.asarray(spectra.mask, dtype=bool)
    elif hasattr(spectra, "colnames"):
        names = {name.lower(): name for name in spectra.colnames}
        missing = [n for n in ("wavelength", "flux") if n not in names]
        if missing:
            raise ValueError(f"the Table has no column {missing} (columns: {spectra.colnames}; need wavelength, flux, optional ivar)")
        column = spectra[names["wavelength"]]
        unit = getattr(column, "unit", None)
        wave = np.asarray(column, dtype=np.float64) if unit is None else np.asarray((np.asarray(column) * unit).to(u.AA, equivalencies=u.spectral()).value)
        flux_col = spectra[names["flux"]]
        flux_q = np.asarray(flux_col, dtype=np.float64) * (getattr(flux_col, "unit", None) or u.Unit(FLAM))
        ivar = np.asarray(spectra[names["ivar"]], dtype=np.float64) if "ivar" in names else None
        mask = None
        if wave.ndim == 2:  # a row per spectrum: one grid only if every row has the same
            if not (wave == wave[:1]).all():
                raise ValueError("the Table's wavelength differs between rows; give one grid")
            wave = wave[0]
    else:
        raise TypeError(f"expected a specutils Spectrum or an astropy Table, got {type(spectra).__name__}")
    factor = _flam_factor(flux_q.unit, wave)
    flux = np.asarray(flux_q.value, dtype=np.float64) * (1.0 if factor is None else factor)
    if ivar is not None and factor is not None:
        ivar = ivar / np.square(factor)
    if wave.size >= 2 and wave[0] > wave[-1]:  # a frequency or energy axis: increasing in wavelength
        wave, flux = wave[::-1].copy(), flux[..., ::-1].copy()
        ivar = None if ivar is None else ivar[..., ::-1].copy()
        mask = None if mask is None else mask[..., ::-1].copy()
    if mask is not None:
        flux = np.where(mask, np.nan, flux)
        ivar = None if ivar is None else np.where(mask, 0.0, ivar)
    return wave, flux, ivar
