"""A library of rest-frame galaxy SEDs, stored for O(M) redshifting onto any observed grid."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..ops.checks import FLOAT_DTYPES, as_grid, check_finite, check_increasing
from ..ops.memory import check_fits
from ..ops.rebin import pixel_edges, rebin_edges_reference
from ..ops.redshift_resample import coverage_z_range, redshift_resample
from .huge_pages import on_huge_pages

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
        params (dict, optional): a per-SED parameter table, {name: array [S]} of numbers or strings (e.g. the
            physical parameters an SED was made with, its rest EW(Hα)); kept as numpy arrays in ``params``.

    Attributes:
        cumulative (Tensor[S, N+1], float64): C_s[k] = ∫_{e_0}^{e_k} f_s dλ at the rest edges
            e_k = exp(ln_edge0 + k·dln); computed once here.
        ln_edge0 (float), dln (float): the rest grid.

    ``redshift_resample`` puts SEDs at redshifts onto observed bins; ``to(device)`` moves the library.
    ``SEDLibrary.default()`` loads the built-in library (bagpipes SEDs, see ``zfast-sed build``).
    """

    def __init__(self, wavelength, flux, *, dln: Optional[float] = None, params: Optional[dict] = None):
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
        self.params = _parameter_table(params, flux_t.shape[0])
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
            # The rebinned flux, its cumulative integral and the rebinning's own temporaries: ~3 [S, n_new] float64
            # arrays. Checked before any of them exists (a dln of 1e-9 asked for > 9 GB before failing).
            check_fits(3 * 8 * flux64.shape[0] * (n_new + 1), wave.device,
                       f"a rest grid of {n_new:,} pixels (dln = {step:.3g}) for {flux64.shape[0]} SEDs",
                       "pass a larger dln")  # fmt: skip
            self.dln, self.ln_edge0 = step, ln_lo
            edges_new = self._edges_of(ln_lo, step, n_new, wave.device).clamp(edges_in[0], edges_in[-1])
            rest_flux = rebin_edges_reference(flux64, edges_in, edges_new, math.nan)
        if self.dln > MAX_DLN:
            raise ValueError(
                f"the rest grid is too coarse (dln = {self.dln:.3g} > {MAX_DLN}, i.e. R < {1 / (2 * MAX_DLN):.0f}); "
                f"pass a finer dln or a finer library"
            )
        edges = self._edges_of(self.ln_edge0, self.dln, rest_flux.shape[1], rest_flux.device)
        self.cumulative = on_huge_pages(torch.cat(
            [rest_flux.new_zeros((rest_flux.shape[0], 1)), torch.cumsum(rest_flux * (edges[1:] - edges[:-1]), dim=1)],
            dim=1,
        ))  # fmt: skip

    @staticmethod
    def _edges_of(ln_edge0: float, dln: float, n_pixels: int, device) -> torch.Tensor:
        # From an integer index in float64: a float-step arange or a LongTensor * float would lose precision.
        k = torch.arange(n_pixels + 1, dtype=torch.float64, device=device)
        return torch.exp(ln_edge0 + k * dln)

    @classmethod
    def _from_cumulative(cls, cumulative: torch.Tensor, ln_edge0: float, dln: float, params: dict) -> "SEDLibrary":
        library = cls.__new__(cls)
        cumulative = on_huge_pages(cumulative)  # the tensor itself unless on the CPU and large
        library.cumulative, library.ln_edge0, library.dln, library.params = cumulative, ln_edge0, dln, params
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
        if moved is self.cumulative:
            return self
        return self._from_cumulative(moved, self.ln_edge0, self.dln, self.params)

    # --- files ------------------------------------------------------------------------------------------
    def save(self, path, *, dtype: str = "float32") -> None:
        """Write the library to ``path`` (.npz, .h5/.hdf5 or .fits/.fit, by suffix), atomically.

        Stored: ``wavelength`` [N] (rest-frame vacuum Å, the log-uniform pixel centres), ``flux`` [S, N] (f_λ
        in ``dtype``: "float32" (default) or "float16", which needs values within ±65504, e.g. SEDs
        normalised by their median) and the parameter table. ``SEDLibrary.load`` reads it back onto the same
        grid. The file appears only once complete (written beside it, then renamed).
        """
        from . import library_files

        library_files.save(self, path, dtype)

    @classmethod
    def load(cls, path) -> "SEDLibrary":
        """Read a library from an .npz, HDF5 (.h5/.hdf5, needs h5py) or FITS (.fits/.fit, needs astropy) file.

        Layout (what ``save`` writes; files made elsewhere only need ``wavelength`` and ``flux``):
            npz:  arrays ``wavelength`` [N], ``flux`` [S, N] (float16: ``flux_packed``, ``flux_shape``, the lossless
                  row-delta + LZMA encoding of ``library_files.pack_float16``), and ``param_<name>`` [S] per parameter;
            HDF5: datasets ``wavelength``, ``flux`` and a group ``params`` of [S] datasets;
            FITS: image HDUs named WAVELENGTH and FLUX, and an optional binary table HDU named PARAMS.
        Wavelengths are rest-frame vacuum Å. Every problem (missing or mis-shaped arrays, unsorted or duplicate
        wavelengths, non-finite or all-zero SEDs) raises a ValueError that names the file and what to fix.
        """
        from . import library_files

        return library_files.load(cls, path)

    @classmethod
    def default(cls) -> "SEDLibrary":
        """The built-in library: 1000 bagpipes SEDs made by ``zfast-sed build`` (rest 3500-10600 Å vacuum,
        dlnλ = 1/2000, each ÷ its median, float16), with ``params`` (``sfh_type``, ``ew_halpha``, ...); the
        command, seed and versions are in ``default_library.provenance.json`` beside it. Needs only numpy."""
        from pathlib import Path

        return cls.load(Path(__file__).with_name("default_library.npz"))

    def check_coverage(self, wave_edges, z_range: tuple[float, float]) -> None:
        """Raise ValueError unless every z in ``z_range`` (z_lo, z_hi) can be put on ``wave_edges`` [M+1] (Å),
        saying which redshifts the library can serve there."""
        z_min, z_max = self.z_range(wave_edges)
        z_lo, z_hi = z_range
        if z_lo < z_min or z_hi > z_max:
            lo, hi = math.exp(self.ln_edge0), math.exp(self.ln_edge0 + self.n_pixels * self.dln)
            servable = f"{max(z_min, 0.0):.4g} <= z <= {z_max:.4g}" if z_min <= z_max else "no redshift at all"
            raise ValueError(
                f"the library's rest coverage {lo:.1f}-{hi:.1f} Å is too short for {z_lo:.4g} <= z <= {z_hi:.4g} on "
                f"observed bins {float(wave_edges[0]):.1f}-{float(wave_edges[-1]):.1f} Å: it can serve {servable}"
            )

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


def _parameter_table(params: Optional[dict], n_seds: int) -> dict:
    """{name: numpy array [S]} from a dict of array-likes, each checked to hold one value per SED."""
    table = {}
    for name, values in (params or {}).items():
        column = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if column.shape != (n_seds,):
            raise ValueError(f"params[{name!r}] must hold one value per SED, shape ({n_seds},), got {column.shape}")
        if column.dtype.kind not in "biufU":
            raise TypeError(f"params[{name!r}] must hold numbers or strings, got numpy dtype {column.dtype}")
        table[str(name)] = column
    return table
