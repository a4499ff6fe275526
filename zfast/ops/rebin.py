"""Flux-conserving resampling of spectra onto a new wavelength grid (the spectres convention).

Maths: the input flux f_k is piecewise constant over input pixel k, whose edges are the midpoints between
neighbouring centres, the outer edges mirrored (``pixel_edges``). Its cumulative integral
C(λ) = ∫ f dλ is therefore piecewise linear, and the output in bin j is the mean of f over it,

    F_j = (C(b_{j+1}) - C(b_j)) / (b_{j+1} - b_j),

with C evaluated by locating b on the input edges (one ``searchsorted`` per grid, shared by every spectrum)
and interpolating linearly. This equals spectres' overlap-weighted sum up to rounding. Everything is
computed in float64 (the difference of two nearby cumulative values cancels ~N·eps of float32) and
returned in the input dtype. Output bins not fully inside the input's edges get ``fill``.

Gradient: F is linear in f, F = W f with W_jk = overlap(j, k)/width_j, so ∂L/∂f_k = Σ_j g_j/width_j ·
overlap(j, k): the integral over input pixel k of the piecewise-constant function g_j/width_j on the output
bins — the same cumulative trick with the grids' roles swapped (uncovered output bins pass no gradient).
"""

from __future__ import annotations

import math

import torch

from .checks import FLOAT_DTYPES, as_grid, check_edges, check_finite, check_increasing


def pixel_edges(centres: torch.Tensor) -> torch.Tensor:
    """Pixel edges [N+1] of pixel centres [N]: midpoints, the outer two mirrored (spectres' ``make_bins``)."""
    inner = 0.5 * (centres[1:] + centres[:-1])
    first = centres[:1] - 0.5 * (centres[1:2] - centres[:1])
    last = centres[-1:] + 0.5 * (centres[-1:] - centres[-2:-1])
    return torch.cat([first, inner, last])


def scaled_edges(wave_in: torch.Tensor, wave_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel edges of both grids, times one power of two that brings their largest |centre| near 1. Exact, and
    the resampling (a ratio of lengths) does not change; but centres near the float64 limit no longer overflow their
    mirrored edges, nor do subnormal centres lose their digits (or overflow 1/width in the gradient)."""
    peak = torch.maximum(wave_in.abs().max(), wave_out.abs().max())
    peak = torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))
    exponent = -torch.frexp(peak).exponent.to(torch.float64)
    half = torch.exp2(torch.floor(exponent / 2))  # in two steps: 2**1074 itself overflows
    rest = torch.exp2(exponent - torch.floor(exponent / 2))
    return pixel_edges(wave_in * half * rest), pixel_edges(wave_out * half * rest)


def cumulative_at(values: torch.Tensor, edges: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """∫_{edges[0]}^{q} v dλ for piecewise-constant ``values`` [..., N] on ``edges`` [N+1], at ``query`` [Q].

    Queries below the first edge give 0 and above the last the total (v is 0 outside). float64 in and out.
    """
    return cumulative_of_integrals(values * (edges[1:] - edges[:-1]), edges, query)


def cumulative_of_integrals(integrals: torch.Tensor, edges: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``cumulative_at`` from the integrals [..., N] over the pixels rather than the values (no division by the
    widths where those are known: the gradient's, whose widths may be subnormal)."""
    widths = edges[1:] - edges[:-1]
    cumulative = torch.cat([integrals.new_zeros(integrals.shape[:-1] + (1,)), torch.cumsum(integrals, dim=-1)], dim=-1)
    n = widths.numel()
    k = (torch.searchsorted(edges, query, right=True) - 1).clamp(0, n - 1)
    fraction = ((query - edges[k]) / widths[k]).clamp(0.0, 1.0)
    lower = cumulative.index_select(-1, k)
    upper = cumulative.index_select(-1, k + 1)
    return lower + (upper - lower) * fraction


def covered_bins(edges_in: torch.Tensor, edges_out: torch.Tensor) -> torch.Tensor:
    """Boolean [M]: output bins lying entirely inside the input's outer edges."""
    return (edges_out[:-1] >= edges_in[0]) & (edges_out[1:] <= edges_in[-1])


def rebin_edges_reference(flux: torch.Tensor, edges_in: torch.Tensor, edges_out: torch.Tensor, fill: float) -> torch.Tensor:
    """The pure-PyTorch resampling on explicit pixel edges (float64 maths, output in ``flux.dtype``). Each spectrum
    is integrated divided by a power of two near its largest |flux| (exact: the result is unchanged) so that the
    cumulative sum of fluxes near the float64 limit does not overflow."""
    flux64 = flux.to(torch.float64)
    peak = flux64.abs().amax(dim=-1, keepdim=True) if flux64.numel() else torch.ones(flux64.shape[:-1] + (1,), dtype=torch.float64)
    peak = torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))
    scale = torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent - 1)  # <= the peak: finite, |flux / scale| < 2
    integral = cumulative_at(flux64 / scale, edges_in, edges_out)
    mean = (integral[..., 1:] - integral[..., :-1]) / (edges_out[1:] - edges_out[:-1]) * scale
    mean = torch.where(covered_bins(edges_in, edges_out), mean, torch.full_like(mean, fill))
    return mean.to(flux.dtype)


@torch.library.custom_op("zfast::rebin", mutates_args=())
def _rebin_op(flux: torch.Tensor, wave_in: torch.Tensor, wave_out: torch.Tensor, fill: float) -> torch.Tensor:
    # Data-dependent checks live inside the op, where torch.compile does not trace them.
    check_increasing(wave_in, "wave_in")
    check_increasing(wave_out, "wave_out")
    check_finite(flux, "flux")
    edges_in, edges_out = scaled_edges(wave_in, wave_out)
    check_edges(edges_in, "wave_in")
    check_edges(edges_out, "wave_out")
    return rebin_edges_reference(flux, edges_in, edges_out, fill)


@_rebin_op.register_fake
def _(flux, wave_in, wave_out, fill):
    return flux.new_empty(flux.shape[:-1] + (wave_out.shape[0],))


def _rebin_setup_context(ctx, inputs, output):
    flux, wave_in, wave_out, fill = inputs
    ctx.save_for_backward(wave_in, wave_out)
    ctx.flux_dtype = flux.dtype


def _rebin_backward(ctx, grad_output):
    wave_in, wave_out = ctx.saved_tensors
    edges_in, edges_out = scaled_edges(wave_in, wave_out)
    grad = torch.where(covered_bins(edges_in, edges_out), grad_output.to(torch.float64), 0.0)
    # g_j/width_j is piecewise constant on the output bins, with integral g_j over bin j; integrate it over each input pixel.
    integral = cumulative_of_integrals(grad, edges_out, edges_in)
    grad_flux = (integral[..., 1:] - integral[..., :-1]).to(ctx.flux_dtype)
    return grad_flux, None, None, None


_rebin_op.register_autograd(_rebin_backward, setup_context=_rebin_setup_context)


def rebin(flux: torch.Tensor, wave_in, wave_out, fill: float = math.nan) -> torch.Tensor:
    """Flux-conserving resampling of spectra from pixel centres ``wave_in`` to pixel centres ``wave_out``.

    Pixel edges are the midpoints between centres with the outer edges mirrored (spectres' convention, so
    ``spectres.spectres(wave_out, wave_in, flux, fill=fill)`` is the oracle). The output in each new pixel is
    the mean flux density over it, so ∫ f dλ is conserved and narrow lines keep their flux.

    Args:
        flux (Tensor[..., N]): f_λ on ``wave_in``; float32 or float64; any leading (batch) dims; any device.
            Must be finite (mask bad pixels before resampling).
        wave_in (Tensor or array [N]): input pixel centres, strictly increasing, N >= 2.
        wave_out (Tensor or array [M]): output pixel centres, strictly increasing, M >= 2; any units as long
            as both grids use the same ones (Å throughout zfast).
        fill (float): value of output pixels not fully covered by the input's edges. Default NaN.

    Returns:
        Tensor[..., M] in ``flux.dtype`` on ``flux.device``; differentiable with respect to ``flux``.
    """
    if not isinstance(flux, torch.Tensor):
        raise TypeError(f"flux must be a torch.Tensor, got {type(flux).__name__}")
    if flux.dtype not in FLOAT_DTYPES:
        raise TypeError(f"flux must be float32 or float64, got {flux.dtype}")
    grid_in = as_grid(wave_in, "wave_in", flux.device)
    grid_out = as_grid(wave_out, "wave_out", flux.device)
    if flux.dim() == 0 or flux.shape[-1] != grid_in.shape[0]:
        raise ValueError(
            f"flux's last dimension must match wave_in: flux has shape {tuple(flux.shape)}, wave_in has "
            f"{grid_in.shape[0]} values"
        )
    for name, grid in (("wave_in", grid_in), ("wave_out", grid_out)):
        if grid.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 pixel centres to define pixel edges, got {grid.shape[0]}")
    return _rebin_op(flux, grid_in, grid_out, float(fill))
