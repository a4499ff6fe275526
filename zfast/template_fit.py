"""The information limit of a simulation: fit each spectrum with its own true template over a fine z grid.

In simulation the SED behind every spectrum is known, so the best any estimator can do at that noise is a χ²
fit of the spectrum with that very template, redshifted and observed through the same instrument (LSF
included), over z; only the noise can then mislead it. ``template_fit_redshift`` does that:

    χ²(z) = Σ_j w_j (f_j − a·T_j(z))²,  minimised over the amplitude a analytically:
    χ²(z) = Σ w f² − (Σ w f T)² / (Σ w T²),

with w = ivar (masked pixels, ivar = 0, drop out; noiseless spectra, ivar = inf, get w = 1), on a coarse grid of
step ``step`` over ``z_range`` (default 1e-3: the NISP LSF's FWHM spans Δz ≈ 0.005, so the χ² valley is sampled
~5 times), then twice on a grid 20× finer within ±1 step of the previous minimum (final spacing step/400). Sums
are float64. A catastrophic χ² failure (the noise preferring another z) is an outlier any estimator would share.

``library_fit_redshift`` is the same fit without knowing the template: every spectrum against every SED of a
library (in the table, the run's *training* SEDs, so the test SEDs are never among them), i.e. the classical
template-fitting redshift (as redrock or a photo-z code does with its templates) with the library as templates:

    z = argmin_z min_s χ²_s(z)   (free amplitude per SED; coarse grid, then refined with the best SED).

Its errors: ``z_err`` is the formal one, the half-width where the best SED's χ² rises by one (from the valley's
curvature on the final refinement window, by secants where the valley is wider than the window), right for a perfect
template and the true noise. With a library of other galaxies neither holds, and at low SNR other valleys compete:
``fit_quantiles`` gives the quantiles of the tempered likelihood exp(-χ²/2T) over every refined (z, SED) pair (a
mixture of the valleys' normals), and ``calibrate_fit_temperatures`` picks T per SNR bin and group (``fit_groups``: how
much of the likelihood the chosen valley holds; noiseless spectra: the reduced χ²), times the reduced χ² where the noise
is known (``fit_scale``), so that 68 % intervals cover 68 % of simulated spectra (as ``zfast.calibration`` does for the
networks' softmax).

With a library of other galaxies as templates it is a peer to the networks, not a limit; its accuracy, coverage and
speed against them are in the benchmark results (benchmarks/studies/paper_table.py).
"""

from __future__ import annotations

import math

import torch

from .calibration import SNR_EDGES, bin_index, pick_grouped_temperatures, pick_temperatures, share_near
from .data.instrument import Instrument
from .data.sed_library import SEDLibrary
from .ops.redshift_resample import render_templates, render_templates_available


def template_chi2(library: SEDLibrary, instrument: Instrument, sed: torch.Tensor, flux: torch.Tensor, weight: torch.Tensor,
          z: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """χ²(z) minus Σ w f², [B, K] float64, of spectra ``flux`` [B, M] with weights ``weight`` [B, M]
    (``fit_weights``) against their own templates, library SEDs ``sed`` [B], at the redshifts ``z`` [B, K]
    (free amplitude per row and z)."""
    b, k = z.shape
    templates = rendered(library, instrument, sed.repeat_interleave(k), z.reshape(-1), instrument.wave_edges.to(flux.device))[0]
    templates = templates.reshape(b, k, -1).double()
    wf = (weight * flux)[:, None, :]
    cross = (templates * wf).sum(dim=2)
    power = (templates.square() * weight[:, None, :]).sum(dim=2)
    return -cross.square() / power.clamp_min(1e-300)


@torch.no_grad()
def template_fit_redshift(library: SEDLibrary, instrument: Instrument, sed_index, flux: torch.Tensor, ivar: torch.Tensor,
                          z_range: tuple = (1.0, 1.8), step: float = 1e-3, chunk: int = 16) -> torch.Tensor:  # fmt: skip
    """Best-fit z [B] (float64) of spectra ``flux`` [B, M] (with ``ivar``) on ``instrument``'s pixels, each fitted
    with library SED ``sed_index[b]`` (see the module docstring). Any flux normalisation works."""
    flux, ivar = _checked_spectra(instrument, flux, ivar)
    sed_index = torch.as_tensor(sed_index, dtype=torch.int64, device=flux.device)
    z_lo, z_hi = z_range
    n_coarse = int(round((z_hi - z_lo) / step))
    coarse = z_lo + step * torch.arange(n_coarse, dtype=torch.float64, device=flux.device)
    offsets = torch.arange(-20, 21, dtype=torch.float64, device=flux.device) / 20
    weight, flux = fit_weights(flux, ivar)
    best = torch.empty(flux.shape[0], dtype=torch.float64, device=flux.device)
    for start in range(0, flux.shape[0], chunk):
        rows = slice(start, start + chunk)
        sed, f, w = sed_index[rows], flux[rows], weight[rows]
        grid = coarse.expand(sed.numel(), -1)
        z0 = grid.gather(1, template_chi2(library, instrument, sed, f, w, grid).argmin(dim=1, keepdim=True))
        for level in (1, 2):
            fine = (z0 + step * offsets / 20 ** (level - 1)).clamp(z_lo, z_hi)
            z0 = fine.gather(1, template_chi2(library, instrument, sed, f, w, fine).argmin(dim=1, keepdim=True))
        best[rows] = z0[:, 0]
    return best


def fit_weights(flux: torch.Tensor, ivar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, f): ivar with noiseless pixels (inf) at 1 and bad ones (ivar <= 0, NaN flux) at 0; f with bad pixels 0."""
    weight = torch.where(torch.isinf(ivar), 1.0, ivar)
    weight = torch.where(torch.isfinite(flux) & (weight > 0), weight, 0.0)
    return weight, torch.where(weight > 0, flux, 0.0)


@torch.no_grad()
def library_fit_redshift(library: SEDLibrary, instrument: Instrument, flux: torch.Tensor, ivar: torch.Tensor,
                         sed_index: torch.Tensor | None = None, z_range: tuple = (1.0, 1.8), step: float = 2e-3,
                         chunk: int = 4096, n_refine: int = 4, progress=None, marginalise: bool = True,
                         scan: torch.Tensor | None = None) -> dict:  # fmt: skip
    """Template-fitting redshifts of ``flux`` [B, M] (with ``ivar``) against the SEDs ``sed_index`` of ``library``
    (default: all), each with a free amplitude (see the module docstring).

    A coarse grid of step ``step`` over ``z_range`` (the NISP LSF's FWHM spans Δz ≈ 0.005: 2e-3 samples the χ²
    valley ~2.5 times) scores every SED at every z in float32 matmuls (templates are rendered once per z and shared
    by a chunk of ``chunk`` spectra). The valley is the coarse z with the largest likelihood summed over the SEDs,
    Σ_s exp(-χ²_s(z)/2) (the SED marginalised with a uniform prior; noiseless spectra, with no χ² scale, take the
    smallest χ², as do all with ``marginalise=False``: for an ivar known only up to a factor). There the two best
    (z, SED) pairs of that point and its two neighbours (three best SEDs at each z), and, for the intervals, the
    ``n_refine`` best pairs of the scanned grid, are each refined on grids 20x and 400x finer with their SED, in
    float64 (as ``template_fit_redshift``); the lowest χ² of the pairs within two coarse steps of the chosen valley
    wins (noiseless: of all pairs). Why several pairs: on the coarse grid the true z falls between points, where a
    noiseless spectrum's own SED can score worse than a neighbour that happens to fit there.

    ``scan`` (bool [B, K], K = the coarse grid's size, ``coarse_grid``): score each spectrum only at its own coarse
    points (``zfast.hybrid``: the windows its network's P(z) names; at least one per row). Templates are still
    rendered once per z and shared by the spectra that scan it; points not scanned have χ² = +inf and
    log-likelihood -inf in the grids, so the valley, the refined pairs and ``fit_deltachi2`` see only the windows.

    Returns a dict of CPU tensors: "z" [B] float64, "sed" [B] (the best SED, an index into the library),
    "chi2" [B] (its χ² minus Σ w f², float64), "z_err" [B] (the Δχ² = 1 half-width of its χ² valley: a formal
    error, right only for a perfect template and the true ivar), "rchi2" [B] (its χ² per valid pixel less one, with
    unit weights for noiseless spectra), "n_valid" [B] (pixels fitted), "modes" (dict of [B, n_refine + 2]: "z", "sed",
    "chi2", "sigma" of every refined pair, for ``fit_quantiles``), "z_grid" [K], "chi2_grid" [B, K] (float32 maths,
    any flux units: the best SED's χ² minus Σ w f² at each coarse z) and "log_like_grid" [B, K] (log Σ_s exp(-χ²_s/2)
    at each coarse z, up to a constant per spectrum; NaN when no spectrum of the call is marginalised).
    """
    flux, ivar = _checked_spectra(instrument, flux, ivar)
    z_lo, z_hi = z_range
    if not (z_hi > z_lo and step > 0):
        raise ValueError(f"need z_range = (lo, hi) with hi > lo and step > 0, got {z_range}, {step}")
    device = library.device
    seds = torch.arange(len(library), device=device) if sed_index is None else torch.as_tensor(sed_index, device=device)
    if seds.numel() == 0:
        raise ValueError("no SEDs to fit with")
    grid = coarse_grid(z_range, step)
    n_coarse = grid.numel()
    if scan is not None:
        scan = torch.as_tensor(scan, device=device)
        if scan.dtype != torch.bool or scan.shape != (flux.shape[0], n_coarse):
            raise ValueError(f"scan must be a bool [{flux.shape[0]}, {n_coarse}] mask of the coarse grid, got "
                             f"{scan.dtype} {tuple(scan.shape)}")  # fmt: skip
        if not bool(scan.any(dim=1).all()):
            raise ValueError("scan: every spectrum needs at least one coarse point")
    weight, flux = fit_weights(flux.to(device), ivar.to(device))
    # Noiseless spectra (ivar = inf: unit weights) have no χ² scale to marginalise with: the best SED alone decides.
    marginal = ~torch.isinf(ivar.to(device)).any(dim=1) & marginalise
    chi2_top, sed_top, log_like, chi2_scale = coarse_scores(library, instrument, seds, grid, flux, weight, marginal, chunk,
                                                             progress, scan)  # fmt: skip
    pair, centre = _pairs_to_refine(chi2_top, log_like, marginal, n_refine)
    b, n_pairs = pair.shape
    top = chi2_top.shape[2]
    sed = seds[sed_top.reshape(b, -1).gather(1, pair)].reshape(-1)  # [B·P]
    z0 = grid.to(device)[pair // top].reshape(-1, 1)
    flux_p, weight_p = flux.repeat_interleave(n_pairs, dim=0), weight.repeat_interleave(n_pairs, dim=0)
    z0, value, sigma = _refine_pairs(library, instrument, sed, flux_p, weight_p, z0, step, z_range)
    # The winner: the best refined pair in the chosen valley, within two coarse steps of its centre (the window's
    # pairs always are; a global pair there may fit better), noiseless: the smallest χ² of all pairs.
    outside = (z0.reshape(b, n_pairs) - grid.to(device)[centre]).abs() > 2 * step + 1e-12
    candidates = value.reshape(b, n_pairs).masked_fill(outside & marginal[:, None], math.inf)
    best = candidates.argmin(dim=1, keepdim=True)
    take = lambda t: t.reshape(b, n_pairs).gather(1, best)[:, 0].cpu()
    modes = {"z": z0.reshape(b, n_pairs).cpu(), "sed": sed.reshape(b, n_pairs).cpu(), "chi2": value.reshape(b, n_pairs).cpu(),
             "sigma": sigma.reshape(b, n_pairs).cpu()}  # fmt: skip
    # Reduced χ² of the winner (χ² per valid pixel, less one for the amplitude; unit weights for noiseless spectra).
    n_valid = (weight > 0).sum(dim=1).cpu()
    rchi2 = (take(value) + (weight * flux.square()).sum(dim=1).cpu()) / (n_valid - 1).clamp_min(1)
    return {"z": take(z0), "sed": take(sed), "chi2": take(value), "z_err": take(sigma), "rchi2": rchi2, "n_valid": n_valid,
            "modes": modes, "z_grid": grid,
            "chi2_grid": (chi2_top[:, :, 0] * chi2_scale).cpu(), "log_like_grid": log_like.cpu()}  # fmt: skip


def coarse_grid(z_range: tuple, step: float) -> torch.Tensor:
    """[K] float64: ``library_fit_redshift``'s coarse z grid, the centres of ``step``-wide cells over ``z_range``."""
    z_lo, z_hi = z_range
    n_coarse = max(1, math.ceil((z_hi - z_lo) / step - 1e-9))
    return (z_lo + step * (torch.arange(n_coarse, dtype=torch.float64) + 0.5)).clamp(max=z_hi)


def _checked_spectra(instrument: Instrument, flux: torch.Tensor, ivar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flux, ivar) as float64, checked to be [B, M] on ``instrument``'s M pixels."""
    flux, ivar = flux.double(), ivar.double()
    if flux.dim() != 2 or ivar.shape != flux.shape or flux.shape[1] != instrument.n_pixels:
        raise ValueError(f"flux and ivar must be [B, {instrument.n_pixels}], got {tuple(flux.shape)}, {tuple(ivar.shape)}")
    return flux, ivar


def rendered(library: SEDLibrary, instrument: Instrument, seds: torch.Tensor, z: torch.Tensor, edges: torch.Tensor) -> tuple:
    """(templates [S, M], their squares) float32: SEDs ``seds`` [S] at redshifts ``z`` [S] on ``edges``, through the
    instrument's LSF. On the CPU one native pass (``zfast.ops.redshift_resample.render_templates``: the row is
    convolved while in L1); elsewhere ``redshift_resample`` then ``Instrument.convolve_lsf`` and the square."""
    kernel = instrument.lsf_kernel(dtype=torch.float32)
    if kernel is not None and render_templates_available(library.device):
        return render_templates(library.cumulative, seds, z, edges, library.ln_edge0, library.dln, kernel)
    templates = instrument.convolve_lsf(library.redshift_resample(seds, z, edges))
    return templates, templates.square()


def coarse_scores(library: SEDLibrary, instrument: Instrument, seds: torch.Tensor, grid: torch.Tensor, flux: torch.Tensor,
                   weight: torch.Tensor, marginal: torch.Tensor, chunk: int, progress, scan=None) -> tuple:  # fmt: skip
    """The coarse stage of ``library_fit_redshift``, in float32: every SED ``seds`` [S] at every z of ``grid`` [K]
    against spectra ``flux`` [B, M] with weights ``weight`` (``fit_weights``), ``chunk`` spectra per matmul.

    Returns (chi2_top [B, K, top] float32: the ``top`` = min(3, S) smallest χ² minus Σ w f² at each z, in units of
    ``chi2_scale``; sed_top [B, K, top]: their ranks into ``seds``; log_like [B, K] float32: log Σ_s exp(-χ²_s/2) in
    each spectrum's own ivar units, NaN unless some row of ``marginal`` [B] is set; chi2_scale [B, 1] float64: the
    factor from the scaled χ² to each spectrum's own units). With ``scan`` [B, K] only the rows that scan a z are
    scored there (the others: χ² +inf, log_like -inf, SED rank 0)."""
    device = library.device
    b, n_coarse, top = flux.shape[0], grid.numel(), min(3, seds.numel())
    edges = instrument.wave_edges.to(device)
    chi2_top = torch.full((b, n_coarse, top), math.inf, dtype=torch.float32, device=device)
    sed_top = torch.zeros(b, n_coarse, top, dtype=torch.int64, device=device)
    log_like = torch.full((b, n_coarse), math.nan, dtype=torch.float32, device=device)  # log Σ_SED exp(-χ²/2) per z
    # Scale each spectrum's weights and flux to ~1 first (its argmin over z and SED does not change; unscaled, ivar of
    # f_λ in erg s⁻¹ cm⁻² Å⁻¹ ~ 1e34 and χ² terms ~ 1e-61 under/overflow in float32).
    w_scale = torch.where(weight > 0, weight, math.nan).nanmedian(dim=1, keepdim=True).values.nan_to_num(1.0)
    f_scale = torch.where(weight > 0, flux.abs(), math.nan).nanmedian(dim=1, keepdim=True).values.nan_to_num(1.0)
    f_scale = torch.where(f_scale > 0, f_scale, 1.0)
    wf32, w32 = (weight / w_scale * flux / f_scale).float(), (weight / w_scale).float()
    to_chi2 = (w_scale * f_scale.square()).float()  # scaled χ² -> χ² in the spectrum's own ivar units
    any_marginal = bool(marginal.any())  # else no log-sum-exp pass over every (spectrum, SED) score in the loop
    scanners = [None] * n_coarse  # per z: the rows that scan it (None: all), found with one host sync, not one per z
    if scan is not None:
        if any_marginal:
            log_like.masked_fill_(~scan & marginal[:, None], -math.inf)
        scanners = torch.split(scan.T.nonzero()[:, 1], scan.sum(dim=0).tolist())
    for k, zk in enumerate(grid.tolist()):
        scanning = scanners[k]
        if scanning is not None and scanning.numel() == 0:
            continue
        templates, squares = rendered(library, instrument, seds, torch.full((seds.numel(),), zk, device=device), edges)
        for start in range(0, b if scanning is None else scanning.numel(), chunk):
            rows = slice(start, start + chunk) if scanning is None else scanning[start : start + chunk]
            cross = wf32[rows] @ templates.T
            power = w32[rows] @ squares.T
            chi = cross.square_().div_(power.clamp_min_(1e-30)).neg_()
            value, which = chi.topk(top, dim=1, largest=False)
            chi2_top[rows, k], sed_top[rows, k] = value, which
            if any_marginal:
                log_like[rows, k] = _log_sum_exp(chi, -0.5 * to_chi2[rows], value[:, :1])
        if progress is not None:
            progress(k + 1, n_coarse)
    return chi2_top, sed_top, log_like, w_scale * f_scale.square()


def _log_sum_exp(chi: torch.Tensor, scale: torch.Tensor, chi_min: torch.Tensor) -> torch.Tensor:
    """[R]: log Σ_s exp(scale·chi_s) of each row of ``chi`` [R, S] (``scale`` [R, 1] < 0, ``chi_min`` [R, 1] the row's
    smallest, so the largest term is known). Terms more than 40 below the largest count as exp(-40): at most
    S·e⁻⁴⁰ ~ 1e-14 of the sum, far below float32's resolution. Why: exp of float32 values far below -88 takes a slow
    path on x86 CPUs (measured ~10x slower than exp of normal-range values; it was a third of the full fit's time)."""
    top = chi_min * scale
    return (chi * scale).sub_(top).clamp_min_(-40.0).exp_().sum(dim=1).log_().add_(top[:, 0])


def _pairs_to_refine(chi2_top: torch.Tensor, log_like: torch.Tensor, marginal: torch.Tensor, n_refine: int) -> tuple:
    """(pair [B, P], centre [B, 1]): the (z, SED) pairs of ``coarse_scores`` to refine, as flat indices z·top + rank
    into chi2_top [B, K, top], and the coarse z index of each spectrum's chosen valley.

    The valley: the z of the largest likelihood summed over the SEDs (``log_like``, a uniform prior over the library)
    where ``marginal``, else (noiseless) of the smallest χ². Refined there: the ``n_window`` best (z, SED) pairs of that
    coarse point and its neighbours; and, for the intervals (``modes``), the ``n_refine`` best pairs of the whole grid,
    wherever they are."""
    b, n_coarse, top = chi2_top.shape
    device = chi2_top.device
    flat = chi2_top.reshape(b, -1)
    score = torch.where(marginal[:, None], log_like, -chi2_top[:, :, 0])
    centre = score.argmax(dim=1, keepdim=True)
    near = (centre + torch.arange(-1, 2, device=device)).clamp(0, n_coarse - 1)  # [B, 3]
    near = (near[:, :, None] * top + torch.arange(top, device=device)).reshape(b, -1)  # [B, 3·top] into (z, rank)
    n_window = min(2, near.shape[1])
    window = near.gather(1, flat.gather(1, near).topk(n_window, dim=1, largest=False).indices)
    n_global = min(n_refine, n_coarse * top)
    pair = torch.cat([window, flat.topk(n_global, dim=1, largest=False).indices], dim=1)  # [B, P] into (z, rank)
    return pair, centre


def _refine_pairs(library: SEDLibrary, instrument: Instrument, sed: torch.Tensor, flux: torch.Tensor, weight: torch.Tensor,
                  z0: torch.Tensor, step: float, z_range: tuple) -> tuple:  # fmt: skip
    """(z [R, 1], χ² minus Σ w f² [R, 1], σ [R, 1]) of each row's (spectrum ``flux`` [R, M], SED ``sed`` [R]) pair from
    its coarse z ``z0`` [R, 1]: the χ² minimum on grids 20x and 400x finer than ``step``, in float64, and the
    Δχ² = 1 half-width of its valley (``_curvature_sigma``; by secants where the valley is wider than the window)."""
    z_lo, z_hi = z_range
    offsets = torch.arange(-20, 21, dtype=torch.float64, device=z0.device) / 20
    for level in (1, 2):
        fine = (z0 + step * offsets / 20 ** (level - 1)).clamp(z_lo, z_hi)
        chi = torch.cat([template_chi2(library, instrument, sed[r], flux[r], weight[r], fine[r]) for r in _row_chunks(sed.numel(), 64)])
        value, pick = chi.min(dim=1, keepdim=True)
        z0 = fine.gather(1, pick)
    sigma = _curvature_sigma(fine, chi, z0, step)
    # Valleys wider than the window (weak features), where the parabola's extrapolation is poor: there, twice, the
    # secant through z0 ± σ: σ <- σ / sqrt(mean Δχ²(z0 ± σ)).
    wide = (sigma[:, 0] > step / 40).nonzero()[:, 0]
    for _ in range(2 if wide.numel() else 0):
        points = torch.cat([z0[wide], z0[wide] - sigma[wide], z0[wide] + sigma[wide]], dim=1).clamp(z_lo, z_hi)
        chi3 = torch.cat([template_chi2(library, instrument, sed[wide][r], flux[wide][r], weight[wide][r], points[r])
                          for r in _row_chunks(wide.numel(), 256)])  # fmt: skip
        rise = (chi3[:, 1:] - chi3[:, :1]).mean(dim=1, keepdim=True)
        sigma[wide] = (sigma[wide] / rise.clamp_min(1e-6).sqrt()).clamp_max((z_hi - z_lo) / 4)
    return z0, value, sigma


def _curvature_sigma(z: torch.Tensor, chi: torch.Tensor, z0: torch.Tensor, step: float) -> torch.Tensor:
    """[R, 1]: the Δχ² = 1 half-width 1/sqrt(a) of a least-squares parabola a(z - z0)² + b(z - z0) + c through each
    row's χ² samples ``chi`` at ``z`` [R, K] (the final refinement window, ±step/20 around the minimum ``z0``);
    ``step`` where the window has no upward curvature (a minimum on an end of the z range, a flat χ²)."""
    x = (z - z0) / (step / 20)  # ~[-1, 1]: a well-conditioned fit
    design = torch.stack([x.square(), x, torch.ones_like(x)], dim=2)
    coef = torch.linalg.lstsq(design, (chi - chi.min(dim=1, keepdim=True).values)[..., None]).solution[..., 0]
    a = coef[:, :1] / (step / 20) ** 2
    return torch.where(a > 0, a.clamp_min(1e-300).rsqrt(), torch.full_like(a, step)).clamp_max(step)


# Temperatures tried by ``calibrate_fit_temperatures``: the tempered χ² exp(-χ²/2T) of a noiseless spectrum (χ² of a
# normalised spectrum against an imperfect template, ~1e-4 per pixel) needs T ~ 1e-3; noisy spectra T ~ 1-100; spectra
# whose few valleys are all wrong (Euclid-like without a detectable line) need far higher T, widening them to the z range.
FIT_TEMPERATURES = tuple(math.exp(math.log(1e-6) + i * (math.log(1e6) - math.log(1e-6)) / 240) for i in range(241))


def fit_quantiles(fit: dict, temperature, levels=(0.16, 0.84)) -> torch.Tensor:
    """[B, L] quantiles of the template fit's P(z) at ``temperature`` (a number or [B]): the tempered likelihood
    exp(-χ²(z) / 2T) of ``library_fit_redshift``'s refined (z, SED) pairs (``fit["modes"]``), each χ² valley taken as
    a parabola: a mixture of normals N(z_j, T σ_j²), with weight σ_j √T exp(-(χ²_j - χ²_min) / 2T) (the valley's
    integral), pairs at the same z with the same SED counted once. T = 1 is the formal likelihood with the true noise
    and a perfect template; ``calibrate_fit_temperatures`` fits T per SNR bin and group."""
    modes = fit["modes"]
    z, chi2, sigma, sed = (modes[k].double() if k != "sed" else modes[k] for k in ("z", "chi2", "sigma", "sed"))
    temperature = torch.as_tensor(temperature, dtype=torch.float64).reshape(-1, 1)
    # Duplicates: the same SED refined to the same minimum from two coarse points.
    same = (sed[:, :, None] == sed[:, None, :]) & ((z[:, :, None] - z[:, None, :]).abs() <= 1e-6)
    earlier = torch.ones_like(same[0]).triu(diagonal=1).T  # [P, P]: j < i
    duplicate = (same & earlier).any(dim=2)
    log_w = sigma.log() - (chi2 - chi2.min(dim=1, keepdim=True).values) / (2 * temperature)
    log_w = log_w.masked_fill(duplicate, -math.inf)
    weight = torch.softmax(log_w, dim=1)
    scale = sigma * temperature.sqrt()
    lo = (z - 10 * scale).min(dim=1).values
    hi = (z + 10 * scale).max(dim=1).values
    out = []
    for level in levels:
        a, b = lo.clone(), hi.clone()
        for _ in range(60):  # bisection on the mixture's CDF
            mid = (a + b) / 2
            cdf = (weight * torch.special.ndtr((mid[:, None] - z) / scale)).sum(dim=1)
            below = cdf < level
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
        out.append((a + b) / 2)
    return torch.stack(out, dim=1)


# Calibration groups (``fit_groups``). At one continuum SNR a spectrum with a strong emission line has one valley and
# one without has many, and one temperature cannot cover 68 % of both. Marginalised (noisy) spectra are grouped by
# ``fit_confidence``; noiseless ones, whose only error is the template's mismatch, by their reduced χ² (of spectra
# normalised as the table's: its distribution is bimodal, with modes below 3e-4 and above 1.2e-3).
CONFIDENCE_EDGES = (0.0, 0.5, 0.9, 0.99, math.inf)
NOISELESS_RCHI2_EDGES = (0.0, 3e-4, 6e-4, 1.2e-3, math.inf)
N_GROUPS = len(CONFIDENCE_EDGES) + len(NOISELESS_RCHI2_EDGES) - 2


def fit_confidence(fit: dict, width: float = 0.01) -> torch.Tensor:
    """[B]: the share of the SED-marginalised likelihood (``fit["log_like_grid"]``, T = 1, uniform prior over the
    coarse z grid) within ±width·(1 + z) of the fitted z: near 1 when one valley dominates, low when other z compete.
    1 for rows fitted without marginalising (noiseless, ``marginalise=False``: NaN log_like_grid)."""
    like = torch.softmax(fit["log_like_grid"].double().cpu().nan_to_num(0.0), dim=1)
    share = share_near(like, fit["z_grid"].double().cpu(), fit["z"].double().cpu(), width)
    return torch.where(_marginalised(fit), share, 1.0)


def fit_deltachi2(fit: dict, width: float = 0.01) -> torch.Tensor:
    """[B] float64: the χ² of the best fit at another redshift less the fit's own: the smallest χ² (best SED) on
    the coarse grid outside ±width·(1 + z) of the fitted z, minus ``fit["chi2"]`` (both in the spectrum's ivar
    units, less the same Σ w f²). redrock's DELTACHI2 with our grid: the second minimum is taken at coarse points
    (``step`` apart), not refined, so it can only overstate Δχ² by its valley's depth within half a step. Negative
    when another z fits better by χ² than the valley the marginalised likelihood chose; +inf when the whole grid
    lies within the window."""
    z = fit["z"].double().cpu()
    grid = fit["z_grid"].double().cpu()
    far = (grid[None, :] - z[:, None]).abs() > width * (1.0 + z[:, None])
    second = fit["chi2_grid"].double().cpu().masked_fill(~far, math.inf).min(dim=1).values
    return second - fit["chi2"].double().cpu()


def _marginalised(fit: dict) -> torch.Tensor:
    """[B] bool: rows whose valley was chosen by the SED-marginalised likelihood (finite log_like_grid)."""
    return ~torch.isnan(fit["log_like_grid"]).any(dim=1).cpu()


def fit_groups(fit: dict) -> torch.Tensor:
    """[B] int64 in [0, N_GROUPS): the calibration group of each fitted spectrum: its ``fit_confidence`` bin
    (``CONFIDENCE_EDGES``) if it was marginalised, else 4 + its reduced-χ² bin (``NOISELESS_RCHI2_EDGES``)."""
    marginal = _marginalised(fit)
    by_confidence = bin_index(fit_confidence(fit).cpu(), torch.tensor(CONFIDENCE_EDGES, dtype=torch.float64))
    by_rchi2 = bin_index(fit["rchi2"].double().cpu().nan_to_num(0.0), torch.tensor(NOISELESS_RCHI2_EDGES, dtype=torch.float64))
    return torch.where(marginal, by_confidence, len(CONFIDENCE_EDGES) - 1 + by_rchi2)


def fit_scale(fit: dict) -> torch.Tensor:
    """[B]: the factor on the calibrated temperature of each spectrum: its reduced χ² where the noise is known
    (marginalised rows: a template that fits worse than the noise widens its valleys, as the classical error ×
    sqrt(χ²_ν)), 1 for the others (noiseless: grouped by it instead)."""
    return torch.where(_marginalised(fit), fit["rchi2"].double().cpu(), 1.0)


def calibrate_fit_temperatures(fit: dict, z: torch.Tensor, snr: torch.Tensor, groups: torch.Tensor | None = None,
                               scale: torch.Tensor | None = None) -> dict:  # fmt: skip
    """{"snr_edges", "temperatures", "counts"}: per SNR bin (``zfast.calibration.SNR_EDGES`` of ``spectrum_snr``), the
    temperature of ``FIT_TEMPERATURES`` whose 68 % intervals (``fit_quantiles``) cover closest to 68 % of the true
    ``z`` of these (validation) spectra, on the branch where coverage still grows with T; bins with fewer than
    ``MIN_SPECTRA`` spectra take the nearest fitted bin's (as ``zfast.calibration.fit_temperatures``).

    With ``groups`` ([B] int64 in [0, N_GROUPS), ``fit_groups``) the bins are group × SNR ("temperatures" and
    "counts" [N_GROUPS, n_snr], "n_groups"); a group with no SNR bin of enough spectra takes the temperatures of the
    nearest group of the same kind. ``scale`` ([B], ``fit_scale``) multiplies each spectrum's temperature."""
    edges = torch.tensor(SNR_EDGES, dtype=torch.float64)
    k = bin_index(torch.nan_to_num(snr.double().cpu(), nan=0.0), edges)
    z = z.double().cpu()
    factor = torch.ones_like(z) if scale is None else scale.double().cpu()
    covered = []
    for temperature in FIT_TEMPERATURES:
        lo68, hi68 = fit_quantiles(fit, temperature * factor).unbind(dim=1)
        covered.append(((lo68 <= z) & (z <= hi68)).double())
    covered = torch.stack(covered)
    n_snr = edges.numel() - 1
    if groups is None:
        temperatures, counts = pick_temperatures(covered, k, n_snr, FIT_TEMPERATURES)
        return {"snr_edges": edges, "temperatures": temperatures, "counts": counts}
    kinds = [g < len(CONFIDENCE_EDGES) - 1 for g in range(N_GROUPS)]  # confidence groups, reduced-χ² groups
    temperatures, counts = pick_grouped_temperatures(covered, k, groups.cpu(), N_GROUPS, n_snr, FIT_TEMPERATURES, kinds=kinds)
    return {"snr_edges": edges, "temperatures": temperatures, "counts": counts, "n_groups": torch.tensor(N_GROUPS)}


def fit_temperature(calibration: dict, snr: torch.Tensor, groups: torch.Tensor | None = None,
                    scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """[B]: the calibrated temperature of each spectrum's SNR bin (and group, ``fit_groups``, when the calibration
    has them: then ``groups`` is required), times ``scale`` (``fit_scale``, as calibrated with)."""
    k = bin_index(torch.nan_to_num(snr.double().cpu(), nan=0.0), torch.as_tensor(calibration["snr_edges"]).double())
    temperatures = torch.as_tensor(calibration["temperatures"]).double()
    factor = 1.0 if scale is None else scale.double().cpu()
    if "n_groups" not in calibration:
        return temperatures[k] * factor
    if groups is None:
        raise ValueError("this calibration is per SNR bin and group: pass groups=fit_groups(fit)")
    return temperatures[groups.cpu(), k] * factor


def _row_chunks(n: int, size: int) -> list:
    return [slice(start, start + size) for start in range(0, n, size)]
