"""Build rest-frame SED libraries with bagpipes: ``zfast-sed build --n 10000 --seed 0 --out lib.h5``.

**Licence boundary.** bagpipes (Carnall et al. 2018) is GPL-3; zfast is BSD-3. bagpipes is therefore an optional
extra (``pip install 'zfast[sed]'``) imported *only* inside ``_Synthesiser`` — by the processes that build a
library — never when ``zfast`` or this module is imported. Libraries it made are data, usable without it
(``SEDLibrary.default()`` ships one).

**What one SED is.** A bagpipes ``model_galaxy`` (BC03 stellar populations with MILES spectra, Cloudy nebular
continuum and lines, Calzetti dust with extra birth-cloud attenuation eta for stars younger than 10 Myr)
evaluated at the highest target redshift ``z_max`` — so bagpipes itself forbids stars older than the universe
then; the rest-frame shape depends on z only through IGM absorption below 1216 Å — and turned into rest-frame
L_λ (erg s⁻¹ Å⁻¹ for 10¹⁰ M☉ formed):

1. stellar + nebular *continuum* on bagpipes' internal log-uniform grid (Δλ/λ = 1/2000 from its R_spec = 1000),
   taken from the model (``spectrum_full``) instead of its per-spectrum spectres call, which is 87 % of the
   cost of ``update``; smoothed by the velocity dispersion with bagpipes' own kernel;
2. converted from **air** (bagpipes' and MILES' wavelengths) to **vacuum** (``zfast.air_to_vacuum``; flux
   density scaled by dλ_air/dλ_vac so each pixel keeps its integral) and rebinned flux-conserving
   (``zfast.ops.rebin``) onto the library grid: log-uniform, dlnλ = 1/2000, 3500–10600 Å vacuum by default;
3. emission lines added analytically: bagpipes' dust-attenuated Cloudy line fluxes, each a Gaussian of
   σ = veldisp at its vacuum wavelength, integrated exactly over each pixel. (bagpipes drops a line into the
   single pixel nearest to it, which puts Hα up to half a pixel, 1.6 Å, off — as large as the air/vacuum
   shift; here lines sit where they belong, to ~0.01 Å.)

Each SED is divided by its median over the grid (so float16 storage works) and its parameters are stored in the
library's ``params``: the recipe draws (``sfh_type`` as a string, ages, tau, metallicity, Av, eta, logU,
veldisp), derived quantities (sSFR, mass-weighted age, Hα line flux, the median L_λ that was divided out) and
``ew_halpha``, the rest EW of Hα+[NII] defined in ``halpha_equivalent_width``.

**The recipe** (``Recipe``) widens the star-forming delayed/exponential histories of the data issue with
constant, lognormal, single-burst, quenched (truncated constant) and post-starburst (old exponential plus a burst
that has ended) histories and a dusty tail (Av up to 4), so that weak-line galaxies — EW(Hα+[NII]) < 20 Å, where
CNN redshifts fail — make up ≥ 30 % of a library.

Parameters are all drawn up front in the parent process from ``numpy.random.default_rng(seed)``; workers only
evaluate spectra, so a library depends on ``--n`` and ``--seed`` alone, not on the number of processes. Workers
are started with the "spawn" method (a forked child of a process that ran an OpenMP region hangs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import torch

from .wavelengths import air_to_vacuum, vacuum_to_air

SPEED_OF_LIGHT_KMS = 299792.458

# The library's rest grid (vacuum Å): covers 1 <= z < 1.8 on the NISP red grism (12060-18920 Å) with margin.
WAVE_MIN, WAVE_MAX, DLN = 3500.0, 10600.0, 1.0 / 2000.0

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

SFH_TYPES = ("delayed", "exponential", "constant", "lognormal", "burst", "quenched", "post_starburst")


@dataclasses.dataclass
class Recipe:
    """How the physical parameters of each SED are drawn. Ages are look-back times from the epoch the galaxy is
    observed at (Gyr), capped by the age of the universe at ``z_max``; "logU(a, b)" is log-uniform on [a, b].

    sfh_weights: fraction of SEDs per star-formation history (exact counts by largest remainder):
        delayed, exponential: SFR ∝ t·e^(-t/τ) and e^(-t/τ) since ``age`` ~ logU(0.1, 3), τ ~ logU(0.1, 3);
        constant: constant SFR since ``age`` ~ logU(0.1, 3), still forming;
        lognormal: bagpipes' lognormal in cosmic time, peak ``tmax`` ~ U(0.5, 4.5) Gyr after the Big Bang
            (beyond the epoch: still rising), ``fwhm`` ~ logU(0.2, 4);
        burst: one instantaneous burst ``age`` ~ logU(0.005, 3) ago (lines only while younger than 10 Myr);
        quenched: constant SFR from ``age`` ~ logU(0.5, 3) until ``age_min`` ~ logU(0.05, min(1, age/2)) ago,
            nothing since (truncated);
        post_starburst: an old exponential (``age`` ~ logU(1, 3), τ ~ logU(0.1, 1)) plus a burst
            ``burst_age`` ~ logU(0.02, 1) ago holding ``burst_fraction`` ~ U(0.05, 0.5) of the mass formed.
    metallicity (Z☉) ~ logU(0.2, 2.5) (stars and gas); Calzetti Av ~ U(0, 2), except a ``dusty_fraction``
    with Av ~ U(2, 4); birth-cloud factor eta ~ U(1, 2.5); logU ~ U(-3.5, -2); veldisp ~ U(50, 250) km/s.
    """

    sfh_weights: dict = dataclasses.field(default_factory=lambda: {
        "delayed": 0.30, "exponential": 0.22, "constant": 0.14, "lognormal": 0.10,
        "burst": 0.06, "quenched": 0.08, "post_starburst": 0.10,
    })  # fmt: skip
    age_gyr: tuple = (0.1, 3.0)
    tau_gyr: tuple = (0.1, 3.0)
    burst_age_gyr: tuple = (0.005, 3.0)
    lognormal_tmax_gyr: tuple = (0.5, 4.5)
    lognormal_fwhm_gyr: tuple = (0.2, 4.0)
    quenched_age_gyr: tuple = (0.5, 3.0)
    quenched_since_gyr: tuple = (0.05, 1.0)
    psb_age_gyr: tuple = (1.0, 3.0)
    psb_tau_gyr: tuple = (0.1, 1.0)
    psb_burst_age_gyr: tuple = (0.02, 1.0)
    psb_burst_fraction: tuple = (0.05, 0.5)
    metallicity_zsun: tuple = (0.2, 2.5)
    av: tuple = (0.0, 2.0)
    dusty_fraction: float = 0.2
    av_dusty: tuple = (2.0, 4.0)
    eta: tuple = (1.0, 2.5)
    logu: tuple = (-3.5, -2.0)
    veldisp_kms: tuple = (50.0, 250.0)


@dataclasses.dataclass
class BuildConfig:
    """One ``zfast-sed build`` run (written, resolved, into the provenance file beside the library)."""

    n: int
    seed: int
    out: str
    workers: int = 2
    dtype: str = "float32"
    z_max: float = 1.8
    wave_min: float = WAVE_MIN
    wave_max: float = WAVE_MAX
    chunk_size: int = 50
    recipe: Recipe = dataclasses.field(default_factory=Recipe)


# --- the rest grid and EW(Hα) (no bagpipes needed) ---------------------------------------------------------
def rest_wavelength_grid(wave_min: float = WAVE_MIN, wave_max: float = WAVE_MAX, dln: float = DLN) -> np.ndarray:
    """Pixel centres [N] (vacuum Å): exp(ln wave_min + k·dln) for k = 0..N-1, the last one <= wave_max.

    Built from an integer index in float64. The pixel edges are the geometric midpoints (``SEDLibrary``'s
    convention for a log-uniform grid), exp(ln wave_min + (k - 1/2)·dln).
    """
    n = int(math.floor(math.log(wave_max / wave_min) / dln * (1 + 1e-12))) + 1
    return np.exp(math.log(wave_min) + np.arange(n, dtype=np.float64) * dln)


def _midpoint_edges(centres: np.ndarray) -> np.ndarray:
    """Pixel edges [N+1] of centres [N]: midpoints, the outer two mirrored (spectres' and ``zfast.rebin``'s)."""
    inner = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[1.5 * centres[0] - 0.5 * centres[1]], inner, [1.5 * centres[-1] - 0.5 * centres[-2]]])


def _geometric_edges(centres: np.ndarray) -> np.ndarray:
    ln = np.log(centres)
    dln = (ln[-1] - ln[0]) / (len(ln) - 1)
    return np.exp(ln[0] - 0.5 * dln + np.arange(len(ln) + 1, dtype=np.float64) * dln)


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
    edges = _midpoint_edges(wave)
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


# --- drawing the parameters (no bagpipes needed) -------------------------------------------------------------
def age_of_universe_gyr(z: float) -> float:
    """Age of the universe at redshift z (Gyr) in bagpipes' cosmology (flat ΛCDM, H0 = 70, Ωm = 0.3, no radiation).

    Closed form: t(a) = 2 / (3 H0 √Ω_Λ) · asinh(√(Ω_Λ/Ω_m) · a^(3/2)), a = 1/(1+z).
    """
    hubble_per_gyr = 70.0 / 977.792221  # km/s/Mpc in 1/Gyr
    omega_m, omega_l = 0.3, 0.7
    a = 1.0 / (1.0 + z)
    return 2.0 / (3.0 * hubble_per_gyr * math.sqrt(omega_l)) * math.asinh(math.sqrt(omega_l / omega_m) * a**1.5)


def _log_uniform(rng, bounds, size):
    lo, hi = bounds
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _counts(weights: dict, n: int) -> dict:
    """Exact counts per SFH type, proportional to ``weights`` (largest remainder)."""
    unknown = sorted(set(weights) - set(SFH_TYPES))
    if unknown:
        raise ValueError(f"unknown SFH types {unknown}; known: {list(SFH_TYPES)}")
    names = [name for name in SFH_TYPES if weights.get(name, 0) > 0]
    total = sum(weights[name] for name in names)
    if not names or not total > 0:
        raise ValueError("sfh_weights must give at least one SFH type a positive weight")
    exact = {name: n * weights[name] / total for name in names}
    counts = {name: int(math.floor(value)) for name, value in exact.items()}
    for name in sorted(names, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def draw_parameters(n: int, seed: int, recipe: Optional[Recipe] = None, z_max: float = 1.8) -> dict:
    """The recipe's parameters for ``n`` SEDs: {name: array [n]}, deterministic in (n, seed, recipe, z_max).

    Columns: ``sfh_type`` (str), ``age_gyr`` (look-back time to the start of star formation; for lognormal the
    age of the universe at z_max), ``tau_gyr``, ``age_min_gyr`` (quenched: time since star formation stopped),
    ``tmax_gyr``, ``fwhm_gyr`` (lognormal), ``burst_age_gyr``, ``burst_fraction`` (burst, post_starburst),
    ``metallicity_zsun``, ``av``, ``eta``, ``logu``, ``veldisp_kms``. NaN where a column does not apply.
    """
    recipe = recipe or Recipe()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    t_universe = age_of_universe_gyr(z_max)
    cap = lambda bounds: (bounds[0], min(bounds[1], t_universe))  # noqa: E731
    counts = _counts(recipe.sfh_weights, n)
    sfh_type = np.concatenate([np.full(count, name) for name, count in counts.items()])
    sfh_type = sfh_type[rng.permutation(n)]
    nan = np.full(n, np.nan)
    columns = {"sfh_type": sfh_type.astype(str)}
    columns.update({k: nan.copy() for k in ("age_gyr", "tau_gyr", "age_min_gyr", "tmax_gyr", "fwhm_gyr",
                                            "burst_age_gyr", "burst_fraction")})  # fmt: skip

    def fill(name, kind, values):
        columns[name][sfh_type == kind] = values

    for kind in ("delayed", "exponential", "constant"):
        count = int((sfh_type == kind).sum())
        fill("age_gyr", kind, _log_uniform(rng, cap(recipe.age_gyr), count))
        if kind != "constant":
            fill("tau_gyr", kind, _log_uniform(rng, recipe.tau_gyr, count))
    count = int((sfh_type == "lognormal").sum())
    fill("age_gyr", "lognormal", np.full(count, t_universe))
    fill("tmax_gyr", "lognormal", rng.uniform(*recipe.lognormal_tmax_gyr, count))
    fill("fwhm_gyr", "lognormal", _log_uniform(rng, recipe.lognormal_fwhm_gyr, count))
    count = int((sfh_type == "burst").sum())
    ages = _log_uniform(rng, cap(recipe.burst_age_gyr), count)
    fill("age_gyr", "burst", ages)
    fill("burst_age_gyr", "burst", ages)
    fill("burst_fraction", "burst", np.ones(count))
    count = int((sfh_type == "quenched").sum())
    ages = _log_uniform(rng, cap(recipe.quenched_age_gyr), count)
    lo, hi = recipe.quenched_since_gyr
    since = np.exp(rng.uniform(math.log(lo), np.log(np.minimum(hi, ages / 2)), count))
    fill("age_gyr", "quenched", ages)
    fill("age_min_gyr", "quenched", since)
    count = int((sfh_type == "post_starburst").sum())
    fill("age_gyr", "post_starburst", _log_uniform(rng, cap(recipe.psb_age_gyr), count))
    fill("tau_gyr", "post_starburst", _log_uniform(rng, recipe.psb_tau_gyr, count))
    fill("burst_age_gyr", "post_starburst", _log_uniform(rng, recipe.psb_burst_age_gyr, count))
    fill("burst_fraction", "post_starburst", rng.uniform(*recipe.psb_burst_fraction, count))

    columns["metallicity_zsun"] = _log_uniform(rng, recipe.metallicity_zsun, n)
    dusty = rng.uniform(size=n) < recipe.dusty_fraction
    columns["av"] = np.where(dusty, rng.uniform(*recipe.av_dusty, n), rng.uniform(*recipe.av, n))
    columns["eta"] = rng.uniform(*recipe.eta, n)
    columns["logu"] = rng.uniform(*recipe.logu, n)
    columns["veldisp_kms"] = rng.uniform(*recipe.veldisp_kms, n)
    return columns


def bagpipes_components(row: dict, z_model: float) -> dict:
    """bagpipes ``model_components`` for one row of ``draw_parameters`` (10¹⁰ M☉ formed in total)."""
    kind, metallicity = str(row["sfh_type"]), float(row["metallicity_zsun"])
    components = {
        "redshift": float(z_model),
        "veldisp": float(row["veldisp_kms"]),
        "dust": {"type": "Calzetti", "Av": float(row["av"]), "eta": float(row["eta"])},
        "nebular": {"logU": float(row["logu"])},
    }
    base = {"massformed": 10.0, "metallicity": metallicity}
    if kind in ("delayed", "exponential"):
        components[kind] = dict(base, age=float(row["age_gyr"]), tau=float(row["tau_gyr"]))
    elif kind == "constant":
        components["constant"] = dict(base, age_max=float(row["age_gyr"]), age_min=0.0)
    elif kind == "quenched":
        components["constant"] = dict(base, age_max=float(row["age_gyr"]), age_min=float(row["age_min_gyr"]))
    elif kind == "lognormal":
        components["lognormal"] = dict(base, tmax=float(row["tmax_gyr"]), fwhm=float(row["fwhm_gyr"]))
    elif kind == "burst":
        components["burst"] = dict(base, age=float(row["burst_age_gyr"]))
    elif kind == "post_starburst":
        fraction = float(row["burst_fraction"])
        components["exponential"] = dict(
            massformed=10.0 + math.log10(1.0 - fraction), metallicity=metallicity,
            age=float(row["age_gyr"]), tau=float(row["tau_gyr"]),
        )  # fmt: skip
        components["burst"] = dict(
            massformed=10.0 + math.log10(fraction), metallicity=metallicity, age=float(row["burst_age_gyr"])
        )
    else:
        raise ValueError(f"unknown sfh_type {kind!r}; known: {list(SFH_TYPES)}")
    return components


# --- evaluating spectra (imports bagpipes) ---------------------------------------------------------------
def _import_bagpipes():
    """bagpipes, imported here only (GPL-3: never at zfast's import time). Its notices go to stderr."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import bagpipes
    except ImportError as error:
        raise ImportError(
            "building SED libraries needs bagpipes (GPL-3), an optional extra: pip install 'zfast[sed]'"
        ) from error
    return bagpipes


def bagpipes_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bagpipes")
    except metadata.PackageNotFoundError:
        return "not installed"


class _Synthesiser:
    """Evaluates rest-frame SEDs with bagpipes, one ``model_galaxy`` per SFH type (built on first use, ~0.8 s)
    and ``update`` per SED; the grids, identical for every model, are shared between them."""

    def __init__(self, z_model: float, wave_min: float, wave_max: float):
        self.bagpipes = _import_bagpipes()
        self.settings = (z_model, wave_min, wave_max)
        self.z_model = float(z_model)
        self.wavelength = rest_wavelength_grid(wave_min, wave_max)
        self.edges = torch.from_numpy(_geometric_edges(self.wavelength))
        # Ask bagpipes for R_spec sampling a little beyond the range kept (air): past its last requested
        # wavelength the internal grid drops to R = 20.
        self.spec_wavs = np.array([0.97 * vacuum_to_air(wave_min), 1.03 * vacuum_to_air(wave_max)])
        self.models: dict = {}
        self._shared = None
        self._dust_shape = None

    def _model(self, kind: str, components: dict):
        model = self.models.get(kind)
        if model is not None:
            return model
        with contextlib.redirect_stdout(sys.stderr), _quiet_warnings():
            model = self.bagpipes.model_galaxy(components, spec_wavs=self.spec_wavs)
        model.spec_wavs = None  # update() then skips its spectres call; we rebin ourselves
        if self._shared is None:
            self._setup_grid(model)
        else:
            model.stellar.grid = self._shared["stellar"]
        model.nebular.combined_grid = self._shared["nebular_continuum"]
        self.models[kind] = model
        return model

    def _setup_grid(self, model) -> None:
        """Once: the continuum-only nebular grid, the air slice kept, and the vacuum edges it maps onto."""
        config = self.bagpipes.config
        air = model.wavelengths
        # bagpipes' combined nebular grid holds the continuum plus each line dropped into one pixel; rebuild
        # it without the lines (the same interpolation it does), which are added back in vacuum, exactly.
        continuum = np.zeros_like(model.nebular.combined_grid)
        n_z, n_u = len(config.metallicities), len(config.logU)
        for i in range(n_z):
            for j in range(n_u):
                raw = config.cont_grid[n_z * j + i + 1]
                for k in range(len(config.neb_ages)):
                    continuum[:, i, j, k] = np.interp(air, config.neb_wavs, raw[k + 1, 1:], left=0, right=0)
        # Internal pixels whose (vacuum) edges cover the output grid, plus 2 on each side.
        air_edges = _midpoint_edges(air)
        vacuum_edges = air_to_vacuum(air_edges)
        first = int(np.searchsorted(vacuum_edges, self.edges[0].item(), side="right")) - 3
        last = int(np.searchsorted(vacuum_edges, self.edges[-1].item(), side="left")) + 2
        if first < 0 or last + 1 > len(air) or np.ptp(np.diff(np.log(air[first:last]))) > 1e-9:
            raise RuntimeError("bagpipes' internal grid is not log-uniform over the requested range")
        self._slice = (first, last)
        kept_edges = vacuum_edges[first : last + 1]
        self._vacuum_edges = torch.from_numpy(kept_edges)
        # f per vacuum Å = f per air Å · (Δλ_air / Δλ_vac): each pixel keeps its integral.
        self._jacobian = np.diff(air_edges[first : last + 1]) / np.diff(kept_edges)
        self._line_wavs = air_to_vacuum(np.asarray(config.line_wavs, dtype=np.float64))
        self._line_names = list(config.line_names)
        self._halpha = self._line_names.index("H  1  6562.80A")
        self._shared = {"stellar": model.stellar.grid, "nebular_continuum": continuum}

    def _continuum(self, model, components: dict, line_luminosity: np.ndarray) -> np.ndarray:
        """The model's rest-frame continuum L_λ (erg/s/Å) on its internal (air) grid, lines excluded.

        bagpipes' energy balance sends the light dust absorbs to Draine & Li (2007) dust emission; the line
        light it absorbed is missing here (the lines were taken out of the nebular grid), so it is added back:
        Σ L_line·(10^(0.4·eta·Av·A_line) - 1) times bagpipes' dust-emission shape (0.1 % of L_λ near 1 µm).
        """
        dust = components["dust"]
        if self._dust_shape is None:  # bagpipes' default qpah, umin, gamma (the recipe sets none of them)
            self._dust_shape = model.dust_emission.spectrum(2.0, 1.0, 0.01)
        magnitudes = dust["eta"] * dust["Av"] * model.dust_atten.A_line  # bagpipes' line attenuation
        absorbed = np.sum(line_luminosity * np.expm1(0.4 * math.log(10.0) * magnitudes))
        return model.spectrum_full * model.lum_flux * (1.0 + self.z_model) + absorbed * self._dust_shape

    def _smoothed(self, luminosity: np.ndarray, veldisp: float) -> np.ndarray:
        """The slice kept of ``luminosity`` (internal grid), smoothed exactly as bagpipes' ``_calculate_spectrum``."""
        config = self.bagpipes.config
        first, last = self._slice
        sigma_pix = veldisp / (3e5 / config.R_spec / 2.0)
        half = 4 * int(sigma_pix + 1)
        offsets = np.arange(-half, half + 1)
        kernel = np.exp(-(offsets**2) / (2 * sigma_pix**2))
        kernel /= np.trapezoid(kernel)
        if first - half < 0 or last + half > len(luminosity):
            raise ValueError(f"veldisp = {veldisp} km/s needs a wider internal grid than bagpipes made")
        return np.convolve(luminosity[first - half : last + half], kernel, mode="valid")

    def _lines(self, line_luminosity: np.ndarray, veldisp: np.ndarray) -> torch.Tensor:
        """Σ over lines of L_line·(Gaussian of σ = λ·veldisp/c averaged over each output pixel): [B, M]."""
        edges = self.edges
        lo, hi = edges[0].item(), edges[-1].item()
        keep = (self._line_wavs > lo * 0.98) & (self._line_wavs < hi * 1.02)
        centres = torch.from_numpy(self._line_wavs[keep])  # [L]
        luminosity = torch.from_numpy(line_luminosity[:, keep])  # [B, L]
        sigma = centres[None, :] * torch.from_numpy(veldisp)[:, None] / SPEED_OF_LIGHT_KMS  # [B, L]
        cdf = torch.special.ndtr((edges[None, None, :] - centres[None, :, None]) / sigma[:, :, None])  # [B, L, M+1]
        fraction = cdf[..., 1:] - cdf[..., :-1]
        return torch.einsum("bl,blm->bm", luminosity, fraction) / (edges[1:] - edges[:-1])

    def spectra(self, rows: dict) -> tuple[np.ndarray, dict]:
        """Rest-frame L_λ (erg/s/Å, vacuum grid ``self.wavelength``) [B, M] and derived quantities for ``rows``."""
        from .ops.rebin import rebin_edges_reference

        count = len(rows["sfh_type"])
        continua, line_rows = [], []
        derived = {"ssfr_per_yr": np.zeros(count), "mass_weighted_age_gyr": np.zeros(count)}
        for b in range(count):
            row = {name: column[b] for name, column in rows.items()}
            components = bagpipes_components(row, self.z_model)
            model = self._model(row["sfh_type"], components)
            with _quiet_warnings():
                model.update(components)
            if model.sfh.unphysical:
                raise ValueError(f"row {b} ({row}) forms stars before the Big Bang at z = {self.z_model}")
            line_luminosity = np.array([model.line_fluxes[name] for name in self._line_names]) * model.lum_flux
            continuum = self._continuum(model, components, line_luminosity)
            continua.append(self._smoothed(continuum, float(row["veldisp_kms"])))
            line_rows.append(line_luminosity)
            sfr, mass = model.sfh.sfr, 10.0**model.sfh.stellar_mass
            derived["ssfr_per_yr"][b] = sfr / mass
            derived["mass_weighted_age_gyr"][b] = model.sfh.mass_weighted_age
        lines = np.stack(line_rows)
        air_flux = torch.from_numpy(np.stack(continua) * self._jacobian)
        continuum = rebin_edges_reference(air_flux, self._vacuum_edges, self.edges, math.nan)
        luminosity = continuum + self._lines(lines, np.asarray(rows["veldisp_kms"], dtype=np.float64))
        derived["halpha_luminosity"] = lines[:, self._halpha]
        return luminosity.numpy(), derived


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --- workers --------------------------------------------------------------------------------------------------
_WORKER: Optional[_Synthesiser] = None


def _worker_chunk(task: tuple) -> tuple[np.ndarray, dict]:
    """Normalised SEDs [B, M] (each ÷ its median) and derived parameters for one chunk of rows.

    The process's synthesiser is made on its first task (not in a Pool initializer: a failing initializer
    makes multiprocessing restart workers forever, while an exception here reaches the parent)."""
    global _WORKER
    settings, rows = task
    if _WORKER is None or _WORKER.settings != settings:
        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # one process per core already
        _WORKER = _Synthesiser(*settings)
    luminosity, derived = _WORKER.spectra(rows)
    if not np.isfinite(luminosity).all():
        raise RuntimeError("a spectrum does not cover the whole output grid (NaN after rebinning)")
    median = np.median(luminosity, axis=1)
    if not (median > 0).all():
        raise RuntimeError(f"non-positive median L_λ for rows {np.nonzero(median <= 0)[0].tolist()}")
    derived["median_luminosity"] = median
    derived["halpha_flux"] = derived.pop("halpha_luminosity") / median  # Å × normalised f_λ
    return luminosity / median[:, None], derived


class _Progress:
    """Plain progress on stderr: an updating line on a terminal, else a line every 10 % or 30 s."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.start = total, enabled, time.monotonic()
        self.last_print, self.last_fraction = self.start, 0.0
        self.tty = enabled and sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        fraction = done / self.total
        elapsed = now - self.start
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else float("nan")
        line = f"zfast-sed: {done}/{self.total} SEDs ({100 * fraction:.0f} %), {elapsed:.0f} s, ETA {eta:.0f} s"
        if self.tty:
            print("\r" + line, end="\n" if done == self.total else "", file=sys.stderr, flush=True)
        elif done == self.total or fraction - self.last_fraction >= 0.1 or now - self.last_print >= 30:
            print(line, file=sys.stderr, flush=True)
            self.last_print, self.last_fraction = now, fraction


def synthesise(parameters: dict, config: BuildConfig, progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Evaluate the SEDs of ``parameters`` (from ``draw_parameters``): (wavelength [M], flux [S, M], derived).

    ``flux`` is normalised (each SED ÷ its median), float64; ``derived`` holds ``ssfr_per_yr`` (SFR averaged
    over the last 100 Myr ÷ living stellar mass), ``mass_weighted_age_gyr``, ``median_luminosity`` (erg/s/Å, per 10¹⁰ M☉ formed) and ``halpha_flux``
    (attenuated Hα line flux in units of the normalised f_λ × Å). With ``config.workers`` > 1 the chunks run in
    that many "spawn" processes; with 1, here.
    """
    import importlib.util

    try:  # fail here with one clear message, not once per worker
        available = importlib.util.find_spec("bagpipes") is not None
    except (ImportError, ValueError):
        available = False
    if not available:
        _import_bagpipes()
    n = len(parameters["sfh_type"])
    settings = (config.z_max, config.wave_min, config.wave_max)
    tasks = [
        (settings, {name: column[start : start + config.chunk_size] for name, column in parameters.items()})
        for start in range(0, n, config.chunk_size)
    ]
    bar = _Progress(n, progress)
    results, done = [], 0
    workers = max(1, min(config.workers, len(tasks)))
    if workers == 1:
        outputs = map(_worker_chunk, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        outputs = pool.imap(_worker_chunk, tasks)
    try:
        for result in outputs:
            results.append(result)
            done += len(result[0])
            bar.update(done)
    finally:
        if workers > 1:
            pool.terminate()
            pool.join()
    flux = np.concatenate([r[0] for r in results])
    derived = {name: np.concatenate([r[1][name] for r in results]) for name in results[0][1]}
    return rest_wavelength_grid(config.wave_min, config.wave_max), flux, derived


# --- building a library file ----------------------------------------------------------------------------------
def provenance_path(out) -> pathlib.Path:
    """Where ``build`` writes the provenance of library ``out``: ``<stem>.provenance.json`` beside it."""
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".provenance.json")


def build(config: BuildConfig, *, command: Optional[str] = None, progress: bool = True):
    """Draw, evaluate, measure and save a library (``config.out``) and its provenance file. Returns the library.

    npz outputs are written zip-compressed (``SEDLibrary.load`` reads either); ``config.dtype`` "float16" is
    safe because the SEDs are normalised by their median.
    """
    from .data import SEDLibrary

    started = time.monotonic()
    if config.n < 1:
        raise ValueError(f"--n must be >= 1, got {config.n}")
    if config.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {config.workers}")
    if not 2000.0 <= config.wave_min < config.wave_max <= 30000.0:
        raise ValueError(f"need 2000 <= wave_min < wave_max <= 30000 Å, got {config.wave_min}, {config.wave_max}")
    parameters = draw_parameters(config.n, config.seed, config.recipe, config.z_max)
    wavelength, flux, derived = synthesise(parameters, config, progress)
    ew = halpha_equivalent_width(wavelength, flux)
    params = dict(parameters, **derived, ew_halpha=ew)
    library = SEDLibrary(wavelength, flux, params=params)
    out = pathlib.Path(config.out)
    library.save(out, dtype=config.dtype)
    if out.suffix.lower() == ".npz":
        _compress_npz(out)
    _usual_permissions(out)
    elapsed = time.monotonic() - started
    types, counts = np.unique(parameters["sfh_type"], return_counts=True)
    record = {
        "command": command or f"zfast-sed build --n {config.n} --seed {config.seed} --out {config.out}",
        "config": dataclasses.asdict(config),
        "n_seds": config.n,
        "seed": config.seed,
        "bagpipes_version": bagpipes_version(),
        "zfast_version": _zfast_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "rest_grid": {
            "wavelength": "vacuum Å, rest frame",
            "first_centre": float(wavelength[0]), "last_centre": float(wavelength[-1]),
            "dln": DLN, "n_pixels": len(wavelength),
        },  # fmt: skip
        "flux": f"f_λ of each SED divided by its median over the grid, stored as {config.dtype}",
        "ew_halpha": EW_HALPHA_DEFINITION,
        "counts_per_sfh_type": {str(t): int(c) for t, c in zip(types, counts)},
        "weak_line_fraction": float(np.mean(ew < WEAK_LINE_EW)),
        "weak_line_fraction_per_sfh_type": {
            str(t): round(float(np.mean(ew[parameters["sfh_type"] == t] < WEAK_LINE_EW)), 3) for t in types
        },
        "weak_line_threshold_ew_halpha": WEAK_LINE_EW,
        "file_bytes": out.stat().st_size,
    }
    _write_text_atomically(provenance_path(out), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    _usual_permissions(provenance_path(out))
    return library


def _usual_permissions(path: pathlib.Path) -> None:
    """rw-r--r-- (under the umask): files made by mkstemp are private (0600), which a packaged file must not be."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _compress_npz(path: pathlib.Path) -> None:
    """Rewrite an npz file zip-compressed (same arrays), atomically."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _write_text_atomically(path: pathlib.Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _zfast_version() -> str:
    from . import __version__

    return __version__


# --- command line ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zfast-sed",
        description="Build rest-frame SED libraries for zfast with bagpipes (GPL-3, optional: pip install 'zfast[sed]').",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser(
        "build",
        help="evaluate N SEDs of the recipe and save them (.h5, .npz or .fits) with a provenance file",
        description="Evaluate N bagpipes SEDs (rest 3500-10600 Å vacuum, dlnλ = 1/2000, each ÷ its median) and save "
        "them with their parameters and EW(Hα+[NII]); <stem>.provenance.json is written beside the library.",
    )
    sub.add_argument("--n", type=int, required=True, help="number of SEDs")
    sub.add_argument("--seed", type=int, default=0, help="seed of the parameter draws (default 0)")
    sub.add_argument("--out", required=True, help="output library: .h5/.hdf5 (h5py), .npz (compressed) or .fits")
    sub.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="processes (default: all cores; ~1 GB of memory each)")
    sub.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored flux (default float32)")
    sub.add_argument("--z-max", type=float, default=1.8,
                     help="highest target redshift: models are evaluated there, so no stars are older than the "
                          "universe then (default 1.8)")  # fmt: skip
    sub.add_argument("--wave-min", type=float, default=WAVE_MIN,
                     help=f"first rest pixel, vacuum Å (default {WAVE_MIN:g})")
    sub.add_argument("--wave-max", type=float, default=WAVE_MAX,
                     help=f"last rest pixel at most, vacuum Å (default {WAVE_MAX:g})")
    sub.add_argument("--chunk-size", type=int, default=50, help="SEDs per task sent to a worker (default 50)")
    sub.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv=None) -> int:
    """``zfast-sed build --n N --seed S --out FILE [...]``: see ``zfast-sed build --help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    config = BuildConfig(
        n=args.n, seed=args.seed, out=args.out, workers=args.workers, dtype=args.dtype, z_max=args.z_max,
        wave_min=args.wave_min, wave_max=args.wave_max, chunk_size=args.chunk_size,
    )  # fmt: skip
    library = build(config, command=shlex.join(["zfast-sed", *argv]), progress=not args.quiet)
    ew = library.params["ew_halpha"]
    print(
        f"{config.out}: {library}; weak-line (EW(Hα+[NII]) < {WEAK_LINE_EW:g} Å) fraction "
        f"{np.mean(ew < WEAK_LINE_EW):.3f}; "
        f"provenance in {provenance_path(config.out)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
