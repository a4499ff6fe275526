"""Evaluating SEDs with bagpipes: the only module of zfast that imports it (GPL-3, an optional extra,
``pip install 'zfast[sed]'``), and only inside functions, so ``import zfast`` never needs it.

What one SED is: a bagpipes ``model_galaxy`` (BC03 stellar populations with MILES spectra, Cloudy nebular continuum
and lines, Calzetti dust with extra birth-cloud attenuation eta for stars younger than 10 Myr) evaluated at the
highest target redshift ``z_max`` (so bagpipes itself forbids stars older than the universe then; the rest-frame
shape depends on z only through IGM absorption below 1216 Å), turned into rest-frame L_λ (erg s⁻¹ Å⁻¹ for
10¹⁰ M☉ formed):

1. stellar + nebular *continuum* on bagpipes' internal log-uniform grid (Δλ/λ = 1/2000 from its R_spec = 1000),
   taken from the model (``spectrum_full``) instead of its per-spectrum spectres call, which dominates the cost
   of ``update``; smoothed by the velocity dispersion with bagpipes' own kernel;
2. converted from **air** (bagpipes' and MILES' wavelengths) to **vacuum** (``zfast.air_to_vacuum``; flux
   density scaled by dλ_air/dλ_vac so each pixel keeps its integral) and rebinned flux-conserving onto the
   library grid: log-uniform, dlnλ = 1/2000, 3500–10600 Å vacuum by default;
3. emission lines added analytically: bagpipes' dust-attenuated Cloudy line fluxes, each a Gaussian of
   σ = veldisp at its vacuum wavelength, integrated exactly over each pixel (bagpipes drops a line into the
   single pixel nearest to it, up to half a pixel off: as large as the air/vacuum shift).

Workers are started with the "spawn" method (a forked child of a process that ran an OpenMP region hangs).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import sys
import time
from typing import Optional

import numpy as np
import torch

from ..data.lines import midpoint_edges
from ..ops.rebin import rebin_edges_reference
from ..wavelengths import air_to_vacuum, vacuum_to_air
from .recipe import BuildConfig, bagpipes_components, rest_wavelength_grid

SPEED_OF_LIGHT_KMS = 299792.458


def geometric_edges(centres: np.ndarray) -> np.ndarray:
    ln = np.log(centres)
    dln = (ln[-1] - ln[0]) / (len(ln) - 1)
    return np.exp(ln[0] - 0.5 * dln + np.arange(len(ln) + 1, dtype=np.float64) * dln)


def import_bagpipes():
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


class Synthesiser:
    """Evaluates rest-frame SEDs with bagpipes, one ``model_galaxy`` per SFH type (built on first use)
    and ``update`` per SED; the grids, identical for every model, are shared between them."""

    def __init__(self, z_model: float, wave_min: float, wave_max: float):
        self.bagpipes = import_bagpipes()
        self.settings = (z_model, wave_min, wave_max)
        self.z_model = float(z_model)
        self.wavelength = rest_wavelength_grid(wave_min, wave_max)
        self.edges = torch.from_numpy(geometric_edges(self.wavelength))
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
        with contextlib.redirect_stdout(sys.stderr), quiet_warnings():
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
        air_edges = midpoint_edges(air)
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
        count = len(rows["sfh_type"])
        continua, line_rows = [], []
        derived = {"ssfr_per_yr": np.zeros(count), "mass_weighted_age_gyr": np.zeros(count)}
        for b in range(count):
            row = {name: column[b] for name, column in rows.items()}
            components = bagpipes_components(row, self.z_model)
            model = self._model(row["sfh_type"], components)
            with quiet_warnings():
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
def quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --- workers --------------------------------------------------------------------------------------------------
_WORKER: Optional[Synthesiser] = None


def worker_chunk(task: tuple) -> tuple[np.ndarray, dict]:
    """Normalised SEDs [B, M] (each ÷ its median) and derived parameters for one chunk of rows.

    The process's synthesiser is made on its first task (not in a Pool initializer: a failing initializer
    makes multiprocessing restart workers forever, while an exception here reaches the parent)."""
    global _WORKER
    settings, rows = task
    if _WORKER is None or _WORKER.settings != settings:
        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # one process per core already
        _WORKER = Synthesiser(*settings)
    luminosity, derived = _WORKER.spectra(rows)
    if not np.isfinite(luminosity).all():
        raise RuntimeError("a spectrum does not cover the whole output grid (NaN after rebinning)")
    median = np.median(luminosity, axis=1)
    if not (median > 0).all():
        raise RuntimeError(f"non-positive median L_λ for rows {np.nonzero(median <= 0)[0].tolist()}")
    derived["median_luminosity"] = median
    derived["halpha_flux"] = derived.pop("halpha_luminosity") / median  # Å × normalised f_λ
    return luminosity / median[:, None], derived


class Progress:
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
        import_bagpipes()
    n = len(parameters["sfh_type"])
    settings = (config.z_max, config.wave_min, config.wave_max)
    tasks = [
        (settings, {name: column[start : start + config.chunk_size] for name, column in parameters.items()})
        for start in range(0, n, config.chunk_size)
    ]
    bar = Progress(n, progress)
    results, done = [], 0
    workers = max(1, min(config.workers, len(tasks)))
    if workers == 1:
        outputs = map(worker_chunk, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        outputs = pool.imap(worker_chunk, tasks)
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
