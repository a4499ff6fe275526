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
