"""A library of rest-frame galaxy SEDs, stored for O(M) redshifting onto any observed grid."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops._checks import FLOAT_DTYPES, as_grid, check_finite, check_increasing
from ..ops.rebin import pixel_edges, rebin_edges_reference
from ..ops.redshift_resample import coverage_z_range, redshift_resample

# A grid is taken as log-uniform when every ln(λ_k) is within this many pixels of the straight line
# through the first and last (float32 wavelengths near 1 µm on a 1/2000 grid deviate by ~1e-4).
LOG_UNIFORM_TOLERANCE_PIXELS = 1e-3
# The kernels' expm1 polynomial is accurate to ~dln^5/720 relative: 4e-10 at this cap.
MAX_DLN = 0.05


class SEDLibrary:
    """S rest-frame SEDs on one log-uniform rest grid, kept as float64 cumulative integrals.

    Args:
        wavelength (Tensor or array [N]): rest-frame pixel centres in Å (vacuum), strictly increasing, > 0.
            On a log-uniform grid (ln λ_k = ln λ_0 + k·Δ) the pixel edges are the geometric midpoints (outer
            ones mirrored) and the data are used as given; any other grid is resampled, flux-conserving
            (``rebin`` convention: arithmetic midpoints), onto a log-uniform grid over the same span.
        flux (Tensor or array [S, N]): f_λ of each SED (any units), finite, no all-zero rows.
        dln (float, optional): pixel width in ln λ for the resampled grid when the input is not log-uniform.
            Default: the input's smallest step in ln λ (keeps its finest resolution).

    Attributes:
        cumulative (Tensor[S, N+1], float64): C_s[k] = ∫_{e_0}^{e_k} f_s dλ at the rest edges
            e_k = exp(ln_edge0 + k·dln); computed once here.
        ln_edge0 (float), dln (float): the rest grid.

    ``redshift_resample`` puts SEDs at redshifts onto observed bins; ``to(device)`` moves the library.
    """

    def __init__(self, wavelength, flux, *, dln: Optional[float] = None):
        if isinstance(flux, torch.Tensor):
            flux_t = flux
        else:
            flux_t = torch.as_tensor(flux)
        if flux_t.dtype not in FLOAT_DTYPES + (torch.float16, torch.bfloat16):
            raise TypeError(f"flux must be a floating-point array, got {flux_t.dtype}")
        wave = as_grid(wavelength, "wavelength", flux_t.device)
        if flux_t.dim() != 2 or flux_t.shape[1] != wave.shape[0]:
            raise ValueError(
                f"flux must be [S, N] with N = len(wavelength) = {wave.shape[0]}, got shape {tuple(flux_t.shape)}"
            )
        if flux_t.shape[0] == 0:
            raise ValueError("flux holds no SEDs (S = 0)")
        check_increasing(wave, "wavelength", positive=True)
        flux64 = flux_t.to(torch.float64)
        check_finite(flux64, "flux")
        zero_rows = torch.nonzero((flux64 == 0).all(dim=1)).flatten()
        if zero_rows.numel():
            raise ValueError(f"flux has {zero_rows.numel()} all-zero SEDs, rows {zero_rows[:10].tolist()}")

        ln_wave = torch.log(wave)
        n = wave.shape[0]
        fitted_dln = (ln_wave[-1] - ln_wave[0]).item() / (n - 1)
        line = ln_wave[0] + torch.arange(n, dtype=torch.float64, device=wave.device) * fitted_dln
        log_uniform = (ln_wave - line).abs().max().item() <= LOG_UNIFORM_TOLERANCE_PIXELS * fitted_dln
        if log_uniform and dln is None:
            self.dln = fitted_dln
            self.ln_edge0 = ln_wave[0].item() - 0.5 * fitted_dln
            rest_flux = flux64
        else:
            edges_in = pixel_edges(wave)
            ln_lo, ln_hi = torch.log(edges_in[[0, -1]]).tolist()
            step = float(dln) if dln is not None else (ln_wave[1:] - ln_wave[:-1]).min().item()
            if not step > 0:
                raise ValueError(f"dln must be > 0, got {step}")
            n_new = int(math.floor((ln_hi - ln_lo) / step * (1 - 1e-12)))
            if n_new < 2:
                raise ValueError(f"dln = {step:.3g} leaves fewer than 2 pixels over the input's span")
            self.dln, self.ln_edge0 = step, ln_lo
            edges_new = self._edges_of(ln_lo, step, n_new, wave.device).clamp(edges_in[0], edges_in[-1])
            rest_flux = rebin_edges_reference(flux64, edges_in, edges_new, math.nan)
        if self.dln > MAX_DLN:
            raise ValueError(
                f"the rest grid is too coarse (dln = {self.dln:.3g} > {MAX_DLN}, i.e. R < {1 / (2 * MAX_DLN):.0f}); "
                f"pass a finer dln or a finer library"
            )
        edges = self._edges_of(self.ln_edge0, self.dln, rest_flux.shape[1], rest_flux.device)
        self.cumulative = torch.cat(
            [rest_flux.new_zeros((rest_flux.shape[0], 1)), torch.cumsum(rest_flux * (edges[1:] - edges[:-1]), dim=1)],
            dim=1,
        )

    @staticmethod
    def _edges_of(ln_edge0: float, dln: float, n_pixels: int, device) -> torch.Tensor:
        # From an integer index in float64: a float-step arange or a LongTensor * float would lose precision.
        k = torch.arange(n_pixels + 1, dtype=torch.float64, device=device)
        return torch.exp(ln_edge0 + k * dln)

    @classmethod
    def _from_cumulative(cls, cumulative: torch.Tensor, ln_edge0: float, dln: float) -> "SEDLibrary":
        library = cls.__new__(cls)
        library.cumulative, library.ln_edge0, library.dln = cumulative, ln_edge0, dln
        return library

    # --- what the library holds -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.cumulative.shape[0]

    @property
    def n_seds(self) -> int:
        return self.cumulative.shape[0]

    @property
    def n_pixels(self) -> int:
        return self.cumulative.shape[1] - 1

    @property
    def device(self) -> torch.device:
        return self.cumulative.device

    @property
    def edges(self) -> torch.Tensor:
        """Tensor[N+1], float64: rest-frame pixel edges in Å, exp(ln_edge0 + k·dln)."""
        return self._edges_of(self.ln_edge0, self.dln, self.n_pixels, self.device)

    @property
    def wavelength(self) -> torch.Tensor:
        """Tensor[N], float64: rest-frame pixel centres in Å (geometric midpoints of the edges)."""
        k = torch.arange(self.n_pixels, dtype=torch.float64, device=self.device)
        return torch.exp(self.ln_edge0 + (k + 0.5) * self.dln)

    @property
    def flux(self) -> torch.Tensor:
        """Tensor[S, N], float64: f_λ on the log-uniform rest grid (derived from ``cumulative``)."""
        edges = self.edges
        return (self.cumulative[:, 1:] - self.cumulative[:, :-1]) / (edges[1:] - edges[:-1])

    def __repr__(self) -> str:
        lo, hi = math.exp(self.ln_edge0), math.exp(self.ln_edge0 + self.n_pixels * self.dln)
        return (
            f"SEDLibrary({self.n_seds} SEDs, {self.n_pixels} px over {lo:.1f}-{hi:.1f} Å, "
            f"dlnλ = 1/{1 / self.dln:.0f}, device={self.device})"
        )

    def to(self, device) -> "SEDLibrary":
        """The library on ``device`` (cumulative included); ``self`` if it is already there."""
        moved = self.cumulative.to(device)
        return self if moved is self.cumulative else self._from_cumulative(moved, self.ln_edge0, self.dln)

    # --- the op -----------------------------------------------------------------------------------------
    def z_range(self, wave_edges) -> tuple[float, float]:
        """(z_min, z_max): redshifts for which every bin of ``wave_edges`` [M+1] (Å) lies on the rest grid."""
        edges = as_grid(wave_edges, "wave_edges", torch.device("cpu") if not isinstance(wave_edges, torch.Tensor) else wave_edges.device)
        return coverage_z_range(self.n_pixels, edges, self.ln_edge0, self.dln)

    def redshift_resample(
        self,
        sed_index: torch.Tensor,
        z: torch.Tensor,
        wave_edges,
        *,
        fill: Optional[float] = None,
        check: bool = True,
    ) -> torch.Tensor:
        """SEDs ``sed_index`` at redshifts ``z``, averaged over the observed bins ``wave_edges``.

        F[b, j] is the mean over [a_j, a_{j+1}] of f_obs(λ) = f_rest(λ/(1+z_b))/(1+z_b), for SED
        s = sed_index[b]: flux is conserved, so a line narrower than a pixel keeps its integrated flux and
        lands in the bin containing λ_line·(1+z). Runs the native kernel on CPU/CUDA (the reference elsewhere).

        Args:
            sed_index (Tensor[B], int32/int64): SED of each spectrum, in [0, S).
            z (Tensor[B], float32/float64): redshifts, >= 0.
            wave_edges (Tensor or array [M+1]): observed bin edges in Å (vacuum), increasing. A tensor must be
                on the library's device; an array is moved there.
            fill (float or None): None (default) raises if any bin falls outside the SED coverage, naming the z
                and the servable range (``z_range``); a number fills such bins instead.
            check (bool): validate z and sed_index (default True; one host sync on a GPU). With False, bad
                rows or uncovered bins come out as ``fill`` (NaN if None), never read out of bounds.

        Returns:
            Tensor[B, M], float32, on the library's device. B = 0 gives an empty [0, M] tensor.
        """
        for name, tensor in (("sed_index", sed_index), ("z", z)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if isinstance(wave_edges, torch.Tensor):
            if wave_edges.device != self.device:
                raise ValueError(
                    f"wave_edges is on {wave_edges.device} but the SED library is on {self.device}; "
                    f"move one of them (SEDLibrary.to(device) or tensor.to(device))"
                )
            edges = wave_edges
        else:
            edges = as_grid(wave_edges, "wave_edges", self.device)
        return redshift_resample(self.cumulative, sed_index, z, edges, self.ln_edge0, self.dln, fill, check)
