"""What the SEDs of a library are drawn from: the recipe (``Recipe``), a build's settings (``BuildConfig``), the rest
grid, and the parameter draws (no bagpipes needed).

The recipe widens the star-forming delayed/exponential histories with constant, lognormal, single-burst, quenched
(truncated constant) and post-starburst (old exponential plus a burst that has ended) histories and a dusty tail
(Av up to 4), so that weak-line galaxies (EW(Hα+[NII]) < 20 Å, where CNN redshifts fail) make up >= 30 % of a
library. Parameters are all drawn up front from ``numpy.random.default_rng(seed)``: a library depends on ``n``
and ``seed`` alone, not on the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

# The library's rest grid (vacuum Å): covers 1 <= z < 1.8 on the NISP red grism (12060-18920 Å) with margin.
WAVE_MIN, WAVE_MAX, DLN = 3500.0, 10600.0, 1.0 / 2000.0

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


def rest_wavelength_grid(wave_min: float = WAVE_MIN, wave_max: float = WAVE_MAX, dln: float = DLN) -> np.ndarray:
    """Pixel centres [N] (vacuum Å): exp(ln wave_min + k·dln) for k = 0..N-1, the last one <= wave_max.

    Built from an integer index in float64. The pixel edges are the geometric midpoints (``SEDLibrary``'s
    convention for a log-uniform grid), exp(ln wave_min + (k - 1/2)·dln).
    """
    n = int(math.floor(math.log(wave_max / wave_min) / dln * (1 + 1e-12))) + 1
    return np.exp(math.log(wave_min) + np.arange(n, dtype=np.float64) * dln)


def age_of_universe_gyr(z: float) -> float:
    """Age of the universe at redshift z (Gyr) in bagpipes' cosmology (flat ΛCDM, H0 = 70, Ωm = 0.3, no radiation).

    Closed form: t(a) = 2 / (3 H0 √Ω_Λ) · asinh(√(Ω_Λ/Ω_m) · a^(3/2)), a = 1/(1+z).
    """
    hubble_per_gyr = 70.0 / 977.792221  # km/s/Mpc in 1/Gyr
    omega_m, omega_l = 0.3, 0.7
    a = 1.0 / (1.0 + z)
    return 2.0 / (3.0 * hubble_per_gyr * math.sqrt(omega_l)) * math.asinh(math.sqrt(omega_l / omega_m) * a**1.5)


def log_uniform(rng, bounds, size):
    lo, hi = bounds
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def sfh_counts(weights: dict, n: int) -> dict:
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
    counts = sfh_counts(recipe.sfh_weights, n)
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
        fill("age_gyr", kind, log_uniform(rng, cap(recipe.age_gyr), count))
        if kind != "constant":
            fill("tau_gyr", kind, log_uniform(rng, recipe.tau_gyr, count))
    count = int((sfh_type == "lognormal").sum())
    fill("age_gyr", "lognormal", np.full(count, t_universe))
    fill("tmax_gyr", "lognormal", rng.uniform(*recipe.lognormal_tmax_gyr, count))
    fill("fwhm_gyr", "lognormal", log_uniform(rng, recipe.lognormal_fwhm_gyr, count))
    count = int((sfh_type == "burst").sum())
    ages = log_uniform(rng, cap(recipe.burst_age_gyr), count)
    fill("age_gyr", "burst", ages)
    fill("burst_age_gyr", "burst", ages)
    fill("burst_fraction", "burst", np.ones(count))
    count = int((sfh_type == "quenched").sum())
    ages = log_uniform(rng, cap(recipe.quenched_age_gyr), count)
    lo, hi = recipe.quenched_since_gyr
    since = np.exp(rng.uniform(math.log(lo), np.log(np.minimum(hi, ages / 2)), count))
    fill("age_gyr", "quenched", ages)
    fill("age_min_gyr", "quenched", since)
    count = int((sfh_type == "post_starburst").sum())
    fill("age_gyr", "post_starburst", log_uniform(rng, cap(recipe.psb_age_gyr), count))
    fill("tau_gyr", "post_starburst", log_uniform(rng, recipe.psb_tau_gyr, count))
    fill("burst_age_gyr", "post_starburst", log_uniform(rng, recipe.psb_burst_age_gyr, count))
    fill("burst_fraction", "post_starburst", rng.uniform(*recipe.psb_burst_fraction, count))

    columns["metallicity_zsun"] = log_uniform(rng, recipe.metallicity_zsun, n)
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
