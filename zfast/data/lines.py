"""Emission-line measures on rest-frame spectra: the equivalent width of Hα + [NII] and its windows.

The library builder (``zfast.sed``) stores ``ew_halpha`` of every SED; the instrument (``zfast.data.instrument``)
measures the line flux over the same windows for the Euclid detection SNR; zfast-train's ``weak_line_weight``
uses ``WEAK_LINE_EW``. One definition for all three.
"""

from __future__ import annotations

import numpy as np

# Rest EW(Hα+[NII]) bands, vacuum Å (Hα 6564.61, [NII] 6549.86 and 6585.27): see halpha_equivalent_width.
HALPHA_VACUUM = 6564.61
EW_LINE_WINDOW = (6530.0, 6600.0)
EW_BLUE_CONTINUUM = (6470.0, 6520.0)
EW_RED_CONTINUUM = (6610.0, 6660.0)
# Below this rest EW(Hα+[NII]) (Å) a galaxy counts as weak-line (passive, post-starburst, very dusty).
WEAK_LINE_EW = 20.0
EW_HALPHA_DEFINITION = (
    "rest-frame EW of the Hα + [NII] 6550, 6585 blend in Å (emission > 0): the integral over 6530-6600 Å of "
    "(f - c)/c, f constant over each pixel (edges at midpoints, partial pixels by overlap), c a straight line "
    "least-squares fitted to the pixels centred in 6470-6520 Å and 6610-6660 Å; vacuum wavelengths, measured on "
    "the final normalised float64 spectrum"
)


def midpoint_edges(centres: np.ndarray) -> np.ndarray:
    """Pixel edges [N+1] of centres [N]: midpoints, the outer two mirrored (spectres' and ``zfast.rebin``'s)."""
    inner = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[1.5 * centres[0] - 0.5 * centres[1]], inner, [1.5 * centres[-1] - 0.5 * centres[-2]]])


def halpha_equivalent_width(wavelength, flux) -> np.ndarray:
    """Rest-frame equivalent width of the blend Hα + [NII] 6550, 6585 (Å; emission > 0, absorption < 0).

    At R ~ 1000 (and at NISP's R ~ 450) Hα and the [NII] doublet blend, so one EW is measured over all three:

        EW = ∫_{6530}^{6600} (f(λ) - c(λ)) / c(λ) dλ,

    where f is the spectrum taken as constant over each pixel (edges at the midpoints between centres; pixels
    cut by the window's ends count by their overlap) and c(λ) = a + b·λ is a straight line fitted by least
    squares to the pixels whose centres lie in the blue band 6470–6520 Å and the red band 6610–6660 Å. All
    wavelengths are rest-frame **vacuum** Å. The window holds the lines to ±2.7σ at the largest velocity
    dispersion of the recipe (250 km/s); the bands avoid [OI] 6366 and [SII] 6718. Stellar Hα absorption is
    included (passive galaxies have EW ≈ -2 to -5 Å); a galaxy is "weak-line" when EW < ``WEAK_LINE_EW`` = 20 Å.

    Args:
        wavelength (array [N]): increasing pixel centres, vacuum Å, covering 6470–6660 Å.
        flux (array [S, N] or [N]): f_λ, any units (the EW is scale-free).

    Returns:
        array [S] (or a float for 1-D ``flux``), float64; NaN where the fitted continuum is not positive.
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    values = np.asarray(flux, dtype=np.float64)
    single = values.ndim == 1
    values = np.atleast_2d(values)
    if wave.ndim != 1 or values.shape[-1] != wave.shape[0]:
        raise ValueError(f"flux must be [S, N] or [N] with N = len(wavelength) = {wave.shape[0]}, got {values.shape}")
    edges = midpoint_edges(wave)
    if edges[0] > EW_BLUE_CONTINUUM[0] or edges[-1] < EW_RED_CONTINUUM[1]:
        raise ValueError(
            f"measuring EW(Hα) needs {EW_BLUE_CONTINUUM[0]:.0f}-{EW_RED_CONTINUUM[1]:.0f} Å; the grid covers "
            f"{edges[0]:.1f}-{edges[-1]:.1f} Å"
        )
    in_bands = ((wave >= EW_BLUE_CONTINUUM[0]) & (wave <= EW_BLUE_CONTINUUM[1])) | (
        (wave >= EW_RED_CONTINUUM[0]) & (wave <= EW_RED_CONTINUUM[1])
    )
    if in_bands.sum() < 2:
        raise ValueError("the grid has fewer than 2 pixels in the EW(Hα) continuum bands: it is too coarse")
    x = wave - HALPHA_VACUUM  # centred, for a well-conditioned fit
    design = np.stack([np.ones(in_bands.sum()), x[in_bands]], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, values[:, in_bands].T, rcond=None)  # [2, S]
    lo, hi = EW_LINE_WINDOW
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    used = overlap > 0
    continuum = coefficients[0][:, None] + coefficients[1][:, None] * x[used][None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ew = np.sum(overlap[used] * (values[:, used] - continuum) / continuum, axis=1)
    ew = np.where((continuum > 0).all(axis=1), ew, np.nan)
    return float(ew[0]) if single else ew
