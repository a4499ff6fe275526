"""Instruments: observed pixels, line-spread function and noise model, applied on the observed pixels.

An ``Instrument`` turns noiseless redshifted spectra on its pixels (``SEDLibrary.redshift_resample`` onto
``wave_edges``) into what a spectrograph records: ``observe(flux, generator)`` convolves with the line-spread
function (LSF), then adds noise, and returns the noisy flux with the inverse variance it used.

Conventions (written once here):
* LSF: a Gaussian of constant FWHM in Å (a slitless grism disperses linearly, so its resolution element is
  about constant in Å), FWHM = λ_ref / R, applied as a discrete convolution along the pixels with a kernel
  normalised to 1 (integrated over each pixel, truncated at ±5σ) and edge pixels replicated outwards, so a
  constant spectrum stays constant and, away from the ends, the flux of a line is conserved. The pixels of a
  preset with an LSF are uniform in Å.
* Continuum level of a spectrum: the median of |F| over ~64 evenly spaced pixels (every max(1, M // 64)-th
  pixel; a full median over M pixels costs 13x more on the CPU and moves the level by little).
* White noise: per spectrum, SNR is drawn log-uniform in ``snr`` (lo, hi) (a fixed SNR when lo == hi). SNR is
  per pixel on the continuum: σ = continuum level / SNR, the same σ in every pixel of that spectrum, so a
  spectrum of constant flux has exactly that SNR in every pixel and a line above it has more.
* Euclid noise ("euclid"): the sky-dominated regime of the NISP red grism, with its background and throughput
  taken flat across the band (an assumption: refine with the instrument's sensitivity curve), so σ is the same
  in every pixel in physical units. Its level follows the Euclid wide survey's line-flux limit: a line of
  F = 2e-16 erg s⁻¹ cm⁻² spread over two resolution elements (n = 2·FWHM/Δλ pixels) has SNR 3.5, i.e.
  σ_f = F / (3.5 · Δλ · √n) erg s⁻¹ cm⁻² Å⁻¹ per pixel (1.85e-18 for NISP: Δλ = 13.4 Å, FWHM = 35.6 Å). Library
  SEDs are normalised, so each spectrum is given a brightness: an AB magnitude drawn uniformly in ``magnitude``
  sets its mean f_λ over the band (f_λ = f_ν·c/λ² at the band's centre), and σ in the spectrum's own units is
  σ_f × (its mean flux / that f_λ). The continuum SNR per pixel is then f_λ(m)/σ_f (0.9 at m = 21 on NISP).
* Inverse variance: 1/σ² per pixel; with no noise it is +inf (the flux is exact).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .lines import EW_BLUE_CONTINUUM, EW_LINE_WINDOW, EW_RED_CONTINUUM

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


EUCLID_LINE_FLUX_LIMIT = 2e-16  # erg s⁻¹ cm⁻², at SNR 3.5 over two resolution elements
EUCLID_LINE_SNR_AT_LIMIT = 3.5
SPEED_OF_LIGHT_ANGSTROM = 2.99792458e18  # Å/s


@functools.lru_cache(maxsize=64)
def _lsf_kernel(sigma: float) -> torch.Tensor:
    """The Gaussian of ``sigma`` pixels integrated over pixel offsets -h..h (h = ceil(5σ), at least 1), normalised,
    float64 on the CPU. Cached: the template fit asks for it once per rendered z (~1,000 times a batch)."""
    half = max(1, math.ceil(5 * sigma))
    offsets = torch.arange(-half, half + 2, dtype=torch.float64) - 0.5  # pixel edges around the centre
    cdf = 0.5 * (1 + torch.erf(offsets / (sigma * math.sqrt(2))))
    kernel = cdf[1:] - cdf[:-1]
    return kernel / kernel.sum()


@dataclass(frozen=True)
class NoiseModel:
    """``kind`` "none", "white" (``snr`` = (lo, hi), drawn log-uniform per spectrum) or "euclid" (``magnitude``
    = (lo, hi) AB, drawn uniform per spectrum; needs an instrument with an LSF). See the module docstring."""

    kind: str = "none"
    snr: tuple = (3.0, 30.0)
    magnitude: tuple = (19.0, 22.5)

    def __post_init__(self):
        if self.kind not in ("none", "white", "euclid"):
            raise ValueError(f'noise kind must be "none", "white" or "euclid", got {self.kind!r}')
        lo, hi = self.snr
        if not (0 < lo <= hi < math.inf):
            raise ValueError(f"snr must be (lo, hi) with 0 < lo <= hi < inf, got {self.snr}")
        lo, hi = self.magnitude
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"magnitude must be (lo, hi) with lo <= hi, got {self.magnitude}")

    def apply(self, flux: torch.Tensor, generator: Optional[torch.Generator],
              instrument: Optional["Instrument"] = None,
              profile: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(noisy flux, inverse variance), both [B, M] like ``flux``; no host synchronisation. ``profile`` [B, M]
        (optional, > 0) multiplies σ pixel by pixel (noise that varies along the spectrum)."""
        if self.kind == "none":
            return flux, torch.full_like(flux, math.inf)
        u = torch.rand(flux.shape[0], 1, generator=generator, device=flux.device, dtype=flux.dtype)
        if self.kind == "white":
            lo, hi = self.snr
            snr = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            sigma = continuum_level(flux) / snr
        else:
            if instrument is None or instrument.lsf_fwhm is None:
                raise ValueError("euclid noise needs the instrument (with an LSF) that observed the spectra")
            lo, hi = self.magnitude
            magnitude = lo + u * (hi - lo)
            sigma = instrument.euclid_sigma() * flux.mean(dim=1, keepdim=True).abs() / instrument.ab_flux_density(magnitude)
        noise = torch.randn(flux.shape, generator=generator, device=flux.device, dtype=flux.dtype)
        if profile is not None:
            sigma = sigma * profile
        ivar = (1.0 / sigma.square()).expand_as(flux)
        return flux + sigma * noise, ivar


@dataclass(frozen=True)
class Instrument:
    """Observed pixel edges (Å, vacuum) + Gaussian LSF of constant FWHM (Å, or None) + noise model."""

    name: str
    wave_edges: torch.Tensor = field(repr=False)
    lsf_fwhm: Optional[float] = None
    noise: NoiseModel = NoiseModel()

    def __post_init__(self):
        edges = torch.as_tensor(self.wave_edges, dtype=torch.float64)
        if edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("wave_edges must be 1-D, strictly increasing, with at least 2 values")
        object.__setattr__(self, "wave_edges", edges)
        if self.lsf_fwhm is not None:
            widths = edges[1:] - edges[:-1]
            if not bool(torch.allclose(widths, widths.mean(), rtol=1e-6)):
                raise ValueError("an LSF needs pixels of uniform width in Å")
            if not self.lsf_fwhm > 0:
                raise ValueError(f"lsf_fwhm must be > 0 Å, got {self.lsf_fwhm}")

    # --- presets ----------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, noise: NoiseModel = NoiseModel()) -> "Instrument":
        """``euclid-nisp-red``: 12060-18920 Å in 512 pixels of 13.4 Å, Gaussian LSF of R = 450 at 1.6 µm
        (FWHM 35.6 Å). ``paper``: the authors' data, 1780 pixels of 5 Å centred on 11000-19895 Å, no LSF."""
        if name == "euclid-nisp-red":
            return cls.linear(name, 12060.0, 13.4, 512, resolution=450.0, resolution_at=16000.0, noise=noise)
        if name == "paper":
            return cls.linear(name, 11000.0 - 2.5, 5.0, 1780, noise=noise)
        raise ValueError(f'unknown instrument preset {name!r}; presets: "euclid-nisp-red", "paper"')

    @classmethod
    def linear(cls, name: str, first_edge: float, pixel: float, n_pixels: int, *, resolution: Optional[float] = None,
               resolution_at: Optional[float] = None, noise: NoiseModel = NoiseModel()) -> "Instrument":
        """Pixels of ``pixel`` Å from ``first_edge``; LSF FWHM = resolution_at / resolution when given."""
        k = torch.arange(n_pixels + 1, dtype=torch.float64)
        fwhm = None
        if resolution is not None:
            centre = first_edge + 0.5 * pixel * n_pixels
            fwhm = (resolution_at if resolution_at is not None else centre) / resolution
        return cls(name, first_edge + pixel * k, fwhm, noise)

    @classmethod
    def log(cls, name: str, first_edge: float, last_edge: float, n_pixels: int,
            noise: NoiseModel = NoiseModel()) -> "Instrument":
        """Log-uniform pixels between ``first_edge`` and ``last_edge`` (Å); no LSF (it needs uniform pixels)."""
        k = torch.arange(n_pixels + 1, dtype=torch.float64)
        edges = torch.exp(math.log(first_edge) + k * (math.log(last_edge) - math.log(first_edge)) / n_pixels)
        return cls(name, edges, None, noise)

    def with_noise(self, noise: NoiseModel) -> "Instrument":
        return Instrument(self.name, self.wave_edges, self.lsf_fwhm, noise)

    # --- what it does -----------------------------------------------------------------------------------
    @property
    def n_pixels(self) -> int:
        return self.wave_edges.numel() - 1

    @property
    def wavelength(self) -> torch.Tensor:
        """Tensor[M], float64: pixel centres in Å."""
        return 0.5 * (self.wave_edges[1:] + self.wave_edges[:-1])

    def lsf_kernel(self, device=None, dtype=torch.float32) -> Optional[torch.Tensor]:
        """The LSF as a normalised kernel over pixel offsets -h..h (the Gaussian integrated over each pixel)."""
        if self.lsf_fwhm is None:
            return None
        pixel = (self.wave_edges[1] - self.wave_edges[0]).item()
        return _lsf_kernel(self.lsf_fwhm / FWHM_PER_SIGMA / pixel).to(device=device, dtype=dtype, copy=True)  # callers may write

    def convolve_lsf(self, flux: torch.Tensor) -> torch.Tensor:
        """flux [B, M] convolved with the LSF (edge pixels replicated outwards); unchanged without an LSF."""
        kernel = self.lsf_kernel(flux.device, flux.dtype)
        if kernel is None:
            return flux
        half = (kernel.numel() - 1) // 2
        padded = torch.nn.functional.pad(flux[None], (half, half), mode="replicate")[0]
        # One group per spectrum: faster on the CPU than a single-channel conv over a batch (docs/kernels.md).
        weights = kernel.flip(0).expand(flux.shape[0], 1, kernel.numel())
        return torch.nn.functional.conv1d(padded[None], weights, groups=flux.shape[0])[0]

    def euclid_sigma(self) -> float:
        """σ_f per pixel (erg s⁻¹ cm⁻² Å⁻¹) at which a 2e-16 erg s⁻¹ cm⁻² line over two resolution elements has
        SNR 3.5 (see the module docstring)."""
        pixel = (self.wave_edges[1] - self.wave_edges[0]).item()
        n_pixels = 2.0 * self.lsf_fwhm / pixel
        return EUCLID_LINE_FLUX_LIMIT / (EUCLID_LINE_SNR_AT_LIMIT * pixel * math.sqrt(n_pixels))

    def halpha_snr(self, clean: torch.Tensor, ivar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[B] float64: the expected detection SNR of the Hα + [NII] blend of noiseless spectra ``clean`` [B, M]
        at redshifts ``z`` [B], against the noise of ``ivar`` [B, M] (same units: ``AugmentedSpectra.draw(...,
        clean=True)`` gives both), in the Euclid survey's convention: line flux / (σ · Δλ · √n), n = 2·FWHM/Δλ
        pixels (two resolution elements; Δλ the mean pixel width, σ the median over valid pixels).

        The line flux is taken as ``zfast.data.lines.halpha_equivalent_width`` measures the EW, moved to the
        observed frame: the integral of (f - c) over 6530-6600 Å rest (pixels by overlap), c a straight line
        fitted to the pixels centred in 6470-6520 and 6610-6660 Å rest. Under the "euclid" noise model SNR >= 3.5
        is exactly Hα + [NII] >= 2e-16 erg s⁻¹ cm⁻²: the survey's flux limit, i.e. the galaxies it targets."""
        if self.lsf_fwhm is None:
            raise ValueError("halpha_snr needs an instrument with an LSF (the survey's SNR is over its resolution)")
        if clean.dim() != 2 or clean.shape[1] != self.n_pixels or ivar.shape != clean.shape or z.shape != clean.shape[:1]:
            raise ValueError(f"need clean, ivar [B, {self.n_pixels}] and z [B], got {tuple(clean.shape)}, "
                             f"{tuple(ivar.shape)}, {tuple(z.shape)}")  # fmt: skip
        edges = self.wave_edges.to(clean.device)
        centres = 0.5 * (edges[1:] + edges[:-1])
        f = clean.double()
        one_plus_z = (1.0 + z.double().to(clean.device))[:, None]
        rest = centres[None, :] / one_plus_z
        in_bands = ((rest >= EW_BLUE_CONTINUUM[0]) & (rest <= EW_BLUE_CONTINUUM[1])) | (
            (rest >= EW_RED_CONTINUUM[0]) & (rest <= EW_RED_CONTINUUM[1]))  # fmt: skip
        w = in_bands.double()
        x = (rest - 6564.61) * w
        # Per-row least squares c = a + b·x over the band pixels (2x2 normal equations).
        n, sx, sxx = w.sum(1), x.sum(1), (x * x).sum(1)
        sy, sxy = (f * w).sum(1), (f * x).sum(1)
        det = n * sxx - sx * sx
        b = (n * sxy - sx * sy) / det
        a = (sy - b * sx) / n
        continuum = a[:, None] + b[:, None] * (rest - 6564.61)
        lo, hi = EW_LINE_WINDOW[0] * one_plus_z, EW_LINE_WINDOW[1] * one_plus_z
        overlap = (torch.minimum(edges[None, 1:], hi) - torch.maximum(edges[None, :-1], lo)).clamp(min=0.0)
        line_flux = (overlap * (f - continuum)).sum(1)
        iv = ivar.double().to(clean.device)
        sigma = torch.where(iv > 0, iv.rsqrt(), torch.full_like(iv, math.nan)).nanmedian(dim=1).values
        pixel = ((edges[-1] - edges[0]) / self.n_pixels).item()
        return line_flux / (sigma * pixel * math.sqrt(2.0 * self.lsf_fwhm / pixel))

    def ab_flux_density(self, magnitude):
        """f_λ (erg s⁻¹ cm⁻² Å⁻¹) of a source of AB magnitude ``magnitude`` at the band's centre wavelength."""
        centre = 0.5 * (self.wave_edges[0] + self.wave_edges[-1]).item()
        return 10.0 ** (-(magnitude + 48.6) / 2.5) * SPEED_OF_LIGHT_ANGSTROM / centre**2

    def observe(self, flux: torch.Tensor, generator: Optional[torch.Generator] = None,
                noise_profile: Optional[torch.Tensor] = None):  # fmt: skip
        """(flux, ivar), each [B, M]: noiseless spectra on this instrument's pixels through the LSF and noise
        (σ times ``noise_profile`` [B, M] pixel by pixel when given)."""
        if flux.dim() != 2 or flux.shape[1] != self.n_pixels:
            raise ValueError(f"flux must be [B, {self.n_pixels}] on this instrument's pixels, got {tuple(flux.shape)}")
        return self.noise.apply(self.convolve_lsf(flux), generator, self, noise_profile)


def valid_pixels(flux: torch.Tensor, ivar: torch.Tensor) -> torch.Tensor:
    """Boolean [B, M]: pixels that carry information — finite flux and ivar > 0 (ivar = +inf: noiseless).
    A pixel with ivar = 0, NaN ivar or non-finite flux is masked, in training and in ``zfast.predict`` alike."""
    return torch.isfinite(flux) & (ivar > 0)


def continuum_level(flux: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, 1]: the median of |flux| over ~64 evenly spaced pixels of each spectrum [B, M], masked pixels
    (``valid`` False) left out (NaN where a spectrum has no valid sampled pixel)."""
    stride = max(1, flux.shape[1] // 64)
    sample = flux[:, ::stride].abs()
    if valid is None:
        return sample.median(dim=1, keepdim=True).values
    sample = torch.where(valid[:, ::stride], sample, torch.full_like(sample, math.nan))
    return sample.nanmedian(dim=1, keepdim=True).values


def normalise(flux: torch.Tensor, ivar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the network sees, in training and prediction alike: (flux / s, ivar · s², s) with s [B, 1] the
    continuum level of the valid pixels (``continuum_level``), or their maximum |flux| if that is 0 or
    undefined, or 1 for an all-zero or all-masked spectrum — so zero, negative and mostly-empty spectra stay
    finite. Masked pixels (``valid_pixels`` False: ivar = 0 or NaN, or non-finite flux) come out as flux 0 and
    ivar 0: the continuum of a normalised spectrum is ~1, so 0 reads as "no data". No host synchronisation."""
    valid = valid_pixels(flux, ivar)
    scale = continuum_level(flux, valid)
    peak = torch.where(valid, flux.abs(), torch.zeros_like(flux)).amax(dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, peak)  # NaN > 0 is False
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.zeros_like(flux)
    return torch.where(valid, flux / scale, zero), torch.where(valid, ivar * scale.square(), zero), scale
