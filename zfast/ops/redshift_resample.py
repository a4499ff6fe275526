"""redshift_resample: rest-frame SEDs at redshift z, integrated onto observed pixels.

For spectrum b (SED s = sed_index[b], redshift z = z[b]) and observed bin j with edges a_j < a_{j+1}:

    F_bj = (C_s(a_{j+1}/(1+z)) - C_s(a_j/(1+z))) / (a_{j+1} - a_j),

the mean over the bin of f_obs(λ) = f_rest(λ/(1+z))/(1+z) (with u = λ/(1+z), dλ = (1+z) du cancels the
1/(1+z)). C_s is the SED's cumulative integral on a log-uniform rest grid with edges
e_k = exp(ln_edge0 + k·dln), precomputed once in float64 (``zfast.SEDLibrary``). A rest wavelength u is
located arithmetically, t = (ln u - ln_edge0)/dln, and C_s interpolated inside pixel k = floor(t) for a
piecewise-constant f: C_s[k] + (C_s[k+1] - C_s[k])·expm1((t-k)·dln)/expm1(dln). O(M) per spectrum,
independent of the SED's resolution; the maths is written once more for the kernels in
``csrc/redshift_resample/redshift_resample.h``.

``redshift_resample_reference`` below is the readable spec, the fallback on devices without a native
kernel, and the float64 oracle of the tests.
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple, Optional

import torch

from .. import _native
from .checks import check_increasing
from .memory import check_fits

# An edge is covered when -tol <= t <= N + tol (t in rest pixels); must equal kCoverageTolerance in the header.
COVERAGE_TOLERANCE = 1e-6


def redshift_resample_reference(
    cumulative: torch.Tensor,
    sed_index: torch.Tensor,
    z: torch.Tensor,
    wave_edges: torch.Tensor,
    ln_edge0: float,
    dln: float,
    fill: float = math.nan,
) -> torch.Tensor:
    """Pure-PyTorch redshift_resample, float64 throughout, output float32 [B, M].

    Args:
        cumulative (Tensor[S, N+1], float64): C_s at the rest edges exp(ln_edge0 + k·dln), C_s[0] = 0.
        sed_index (Tensor[B], integer): which SED each spectrum uses. Out-of-range rows are filled.
        z (Tensor[B], float): redshifts.
        wave_edges (Tensor[M+1], float): observed bin edges in Å, increasing.
        ln_edge0 (float): ln of the first rest edge. dln (float): rest pixel width in ln λ.
        fill (float): value of bins not covered by the rest grid (and of rows with a bad sed_index).
    """
    n_seds, n_rest = cumulative.shape[0], cumulative.shape[1] - 1
    edges = wave_edges.to(torch.float64)
    t = (torch.log(edges)[None, :] - torch.log1p(z.to(torch.float64))[:, None] - ln_edge0) / dln  # [B, M+1]
    edge_covered = (t >= -COVERAGE_TOLERANCE) & (t <= n_rest + COVERAGE_TOLERANCE)
    t = t.clamp(0.0, float(n_rest))
    k = torch.floor(t).clamp(max=n_rest - 1)
    in_pixel = torch.expm1((t - k) * dln) / math.expm1(dln)
    index = sed_index.to(torch.int64)
    row_ok = (index >= 0) & (index < n_seds)
    # One flat gather index (two-tensor advanced indexing is ~8x slower on CPU).
    flat = index.clamp(0, n_seds - 1)[:, None] * (n_rest + 1) + k.to(torch.int64)
    flat_cumulative = cumulative.reshape(-1)
    lower = flat_cumulative[flat]
    upper = flat_cumulative[flat + 1]
    at_edges = lower + (upper - lower) * in_pixel
    mean = (at_edges[:, 1:] - at_edges[:, :-1]) / (edges[1:] - edges[:-1])
    covered = edge_covered[:, 1:] & edge_covered[:, :-1] & row_ok[:, None]
    return torch.where(covered, mean, fill).to(torch.float32)


def coverage_z_range(n_rest: int, wave_edges: torch.Tensor, ln_edge0: float, dln: float) -> tuple[float, float]:
    """(z_min, z_max) for which every bin of ``wave_edges`` lies on the rest grid of ``n_rest`` pixels."""
    ln_first, ln_last = torch.log(wave_edges[[0, -1]].to(torch.float64)).tolist()
    return _coverage(n_rest, ln_first, ln_last, ln_edge0, dln)


def _coverage(n_rest: int, ln_first: float, ln_last: float, ln_edge0: float, dln: float) -> tuple[float, float]:
    # The kernels' criterion (t_0 >= -tol, t_M <= N + tol) with half their tolerance, so a call that passes
    # validation never fills a bin.
    slack = 0.5 * COVERAGE_TOLERANCE * dln
    return math.expm1(ln_last - (ln_edge0 + n_rest * dln) - slack), math.expm1(ln_first - ln_edge0 + slack)


class _Grid(NamedTuple):
    """What the kernels need of an observed grid, computed once per grid (see ``_grid``)."""

    wave_edges: torch.Tensor  # held so that its memory cannot be reused by another tensor while cached
    edge_position: torch.Tensor  # [M+1] float64, ln(a_j)/dln
    inv_bin_width: torch.Tensor  # [M] float64, 1/(a_{j+1} - a_j)
    ln_first: float  # ln a_0, on the host
    ln_last: float  # ln a_M
    validated: bool  # finite, positive, strictly increasing (checked)


_GRID_CACHE: "collections.OrderedDict[tuple, _Grid]" = collections.OrderedDict()
_GRID_CACHE_SIZE = 8


def _grid(wave_edges: torch.Tensor, dln: float, check: bool) -> _Grid:
    """The kernels' tables for ``wave_edges``, cached per grid and validated once when ``check``.

    A training loop calls the op with the same grid every step: the cache saves a few small launches and the
    grid's validation (a host sync on a GPU) on every call after the first. The key is the tensor's identity
    and version counter, so an in-place change makes a new entry.
    """
    key = (id(wave_edges), wave_edges._version, dln)
    grid = _GRID_CACHE.get(key)
    if grid is None or grid.wave_edges is not wave_edges:
        edges = wave_edges.to(torch.float64)
        if check:
            check_increasing(edges, "wave_edges", positive=True)
        ln_edges = torch.log(edges)
        ln_first, ln_last = ln_edges[[0, -1]].tolist()
        grid = _Grid(
            wave_edges, (ln_edges / dln).contiguous(), (1.0 / (edges[1:] - edges[:-1])).contiguous(),
            ln_first, ln_last, check,
        )  # fmt: skip
        _GRID_CACHE[key] = grid
        while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
            _GRID_CACHE.popitem(last=False)
    elif check and not grid.validated:
        check_increasing(wave_edges.to(torch.float64), "wave_edges", positive=True)
        grid = _GRID_CACHE[key] = grid._replace(validated=True)
    _GRID_CACHE.move_to_end(key)
    return grid


def _value_stats(z: torch.Tensor, sed_index: torch.Tensor) -> tuple[int, float, float, int, int]:
    """(number of non-finite z, min and max of the finite z, min and max of sed_index): one native pass on
    the CPU, one host sync elsewhere. z is float64 and sed_index int64, both contiguous."""
    if z.device.type == "cpu" and _native.native_backend(z.device) == "cpu":
        return tuple(_native._C.redshift_resample_input_stats_cpu(z.data_ptr(), sed_index.data_ptr(), z.numel()))
    finite = torch.isfinite(z)
    n_nonfinite, z_lo, z_hi, index_lo, index_hi = torch.stack(
        [
            (~finite).sum().double(),
            torch.where(finite, z, math.inf).min(),
            torch.where(finite, z, -math.inf).max(),
            sed_index.min().double(),
            sed_index.max().double(),
        ]
    ).tolist()
    return int(n_nonfinite), z_lo, z_hi, int(index_lo), int(index_hi)


def _validate_values(n_seds, n_rest, sed_index, z, grid: _Grid, ln_edge0, dln, need_coverage: bool) -> None:
    """Data-dependent checks of z (float64) and sed_index (int64). Raises ValueError naming the culprit."""
    if z.numel() == 0:
        return
    n_nonfinite, z_lo, z_hi, index_lo, index_hi = _value_stats(z, sed_index)
    if n_nonfinite:
        b = int(torch.nonzero(~torch.isfinite(z)).flatten()[0])
        raise ValueError(f"z has {n_nonfinite} non-finite values; z[{b}] = {z[b].item()}")
    if z_lo < 0:
        b = int(torch.argmin(z))
        raise ValueError(f"z must be >= 0 (rest-frame SEDs are only redshifted); got z[{b}] = {z_lo:.6g}")
    if index_lo < 0 or index_hi >= n_seds:
        b = int(torch.nonzero((sed_index < 0) | (sed_index >= n_seds)).flatten()[0])
        raise ValueError(
            f"sed_index must lie in [0, {n_seds}) for a library of {n_seds} SEDs; got sed_index[{b}] = {int(sed_index[b])}"
        )
    if not need_coverage:
        return
    z_min, z_max = _coverage(n_rest, grid.ln_first, grid.ln_last, ln_edge0, dln)
    if z_lo >= z_min and z_hi <= z_max:
        return
    lo_rest, hi_rest = math.exp(ln_edge0), math.exp(ln_edge0 + n_rest * dln)
    first, last = math.exp(grid.ln_first), math.exp(grid.ln_last)
    if z_min > z_max:
        raise ValueError(
            f"no redshift can be served on this grid: the observed bins span {first:.1f}-{last:.1f} Å "
            f"(a factor {last / first:.4g}) but the library's rest grid covers only {lo_rest:.1f}-{hi_rest:.1f} Å "
            f"(a factor {hi_rest / lo_rest:.4g}); use a wider library or pass fill=<value>"
        )
    outside = (z < z_min) | (z > z_max)
    b = int(torch.nonzero(outside).flatten()[0])
    raise ValueError(
        f"z[{b}] = {z[b].item():.6g} is outside the redshifts this library can serve on this grid: "
        f"the rest grid covers {lo_rest:.1f}-{hi_rest:.1f} Å and the observed bins {first:.1f}-{last:.1f} Å, "
        f"so {max(z_min, 0.0):.6g} <= z <= {z_max:.6g} ({int(outside.sum())} of {z.numel()} spectra are "
        f"outside); pass fill=<value> to fill uncovered bins instead"
    )


def _check_shapes(cumulative, sed_index, z, wave_edges) -> None:
    """Static checks (shapes, dtypes, devices): also run on fake tensors under torch.compile."""
    if cumulative.dim() != 2 or cumulative.shape[1] < 2 or cumulative.dtype != torch.float64:
        raise ValueError(
            f"cumulative must be float64 [S, N+1] with N >= 1, got {cumulative.dtype} {tuple(cumulative.shape)}"
        )
    if sed_index.dim() != 1 or z.dim() != 1 or sed_index.shape[0] != z.shape[0]:
        raise ValueError(
            f"sed_index and z must be 1-D of the same length B, got sed_index {tuple(sed_index.shape)} and z {tuple(z.shape)}"
        )
    if sed_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"sed_index must be int32 or int64, got {sed_index.dtype}")
    if z.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"z must be float32 or float64, got {z.dtype}")
    if wave_edges.dim() != 1 or wave_edges.shape[0] < 2 or not wave_edges.is_floating_point():
        raise ValueError(
            f"wave_edges must be a 1-D float tensor of M+1 >= 2 bin edges, got {wave_edges.dtype} {tuple(wave_edges.shape)}"
        )
    for name, tensor in (("sed_index", sed_index), ("z", z), ("wave_edges", wave_edges)):
        if tensor.device != cumulative.device:
            raise ValueError(
                f"{name} is on {tensor.device} but the SED library is on {cumulative.device}; "
                f"move one of them (SEDLibrary.to(device) or tensor.to(device))"
            )


@torch.library.custom_op("zfast::redshift_resample", mutates_args=())
def _redshift_resample_op(
    cumulative: torch.Tensor,
    sed_index: torch.Tensor,
    z: torch.Tensor,
    wave_edges: torch.Tensor,
    ln_edge0: float,
    dln: float,
    fill: Optional[float],
    check: bool,
) -> torch.Tensor:
    _check_shapes(cumulative, sed_index, z, wave_edges)
    n_seds, n_rest = cumulative.shape[0], cumulative.shape[1] - 1
    batch, n_bins = z.shape[0], wave_edges.shape[0] - 1
    # Before the copies below (a broadcast z of 1e9 rows would cost 16 GB of them): the output must fit.
    check_fits(4 * batch * n_bins, cumulative.device, f"redshift_resample's output [{batch}, {n_bins}] float32",
               "resample fewer spectra per call")  # fmt: skip
    sed_index = sed_index.to(torch.int64).contiguous()
    z = z.to(torch.float64).contiguous()
    grid = _grid(wave_edges, dln, check)
    if check:
        _validate_values(n_seds, n_rest, sed_index, z, grid, ln_edge0, dln, need_coverage=fill is None)
    fill_value = math.nan if fill is None else float(fill)
    if _native.native_backend(cumulative.device) is None:
        return redshift_resample_reference(cumulative, sed_index, z, wave_edges, ln_edge0, dln, fill_value)

    cumulative = cumulative.contiguous()
    edge_position, inv_bin_width = grid.edge_position, grid.inv_bin_width
    out = torch.empty((batch, n_bins), dtype=torch.float32, device=cumulative.device)
    if out.numel() == 0:
        return out
    args = (
        cumulative.data_ptr(), n_seds, n_rest, sed_index.data_ptr(), z.data_ptr(), batch,
        edge_position.data_ptr(), inv_bin_width.data_ptr(), n_bins,
        float(ln_edge0), float(dln), 1.0 / math.expm1(dln), fill_value, out.data_ptr(),
    )  # fmt: skip
    _native.launch("redshift_resample", cumulative.device, *args)
    return out


@_redshift_resample_op.register_fake
def _(cumulative, sed_index, z, wave_edges, ln_edge0, dln, fill, check):
    _check_shapes(cumulative, sed_index, z, wave_edges)
    return cumulative.new_empty((z.shape[0], wave_edges.shape[0] - 1), dtype=torch.float32)


def redshift_resample(
    cumulative: torch.Tensor,
    sed_index: torch.Tensor,
    z: torch.Tensor,
    wave_edges: torch.Tensor,
    ln_edge0: float,
    dln: float,
    fill: Optional[float] = None,
    check: bool = True,
) -> torch.Tensor:
    """The custom op ``zfast::redshift_resample`` (native CPU/CUDA kernel, or the reference elsewhere).

    Most users call ``SEDLibrary.redshift_resample``, which supplies ``cumulative``, ``ln_edge0`` and ``dln``.

    Args:
        cumulative (Tensor[S, N+1], float64): cumulative integrals of the SEDs on the log-uniform rest edges.
        sed_index (Tensor[B], int32/int64), z (Tensor[B], float32/float64), wave_edges (Tensor[M+1], float):
            as in ``SEDLibrary.redshift_resample``; all on ``cumulative``'s device.
        ln_edge0, dln (float): the rest grid, edges exp(ln_edge0 + k·dln).
        fill (float or None): None (default) validates that every bin is covered and raises otherwise;
            a number fills uncovered bins instead.
        check (bool): validate z (finite, >= 0, coverage) and sed_index (range); costs one host sync on a
            GPU. With False, bad rows/bins come out as ``fill`` (NaN when fill is None), never out of bounds.

    Returns:
        Tensor[B, M], float32: mean f_λ of each redshifted SED over each observed bin.
    """
    return _redshift_resample_op(cumulative, sed_index, z, wave_edges, float(ln_edge0), float(dln), fill, bool(check))


def _check_kernel(lsf_kernel: torch.Tensor) -> None:
    if lsf_kernel.dim() != 1 or lsf_kernel.numel() % 2 != 1 or lsf_kernel.dtype != torch.float32:
        raise ValueError(f"lsf_kernel must be float32 [2h + 1] (odd length), got {lsf_kernel.dtype} {tuple(lsf_kernel.shape)}")
    if lsf_kernel.device.type != "cpu":
        raise ValueError(f"lsf_kernel must be on the CPU, got {lsf_kernel.device}")


@torch.library.custom_op("zfast::render_templates", mutates_args=(), device_types="cpu")
def _render_templates_op(cumulative: torch.Tensor, sed_index: torch.Tensor, z: torch.Tensor, wave_edges: torch.Tensor,
                         ln_edge0: float, dln: float, lsf_kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check_shapes(cumulative, sed_index, z, wave_edges)
    _check_kernel(lsf_kernel)
    n_seds, n_rest = cumulative.shape[0], cumulative.shape[1] - 1
    batch, n_bins = z.shape[0], wave_edges.shape[0] - 1
    check_fits(8 * batch * n_bins, cumulative.device, f"render_templates' outputs 2 x [{batch}, {n_bins}] float32",
               "render fewer templates per call")  # fmt: skip
    sed_index, z = sed_index.to(torch.int64).contiguous(), z.to(torch.float64).contiguous()
    grid = _grid(wave_edges, dln, True)
    _validate_values(n_seds, n_rest, sed_index, z, grid, ln_edge0, dln, need_coverage=True)
    cumulative, lsf_kernel = cumulative.contiguous(), lsf_kernel.contiguous()
    out = torch.empty((batch, n_bins), dtype=torch.float32)
    square = torch.empty((batch, n_bins), dtype=torch.float32)
    if out.numel():
        _native._C.render_templates_cpu(
            cumulative.data_ptr(), n_seds, n_rest, sed_index.data_ptr(), z.data_ptr(), batch,
            grid.edge_position.data_ptr(), grid.inv_bin_width.data_ptr(), n_bins, float(ln_edge0), float(dln),
            1.0 / math.expm1(dln), math.nan, out.data_ptr(), lsf_kernel.data_ptr(), (lsf_kernel.numel() - 1) // 2,
            square.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
    return out, square


@_render_templates_op.register_fake
def _(cumulative, sed_index, z, wave_edges, ln_edge0, dln, lsf_kernel):
    _check_shapes(cumulative, sed_index, z, wave_edges)
    _check_kernel(lsf_kernel)
    shape = (z.shape[0], wave_edges.shape[0] - 1)
    return cumulative.new_empty(shape, dtype=torch.float32), cumulative.new_empty(shape, dtype=torch.float32)


def render_templates_available(device: torch.device) -> bool:
    """Whether ``render_templates`` runs on ``device`` (the CPU, with the extension built)."""
    return _native.native_backend(torch.device(device)) == "cpu" and hasattr(_native._C, "render_templates_cpu")


def render_templates(cumulative: torch.Tensor, sed_index: torch.Tensor, z: torch.Tensor, wave_edges: torch.Tensor,
                     ln_edge0: float, dln: float, lsf_kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(templates [B, M], their squares [B, M]) float32: ``redshift_resample`` (every bin covered, validated) then each
    row convolved with ``lsf_kernel`` [2h + 1] (float32, edge pixels replicated: ``Instrument.convolve_lsf``'s maths)
    while it is in L1 — the template fit's rendering in one pass over memory instead of three (docs/hybrid.md).
    CPU only (``render_templates_available``); elsewhere compose ``redshift_resample`` and ``Instrument.convolve_lsf``."""
    return _render_templates_op(cumulative, sed_index, z, wave_edges, float(ln_edge0), float(dln), lsf_kernel)
