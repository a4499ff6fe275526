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
"""

from __future__ import annotations

import torch

from .data.instrument import Instrument
from .data.sed_library import SEDLibrary


def _chi2(library: SEDLibrary, instrument: Instrument, sed: torch.Tensor, flux: torch.Tensor, weight: torch.Tensor,
          z: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """χ²(z) minus Σ w f², [B, K], for spectra [B, M] against their own templates at z [B, K]."""
    b, k = z.shape
    templates = library.redshift_resample(sed.repeat_interleave(k), z.reshape(-1), instrument.wave_edges.to(flux.device))
    templates = instrument.convolve_lsf(templates).reshape(b, k, -1).double()
    wf = (weight * flux)[:, None, :]
    cross = (templates * wf).sum(dim=2)
    power = (templates.square() * weight[:, None, :]).sum(dim=2)
    return -cross.square() / power.clamp_min(1e-300)


@torch.no_grad()
def template_fit_redshift(library: SEDLibrary, instrument: Instrument, sed_index, flux: torch.Tensor, ivar: torch.Tensor,
                          z_range: tuple = (1.0, 1.8), step: float = 1e-3, chunk: int = 16) -> torch.Tensor:  # fmt: skip
    """Best-fit z [B] (float64) of spectra ``flux`` [B, M] (with ``ivar``) on ``instrument``'s pixels, each fitted
    with library SED ``sed_index[b]`` (see the module docstring). Any flux normalisation works."""
    flux, ivar = flux.double(), ivar.double()
    if flux.dim() != 2 or ivar.shape != flux.shape or flux.shape[1] != instrument.n_pixels:
        raise ValueError(f"flux and ivar must be [B, {instrument.n_pixels}], got {tuple(flux.shape)}, {tuple(ivar.shape)}")
    sed_index = torch.as_tensor(sed_index, dtype=torch.int64, device=flux.device)
    z_lo, z_hi = z_range
    n_coarse = int(round((z_hi - z_lo) / step))
    coarse = z_lo + step * torch.arange(n_coarse, dtype=torch.float64, device=flux.device)
    offsets = torch.arange(-20, 21, dtype=torch.float64, device=flux.device) / 20
    weight = torch.where(torch.isinf(ivar), 1.0, ivar)
    weight = torch.where(torch.isfinite(flux) & (weight > 0), weight, 0.0)
    flux = torch.where(weight > 0, flux, 0.0)
    best = torch.empty(flux.shape[0], dtype=torch.float64, device=flux.device)
    for start in range(0, flux.shape[0], chunk):
        rows = slice(start, start + chunk)
        sed, f, w = sed_index[rows], flux[rows], weight[rows]
        grid = coarse.expand(sed.numel(), -1)
        z0 = grid.gather(1, _chi2(library, instrument, sed, f, w, grid).argmin(dim=1, keepdim=True))
        for level in (1, 2):
            fine = (z0 + step * offsets / 20 ** (level - 1)).clamp(z_lo, z_hi)
            z0 = fine.gather(1, _chi2(library, instrument, sed, f, w, fine).argmin(dim=1, keepdim=True))
        best[rows] = z0[:, 0]
    return best
