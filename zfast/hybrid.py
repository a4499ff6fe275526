"""The network proposes, the templates confirm: the template fit scanned only where the network's P(z) has mass.

``library_fit_redshift`` scores every SED at every point of a coarse z grid (400 points at step 2e-3 over
[1, 1.8)); its cost is those matrix products. A network's P(z) already says where the χ² valleys can be: here each
spectrum's fit scans only the ``n_points`` coarse points whose cell (±1.5 steps around the point, so that a valley
between two points is seen from both) holds the most P(z) mass. A confident spectrum's points gather around its
one peak (``n_points`` = 24: ±0.024 in z, many times the network's error); an ambiguous one's spread over its
peaks in proportion to their mass. Everything after the coarse stage is the full fit's: the valley of the largest
SED-marginalised likelihood among the scanned points, its best (z, SED) pairs refined on grids 20x and 400x finer,
and DELTACHI2 against the best scanned point outside ±0.01(1+z) — the best other window.

Why points rather than the three catalogue candidates with ±0.01(1+z) windows: those hold 75 points for
every spectrum; the mass ranking spends points where the mass is. The share of spectra whose true z lies within
one step of a scanned point, the accuracy and the speed against the full fit are measured in docs/hybrid.md.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .bins import normalised_probs, window_mass
from .template_fit import coarse_grid, coarse_scores, fit_weights

N_POINTS = 24  # coarse points scanned per spectrum at most (of 400 at step 2e-3 over [1, 1.8)): docs/hybrid.md
REACH = 1.5  # each point's cell, in coarse steps either side
MIN_MASS = 1e-4  # of those, points whose cell holds less P(z) mass are not scanned ...
N_MIN = 3  # ... except the N_MIN with the most: a peak and its two neighbours (docs/hybrid.md, "Mass floor")
MAX_MISSING = 0.05  # a spectrum whose scanned cells miss more of its P(z) than this scans every point (the full fit)
PRESCAN_SEDS = 800  # ... or, with a library of more than twice this many SEDs, every point with this many of them,
PRESCAN_POINTS = 48  # then the whole library at the best this many (and its network's own): docs/hybrid.md, "Pre-scan"


def scan_points(probs: torch.Tensor, bin_edges, grid: torch.Tensor, step: float, n_points: int = N_POINTS,
                min_mass: Optional[float] = None, max_missing: Optional[float] = None) -> torch.Tensor:  # fmt: skip
    """bool [B, K]: for each row of P(z) ``probs`` [B, C] over ``bin_edges`` [C + 1], the ``n_points`` points of the
    coarse grid ``grid`` [K] (spacing ``step``; ``zfast.template_fit.coarse_grid``) whose cells z ± REACH·step hold
    the most mass (ties: the lower z), for ``library_fit_redshift(scan=...)``; of those, the ones whose cell holds
    less than ``min_mass`` (default ``MIN_MASS``; 0 keeps all) are dropped, except the ``N_MIN`` with the most mass.
    A row whose chosen cells leave out more than ``max_missing`` (default ``MAX_MISSING``; >= 1 never) of its P(z)
    (the mass of bins whose centre lies in no chosen cell) scans all K. All K when n_points >= K.

    Why the floor: a confident spectrum's P(z) (σ ~ 1e-4 (1+z), a tenth of a step) puts nearly all its mass in two or
    three cells, and the other 21 points of its 24 cost as much to score as they are unlikely to hold the truth;
    an ambiguous spectrum's cells all hold more than the floor and it keeps its 24. Why the widening: where the
    network itself says the truth may lie outside its 24 points (a broad or many-peaked P(z), mostly at SNR <= 3),
    only the full scan can find it there; spending the full fit on those spectra alone is what makes the hybrid
    as accurate as the full fit at SNR 3 (docs/hybrid.md)."""
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")
    min_mass = MIN_MASS if min_mass is None else float(min_mass)
    if not min_mass >= 0.0:
        raise ValueError(f"min_mass must be >= 0, got {min_mass!r}")
    p, edges = normalised_probs(probs, bin_edges)
    grid = torch.as_tensor(grid, dtype=torch.float64, device=p.device)
    k = grid.numel()
    if n_points >= k:
        return torch.ones(p.shape[0], k, dtype=torch.bool, device=p.device)
    cdf = torch.cat([p.new_zeros(p.shape[0], 1), torch.cumsum(p, dim=1)], dim=1)
    centre = grid.expand(p.shape[0], -1)
    mass = window_mass(cdf, edges, centre - REACH * step, centre + REACH * step)  # [B, K]
    # A stable order for ties (flat P(z), cells beyond the bins): the mass, then the lower z.
    rank = mass - 1e-15 * torch.arange(k, dtype=torch.float64, device=p.device) / k
    top = rank.topk(n_points, dim=1)  # sorted: the most mass first
    keep = top.values >= min_mass
    keep[:, : min(N_MIN, n_points)] = True
    chosen = torch.where(keep, top.indices, top.indices[:, :1])  # dropped ones repeat the first: scatter is idempotent
    scan = torch.zeros(p.shape[0], k, dtype=torch.bool, device=p.device).scatter_(1, chosen, True)
    max_missing = MAX_MISSING if max_missing is None else float(max_missing)
    if not max_missing >= 0.0:
        raise ValueError(f"max_missing must be >= 0, got {max_missing!r}")
    if max_missing < 1.0:
        scan |= (missing_mass(p, edges, grid, step, scan) > max_missing)[:, None]
    return scan


def missing_mass(p: torch.Tensor, edges: torch.Tensor, grid: torch.Tensor, step: float, scan: torch.Tensor) -> torch.Tensor:
    """[B] float64: the mass of normalised P(z) ``p`` [B, C] (bins ``edges`` [C + 1]) in bins whose centre lies in
    none of the scanned cells (``scan`` [B, K] over ``grid`` [K] of spacing ``step``; cell = point ± REACH·step).
    Each centre has at most 2·REACH + 1 points within reach: those are gathered, not a [B, C, K] comparison."""
    centre = 0.5 * (edges[1:] + edges[:-1])  # [C]
    reach = int(REACH) + 1
    nearest = torch.round((centre - grid[0]) / step).long()
    candidates = (nearest[:, None] + torch.arange(-reach, reach + 1, device=p.device)).clamp(0, grid.numel() - 1)  # [C, R]
    within = (centre[:, None] - grid[candidates]).abs() <= REACH * step * (1 + 1e-12)  # [C, R]
    covered = (scan[:, candidates] & within).any(dim=2)  # [B, C]
    return (p * ~covered).sum(dim=1)


def prescanned(library, instrument, flux: torch.Tensor, ivar: torch.Tensor, seds: Optional[torch.Tensor], own: torch.Tensor,
               widened: torch.Tensor, z_range: tuple, step: float, marginalise: bool = True,
               n_seds: Optional[int] = None, n_points: Optional[int] = None,
               subset: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """bool [B, K]: the scan of ``library_fit_redshift(scan=...)`` for spectra ``flux``, ``ivar`` [B, M] whose
    network's own points are ``own`` [B, K] (``scan_points(..., max_missing=1.0)``) and of which the rows ``widened``
    [B] (bool) are to be scanned everywhere. With ``seds`` (default: the whole library) holding more than twice
    ``n_seds`` (default ``PRESCAN_SEDS``) SEDs, a widened row scans instead its own points and the ``n_points``
    (default ``PRESCAN_POINTS``) coarse points where ``n_seds`` of the SEDs (``representative_seds``) score best
    over the whole grid (the fit's own valley score: the SED-marginalised likelihood, the smallest χ² for
    noiseless spectra or with ``marginalise=False``); otherwise it scans every point. ``subset``: those SEDs, when
    already chosen (``Templates.prescan``: once per loaded template set, not once per batch).

    Why: widened rows (the network unsure) cost the full fit each, with 7,200 SEDs most of the hybrid's time at
    SNR 10 (docs/hybrid.md). A valley of the full library's χ² is a valley for most SEDs like the best one, so a
    fraction of the library finds the candidate valleys over the whole grid, and the whole library then decides
    among them."""
    scan = own.clone()
    rows = widened.nonzero()[:, 0]
    if rows.numel() == 0:
        return scan
    n_seds = PRESCAN_SEDS if n_seds is None else int(n_seds)
    n_points = PRESCAN_POINTS if n_points is None else int(n_points)
    if n_seds < 1 or n_points < 1:
        raise ValueError(f"n_seds and n_points must be positive, got {n_seds}, {n_points}")
    if subset is None:
        subset = prescan_subset(library, seds, instrument.wave_edges, z_range, n_seds)
    if subset is None or n_points >= own.shape[1]:
        scan[rows] = True
        return scan
    # The fit's coarse stage alone (no refinement: only its valley scores are wanted), as library_fit_redshift runs it.
    device = library.device
    weight, values = fit_weights(flux[rows].double().to(device), ivar[rows].double().to(device))
    marginal = ~torch.isinf(ivar[rows].to(device)).any(dim=1) & marginalise
    chi2_top, _, log_like, _ = coarse_scores(library, instrument, torch.as_tensor(subset).to(device), coarse_grid(z_range, step),
                                             values, weight, marginal, 4096, None)  # fmt: skip
    score = torch.where(marginal[:, None], log_like, -chi2_top[:, :, 0])  # [R, K], the fit's valley score
    best = score.nan_to_num(-math.inf).topk(n_points, dim=1).indices
    scan[rows.to(scan.device)] |= torch.zeros_like(score, dtype=torch.bool).scatter_(1, best, True).to(scan.device)
    return scan


def hybrid_scan(probs: torch.Tensor, bin_edges, library, instrument, flux: torch.Tensor, ivar: torch.Tensor,
                seds: Optional[torch.Tensor], n_points: int, z_range: tuple, step: float, marginalise: bool = True,
                subset: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """bool [B, K]: the hybrid's scan for spectra ``flux``, ``ivar`` [B, M] with the network's P(z) ``probs``
    [B, C] over ``bin_edges``: each row's ``scan_points``, its widened rows ``prescanned`` (with ``subset``, the
    pre-scan's SEDs, where given) over the coarse grid of ``step`` on ``z_range``."""
    grid = coarse_grid(z_range, step)
    own = scan_points(probs, bin_edges, grid, step, n_points, max_missing=1.0)
    # scan_points' own widening rule, on the points already chosen (not a second ranking of every cell).
    p, edges = normalised_probs(probs, bin_edges)
    widened = (missing_mass(p, edges, grid.to(p), step, own) > MAX_MISSING) & (MAX_MISSING < 1.0)
    device = library.device
    return prescanned(library, instrument, flux.double(), ivar, seds, own.to(device), widened.to(device), z_range, step,
                      marginalise=marginalise, subset=subset)  # fmt: skip


def prescan_subset(library, seds: Optional[torch.Tensor], wave_edges, z_range: tuple,
                   n_seds: Optional[int] = None) -> Optional[torch.Tensor]:  # fmt: skip
    """``prescanned``'s ``subset`` for fitting with ``seds`` (None: all) of ``library``: ``n_seds`` (default
    ``PRESCAN_SEDS``) ``representative_seds`` of them when they are more than twice that, else None (no pre-scan)."""
    n_seds = PRESCAN_SEDS if n_seds is None else int(n_seds)
    every = torch.arange(len(library)) if seds is None else torch.as_tensor(seds).cpu()
    if every.numel() <= 2 * n_seds:
        return None
    return representative_seds(library, every, n_seds, wave_edges, z_range)


SHAPE_BINS = 128  # log-λ bins of the rest band in which representative_seds compares SED shapes
KMEANS_ITERATIONS = 10  # its Lloyd iterations


def representative_seds(library, seds: torch.Tensor, n: int, wave_edges, z_range: tuple) -> torch.Tensor:
    """[<= n] int64: ``n`` of the SEDs ``seds`` [S] (indices into ``library``; fewer only where two clusters share a
    member) that spread over the library's shapes: k-means (seeded by farthest-point sampling from the SED nearest
    the mean shape) on log f_λ less its mean (the amplitude is free in the fit), averaged into ``SHAPE_BINS`` log-λ
    bins over the rest band that ``wave_edges`` (Å) sees over ``z_range``; each cluster gives its member nearest
    its centre. All of ``seds`` when n >= S.

    Why not a random or evenly spaced subset: a few SED families (passive, or with strong lines) can be rare in a
    library, and a subset without them scores their spectra's true valleys low (docs/hybrid.md, "Pre-scan")."""
    seds = torch.as_tensor(seds).cpu()
    if n >= seds.numel():
        return seds.clone()
    edges = torch.as_tensor(wave_edges, dtype=torch.float64).cpu()
    lo, hi = float(edges[0]) / (1 + z_range[1]), float(edges[-1]) / (1 + z_range[0])
    bins = torch.exp(torch.linspace(math.log(lo), math.log(hi), SHAPE_BINS + 1, dtype=torch.float64))
    shapes = []
    for chunk in torch.split(seds, 1024):
        rows = library.redshift_resample(chunk.to(library.device), torch.zeros(chunk.numel(), device=library.device),
                                         bins.to(library.device), fill=math.nan).double().cpu()  # fmt: skip
        shapes.append(rows)
    logf = torch.cat(shapes).clamp_min(1e-300).log()
    logf = logf.nan_to_num(0.0) - logf.nan_to_num(0.0).mean(dim=1, keepdim=True)
    first = int((logf - logf.mean(dim=0)).square().sum(dim=1).argmin())
    chosen = [first]
    distance = (logf - logf[first]).square().sum(dim=1)
    for _ in range(n - 1):
        pick = int(distance.argmax())
        chosen.append(pick)
        distance = torch.minimum(distance, (logf - logf[pick]).square().sum(dim=1))
    # Lloyd iterations from those seeds, then each cluster's member nearest its centre: farthest points alone are the
    # library's outliers, the clusters' medoids its bulk as well.
    centres = logf[torch.tensor(chosen)]
    for _ in range(KMEANS_ITERATIONS):
        label = torch.cdist(logf, centres).argmin(dim=1)
        total = torch.zeros_like(centres).index_add_(0, label, logf)
        count = torch.bincount(label, minlength=n).double()[:, None]
        centres = torch.where(count > 0, total / count.clamp_min(1), centres)
    distance = torch.cdist(centres, logf)  # [n, S]
    picks = distance.argmin(dim=1)
    # Two centres can share a nearest member: the duplicates take the farthest-point seeds they started from.
    unique, first_of = [], set()
    for c, p in enumerate(picks.tolist()):
        unique.append(p if p not in first_of else chosen[c])
        first_of.add(unique[-1])
    return seds[torch.tensor(sorted(set(unique)))]
