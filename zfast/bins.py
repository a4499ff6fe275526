"""Redshift bins shared by the three estimators: class indices, regression targets, soft labels, P(z) summaries.

One definition of the bins serves all three ways of predicting z:

* classification: ``z_to_bin`` gives the index c with bin_edges[c] <= z < bin_edges[c+1] (the last bin also
  holds z == bin_edges[-1]);
* regression: ``z_to_target`` maps [bin_edges[0], bin_edges[-1]] linearly onto [0, 1] and ``target_to_z``
  maps back;
* distribution: ``soft_labels`` spreads each z over the bins with a Gaussian or box kernel integrated exactly
  over each bin, and ``pz_summary`` turns predicted bin probabilities back into z, σ_z and credible intervals.

Conventions: P(z) is piecewise constant inside each bin (probability p_c spread uniformly over
[e_c, e_{c+1}]); all computations are float64; bins may be non-uniform but must be strictly increasing.
The paper's setups are ``redshift_bin_edges(1.0, 1.8, 800)`` (bins of 0.001) and ``(1.0, 1.8, 80)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from .ops import pz_post
from .ops.checks import as_grid, check_increasing


def redshift_bin_edges(z_min: float = 1.0, z_max: float = 1.8, n_bins: int = 800) -> torch.Tensor:
    """Tensor[n_bins + 1], float64: uniform bin edges from ``z_min`` to ``z_max`` (built from an integer index).

    Defaults: the paper's 800 bins of 0.001 over [1, 1.8).
    """
    if not (n_bins >= 1 and z_max > z_min):
        raise ValueError(f"need n_bins >= 1 and z_max > z_min, got n_bins={n_bins}, z_min={z_min}, z_max={z_max}")
    k = torch.arange(n_bins + 1, dtype=torch.float64)
    return z_min + (z_max - z_min) * k / n_bins


def _edges(bin_edges, device) -> torch.Tensor:
    edges = as_grid(bin_edges, "bin_edges", device)
    check_increasing(edges, "bin_edges")
    return edges


def _redshifts(z, name: str = "z") -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        z = torch.as_tensor(z, dtype=torch.float64)
    if z.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if z.numel() and not bool(torch.isfinite(z).all()):
        b = int(torch.nonzero(~torch.isfinite(z)).flatten()[0])
        raise ValueError(f"{name} has non-finite values; {name}[{b}] = {z[b].item()}")
    return z


def _check_in_range(z: torch.Tensor, edges: torch.Tensor) -> None:
    if z.numel() == 0:
        return
    lo, hi = edges[0].item(), edges[-1].item()
    outside = (z < lo) | (z > hi)
    if bool(outside.any()):
        b = int(torch.nonzero(outside).flatten()[0])
        raise ValueError(
            f"z[{b}] = {z[b].item():.6g} is outside the bins [{lo:.6g}, {hi:.6g}] ({int(outside.sum())} of "
            f"{z.numel()} values); widen bin_edges or drop those spectra"
        )


def z_to_bin(z, bin_edges) -> torch.Tensor:
    """Class index of each redshift: c with bin_edges[c] <= z < bin_edges[c+1] (z == bin_edges[-1] -> last bin).

    Args:
        z (Tensor[B]): redshifts, within [bin_edges[0], bin_edges[-1]] (else ValueError naming the first).
        bin_edges (Tensor or array [C+1]): strictly increasing.

    Returns:
        Tensor[B], int64, in [0, C).
    """
    z = _redshifts(z)
    edges = _edges(bin_edges, z.device)
    _check_in_range(z, edges)
    index = torch.bucketize(z.to(torch.float64), edges, right=True) - 1
    return index.clamp(0, edges.numel() - 2)


def z_to_target(z, bin_edges) -> torch.Tensor:
    """Regression target: (z - bin_edges[0]) / (bin_edges[-1] - bin_edges[0]), in [0, 1] for z in the bins.

    Returns Tensor[B] in z's dtype. ``target_to_z`` is the inverse.
    """
    z = _redshifts(z)
    edges = _edges(bin_edges, z.device)
    _check_in_range(z, edges)
    lo, hi = edges[0].item(), edges[-1].item()
    return ((z.to(torch.float64) - lo) / (hi - lo)).to(z.dtype)


def target_to_z(target: torch.Tensor, bin_edges) -> torch.Tensor:
    """Inverse of ``z_to_target``: bin_edges[0] + target·(bin_edges[-1] - bin_edges[0]) (no range check)."""
    edges = _edges(bin_edges, target.device)
    lo, hi = edges[0].item(), edges[-1].item()
    return (lo + target.to(torch.float64) * (hi - lo)).to(target.dtype)


def _normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Φ(b) - Φ(a) for standardised a <= b, without cancelling in either tail (erfc on the far side)."""
    root2 = math.sqrt(2.0)
    upper_tail = 0.5 * (torch.erfc(a / root2) - torch.erfc(b / root2))  # accurate when a >= 0
    lower_tail = 0.5 * (torch.erfc(-b / root2) - torch.erfc(-a / root2))  # accurate when b <= 0
    middle = 0.5 * (torch.erf(b / root2) - torch.erf(a / root2))
    return torch.where(a >= 0, upper_tail, torch.where(b <= 0, lower_tail, middle))


def soft_labels(z, bin_edges, sigma: Union[float, torch.Tensor], kind: str = "gaussian") -> torch.Tensor:
    """Soft class labels Q [B, C]: a kernel centred on each z, integrated exactly over each bin, normalised.

    A z inside a bin is encoded by how its mass spreads to the neighbouring bins ("label super-resolution"):
    the mean of Q over the bin centres recovers z to far below the bin width when the kernel is several bins
    wide.

    Args:
        z (Tensor[B]): true redshifts, within [bin_edges[0], bin_edges[-1]].
        bin_edges (Tensor or array [C+1]): strictly increasing.
        sigma (float or Tensor[B]): the kernel's standard deviation in z, > 0 (per spectrum if a tensor).
        kind (str): "gaussian" (erf differences) or "box" (uniform over z ± √3·σ, so both kinds have
            standard deviation σ).

    Returns:
        Tensor[B, C] in z's dtype, rows summing to 1 (the kernel's mass outside the bins is dropped and the
        rest renormalised).
    """
    z = _redshifts(z)
    edges = _edges(bin_edges, z.device)
    _check_in_range(z, edges)
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=z.device)
    if sigma.dim() > 1 or (sigma.dim() == 1 and sigma.shape[0] != z.shape[0]):
        raise ValueError(f"sigma must be a number or a [B] tensor with B = {z.shape[0]}, got shape {tuple(sigma.shape)}")
    if not bool(torch.isfinite(sigma).all()) or not bool((sigma > 0).all()):
        raise ValueError(f"sigma must be finite and > 0, got {sigma.tolist() if sigma.numel() < 6 else 'a tensor with bad values'}")
    sigma = sigma.reshape(-1, 1) if sigma.dim() == 1 else sigma
    centre = z.to(torch.float64)[:, None]
    lo, hi = edges[None, :-1], edges[None, 1:]
    if kind == "gaussian":
        mass = _normal_mass((lo - centre) / sigma, (hi - centre) / sigma)
    elif kind == "box":
        half_width = math.sqrt(3.0) * sigma
        overlap = torch.minimum(hi, centre + half_width) - torch.maximum(lo, centre - half_width)
        mass = overlap.clamp_min(0.0) / (2 * half_width)
    else:
        raise ValueError(f'kind must be "gaussian" or "box", got {kind!r}')
    return (mass / mass.sum(dim=1, keepdim=True)).to(z.dtype)


class PzSummary(NamedTuple):
    """Summaries of P(z), each Tensor[B] (float64)."""

    z_mean: torch.Tensor  # Σ p_c · centre_c
    z_mode: torch.Tensor  # the peak bin, refined below the bin width (see pz_summary)
    sigma: torch.Tensor  # standard deviation of the piecewise-constant P(z)
    lo68: torch.Tensor  # equal-tailed 68 % interval: 16th and 84th percentiles
    hi68: torch.Tensor
    lo95: torch.Tensor  # equal-tailed 95 % interval: 2.5th and 97.5th percentiles
    hi95: torch.Tensor


def _quantiles(cdf: torch.Tensor, edges: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """z at which the piecewise-linear CDF (values [B, C+1] at the edges) reaches each level ([B, K])."""
    n_bins = edges.numel() - 1
    k = (torch.searchsorted(cdf.contiguous(), levels.contiguous()) - 1).clamp(0, n_bins - 1)
    cdf_lo, cdf_hi = cdf.gather(1, k), cdf.gather(1, k + 1)
    fraction = ((levels - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-300)).clamp(0.0, 1.0)
    return edges[k] + fraction * (edges[k + 1] - edges[k])


def cdf_quantiles(p: torch.Tensor, edges: torch.Tensor, levels: tuple) -> torch.Tensor:
    """[B, K]: z at which the piecewise-linear CDF of bin probabilities ``p`` [B, C] (rows normalised, float64) over
    float64 ``edges`` [C+1] reaches each of ``levels`` (K values in [0, 1])."""
    cdf = torch.cat([p.new_zeros(p.shape[0], 1), torch.cumsum(p, dim=1)], dim=1)
    cdf = cdf / cdf[:, -1:]
    targets = torch.tensor(levels, dtype=torch.float64, device=p.device).expand(p.shape[0], len(levels))
    return _quantiles(cdf, edges, targets)


def normalised_probs(probs: torch.Tensor, bin_edges) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [B, C] as float64 rows summing to 1, bin_edges [C+1] as float64 on probs' device), validated:
    probs finite and >= 0, C matching the edges, no row summing to 0."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        raise ValueError(f"probs must be a 2-D tensor [B, C], got {getattr(probs, 'shape', type(probs))}")
    edges = _edges(bin_edges, probs.device)
    n_bins = edges.numel() - 1
    if probs.shape[1] != n_bins:
        raise ValueError(f"probs has C = {probs.shape[1]} columns but bin_edges defines {n_bins} bins")
    p = probs.detach().to(torch.float64)
    if p.numel() and (not bool(torch.isfinite(p).all()) or bool((p < 0).any())):
        raise ValueError("probs must be finite and >= 0")
    total = p.sum(dim=1, keepdim=True)
    if p.numel() and bool((total <= 0).any()):
        b = int(torch.nonzero(total.flatten() <= 0).flatten()[0])
        raise ValueError(f"probs row {b} sums to 0")
    return p / total, edges


def refined_mode(p: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """z_mode of ``pz_summary`` for probabilities ``p`` [B, C] (float64, rows normalised) over float64 ``edges``
    [C+1] on p's device: the peak bin's centre moved to the vertex of the parabola through ln(density) at it and
    its neighbours (a plain parabola if a neighbour is empty), by at most half a bin; the end bins unrefined."""
    n_bins = edges.numel() - 1
    width = edges[1:] - edges[:-1]
    centre = 0.5 * (edges[1:] + edges[:-1])
    peak = p.argmax(dim=1)
    z_mode = centre[peak]
    if n_bins < 3:
        return z_mode
    density = p / width
    inner = peak.clamp(1, n_bins - 2)
    x0, x1, x2 = centre[inner - 1], centre[inner], centre[inner + 1]
    d = density.gather(1, torch.stack([inner - 1, inner, inner + 1], dim=1))
    log_ok = (d > 0).all(dim=1)
    y = torch.where(log_ok[:, None], torch.log(d.clamp_min(1e-300)), d)
    y0, y1, y2 = y.unbind(dim=1)
    # Vertex of the parabola through (x0, y0), (x1, y1), (x2, y2).
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    curved = denominator.abs() > 0
    shift = torch.where(curved, -0.5 * numerator / torch.where(curved, denominator, 1.0), 0.0)
    half = 0.5 * width[inner]
    refined = x1 + shift.clamp(-half, half)
    interior = (peak >= 1) & (peak <= n_bins - 2)
    return torch.where(interior, refined, z_mode)


def pz_summary(probs: torch.Tensor, bin_edges) -> PzSummary:
    """Point estimates, uncertainty and credible intervals of binned P(z).

    Args:
        probs (Tensor[B, C]): bin probabilities (e.g. a softmax), finite and >= 0; each row is normalised
            here, so unnormalised histograms work too (a row summing to 0 is an error).
        bin_edges (Tensor or array [C+1]): the bins' edges, strictly increasing.

    Returns:
        PzSummary of float64 [B] tensors:
        z_mean, the mean; z_mode, the peak refined by the vertex of a parabola through ln(density) at the peak
        bin's centre and its two neighbours' (exact for a Gaussian P(z) sampled at the centres; a plain
        parabola if a neighbour is empty), moved by at most half a bin, and the bin centre at the range's
        ends; sigma, the standard deviation of the piecewise-constant density (within-bin spread included);
        lo68/hi68 and lo95/hi95, equal-tailed credible intervals from the piecewise-linear CDF.
    """
    p, edges = normalised_probs(probs, bin_edges)
    width = edges[1:] - edges[:-1]
    centre = 0.5 * (edges[1:] + edges[:-1])

    z_mean = p @ centre
    variance = p @ (centre**2 + width**2 / 12) - z_mean**2
    sigma = variance.clamp_min(0.0).sqrt()

    z_mode = refined_mode(p, edges)

    lo68, hi68, lo95, hi95 = cdf_quantiles(p, edges, (0.16, 0.84, 0.025, 0.975)).unbind(dim=1)
    return PzSummary(z_mean, z_mode, sigma, lo68, hi68, lo95, hi95)


class PzCandidates(NamedTuple):
    """The redshift candidates of binned P(z) (``pz_candidates``)."""

    z: torch.Tensor  # [B, n] float64: candidate redshifts, best first (NaN where no further window fits)
    p: torch.Tensor  # [B, n] float64: P(z) mass within ±half_width·(1+z) of each (0 where none)
    zprob: torch.Tensor  # [B]: p[:, 0], the mass around the point estimate
    deltachi2: torch.Tensor  # [B]: 2·ln(p[:, 0] / p[:, 1]), p[:, 1] floored at 1e-30 (so at most ~138)


def window_mass(cdf: torch.Tensor, edges: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """P(lo <= z < hi) [B, K] from the piecewise-linear CDF ``cdf`` [B, C+1] at ``edges`` [C+1], for windows
    ``lo``, ``hi`` [B, K], or [K] for windows every row shares (clipped to the edges). Shared windows are located
    once, not once per row: pz_candidates' window around every bin centre cost 70 ms per 1,024 spectra otherwise."""
    n_bins = edges.numel() - 1

    def cdf_at(z):
        z = z.clamp(float(edges[0]), float(edges[-1]))
        k = (torch.searchsorted(edges, z.contiguous()) - 1).clamp(0, n_bins - 1)
        fraction = ((z - edges[k]) / (edges[k + 1] - edges[k])).clamp(0.0, 1.0)
        if z.dim() == 1:
            below, above = cdf.index_select(1, k), cdf.index_select(1, k + 1)
        else:
            below, above = cdf.gather(1, k), cdf.gather(1, k + 1)
        return below + fraction * (above - below)

    return (cdf_at(hi) - cdf_at(lo)).clamp_min(0.0)


def pz_candidates(probs: torch.Tensor, bin_edges, z: torch.Tensor, n: int = 3, half_width: float = 0.01) -> PzCandidates:
    """The ``n`` best redshift candidates of P(z) ``probs`` [B, C] (rows normalised here) for point estimates
    ``z`` [B].

    The first candidate is ``z`` itself and its mass that within ±half_width·(1+z) (ZPROB: the chance that z is
    right to the catalogue's outlier tolerance). Each next candidate is the bin centre whose window of the same
    half width holds the most mass (ties: the most probable bin) among those whose windows do not overlap an earlier candidate's, so the masses
    of the candidates add up to at most 1. ``deltachi2`` compares the first two as a χ² difference would if
    P(z) were a likelihood: 2·ln(P_1/P_2); small values mean a second redshift is nearly as likely."""
    p, edges = normalised_probs(probs, bin_edges)
    z = torch.as_tensor(z, dtype=torch.float64, device=p.device)
    cdf = torch.cat([p.new_zeros(p.shape[0], 1), torch.cumsum(p, dim=1)], dim=1)
    centre = 0.5 * (edges[1:] + edges[:-1])  # [C], every row's
    reach = half_width * (1.0 + centre)
    masses = window_mass(cdf, edges, centre - reach, centre + reach)  # [B, C]: the window around each centre
    z_out = torch.full((p.shape[0], n), math.nan, dtype=torch.float64, device=p.device)
    p_out = torch.zeros_like(z_out)
    z_out[:, 0] = z
    p_out[:, 0] = window_mass(cdf, edges, (z - half_width * (1 + z))[:, None], (z + half_width * (1 + z))[:, None])[:, 0]
    free = torch.ones_like(masses, dtype=torch.bool)
    for k in range(1, n):
        previous = z_out[:, k - 1 : k]
        free &= ~((centre - previous).abs() < (reach + half_width * (1.0 + previous)))
        # Ties (a peak narrower than the window: a plateau of equal masses) go to the centre of the most probable
        # bin, so the candidate sits on its peak rather than at the plateau's end.
        best = torch.where(free, masses + 1e-9 * p, -1.0).max(dim=1)
        found = best.values >= 0
        z_out[:, k] = torch.where(found, centre[best.indices], math.nan)
        p_out[:, k] = torch.where(found, masses.gather(1, best.indices[:, None])[:, 0], 0.0)
        free &= found[:, None]
    second = p_out[:, 1] if n > 1 else torch.zeros_like(p_out[:, 0])
    deltachi2 = 2.0 * (torch.log(p_out[:, 0].clamp_min(1e-30)) - torch.log(second.clamp_min(1e-30)))
    return PzCandidates(z_out, p_out, p_out[:, 0], deltachi2)


def pz_summary_and_candidates(probs: torch.Tensor, bin_edges, mode_probs: Optional[torch.Tensor] = None, n: int = 3,
                              half_width: float = 0.01) -> tuple[PzSummary, PzCandidates]:  # fmt: skip
    """``pz_summary(probs)`` with z_mode that of ``mode_probs`` [B, C] if given (``refined_mode`` of it as given), and
    ``pz_candidates(probs, bin_edges, z_mode, n, half_width)``, in one call: on the CPU the native op
    ``zfast.ops.pz_post`` (one pass per row; the functions above are its spec and its fallback elsewhere)."""
    if isinstance(probs, torch.Tensor) and probs.dim() == 2 and pz_post.available(probs.device):
        edges = _edges(bin_edges, probs.device)  # the op checks C against the edges
        mode = None if mode_probs is None else mode_probs.detach().to(torch.float64)
        out = pz_post.pz_summarise(probs.detach().to(torch.float64), edges, mode, n, half_width)
        summary = PzSummary(*out.summary.T.contiguous().unbind(dim=0))
        return summary, PzCandidates(out.z_cand, out.p_cand, out.p_cand[:, 0], out.deltachi2)
    summary = pz_summary(probs, bin_edges)
    if mode_probs is not None:
        summary = summary._replace(z_mode=refined_mode(mode_probs.to(torch.float64), _edges(bin_edges, probs.device)))
    return summary, pz_candidates(probs, bin_edges, summary.z_mode, n=n, half_width=half_width)
