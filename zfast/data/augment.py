"""On-the-fly redshift augmentation: fresh spectra for every batch, drawn on the training device.

``AugmentedSpectra`` draws SED indices (from one split of the library) and redshifts, puts the SEDs on the
instrument's pixels with the native ``redshift_resample`` kernel, applies the instrument's LSF and noise and
normalises each spectrum — all batched on the library's device: no Python loop over spectra, no host sync
per batch (coverage is checked once, at construction), no DataLoader worker processes. The random stream is a
``torch.Generator`` seeded from ``seed``; ``state_dict``/``load_state_dict`` save and restore it for resume.

Splits are by SED, never by redshift draw (``split_by_sed``): a validation or test spectrum comes from an SED
the network never saw in training.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..files import write_text
from .instrument import Instrument, normalise
from .sed_library import SEDLibrary

SPLITS = ("train", "val", "test")


def split_by_sed(n_seds: int, fractions: tuple = (0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """{"train", "val", "test"} → disjoint sorted int64 tensors of SED indices covering range(n_seds).

    A seeded permutation cut by ``fractions`` (summing to 1; val and test get at least one SED each when
    n_seds >= 3). The same (n_seds, fractions, seed) always gives the same split.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if n_seds < 3:
        raise ValueError(f"need at least 3 SEDs to split into train/val/test, got {n_seds}")
    order = torch.randperm(n_seds, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fractions[1] * n_seds)) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * n_seds)) if fractions[2] > 0 else 0
    n_train = n_seds - n_val - n_test
    parts = torch.split(order, [n_train, n_val, n_test])
    return {name: part.sort().values for name, part in zip(SPLITS, parts)}


def save_splits(path, splits: dict, **provenance) -> None:
    """Write a split (``split_by_sed``'s dict) as JSON, with any provenance given (e.g. n_seds, fractions,
    seed, the library's path), atomically: a run folder holds the exact SEDs each set used."""
    record = dict(provenance)
    record.update({name: [int(i) for i in torch.as_tensor(part).tolist()] for name, part in splits.items()})
    write_text(path, json.dumps(record, indent=1))


def load_splits(path) -> dict:
    """Read ``save_splits``' file: {"train", "val", "test"} → int64 tensors (checked disjoint) + provenance."""
    record = json.loads(pathlib.Path(path).read_text())
    missing = [name for name in SPLITS if name not in record]
    if missing:
        raise ValueError(f"{path}: not a split file, missing {missing}")
    names = list(SPLITS) + (["holdout"] if "holdout" in record else [])
    splits = {name: torch.tensor(record.pop(name), dtype=torch.int64) for name in names}
    union = torch.cat(list(splits.values()))
    if union.unique().numel() != union.numel():
        raise ValueError(f"{path}: the train/val/test SED indices overlap")
    return {**record, **splits}


@dataclass(frozen=True)
class Perturbations:
    """What real spectra carry beyond a library SED seen through the instrument model, drawn per spectrum.

    Attributes:
        bad_pixel_prob (float): share of spectra given scattered bad pixels (ivar 0), each pixel independently,
            at a rate drawn uniformly in [0, ``bad_pixel_max``) per spectrum (real Euclid SIR spectra flag ~10 %
            NOT_USE and ~10 % ABS_FLUX pixels along the spectrum, not only contiguous gaps).
        bad_pixel_max (float): highest rate of bad pixels.
        distortion (float): rms of a smooth multiplicative distortion of the continuum, exp(Σ_k a_k P_k(x)) with
            P_k the Legendre polynomials of order 1..``DISTORTION_ORDER`` over the band (x from -1 to 1) and
            a_k ~ N(0, (distortion / k)²): flux-calibration errors and dust laws other than the library's tilt
            and bend the continuum; an SED library spans only its own. Applied before the LSF and the noise.
        noise_variation (float): rms of ln σ(λ) along the spectrum, a smooth profile of the same form (orders
            1..2), mean ln σ kept: a grism's sensitivity and the sky are not flat across the band, so the
            noise is not either. Needs a noise model.
        mix_prob (float): share of spectra that are a mixture of two SEDs of the split at the same redshift,
            ⟨s₁⟩·(α·s₁/⟨s₁⟩ + (1-α)·s₂/⟨s₂⟩) with α ~ U(0, 1) and ⟨·⟩ the mean over the band (the first SED's flux
            scale kept, for noise models in physical units): real galaxies are composites of
            populations a library holds only as separate SEDs. The second SED is drawn as the first (same weights).
        line_contrast (float): rms of ln α, where each spectrum's features are raised to the power α about their
            smooth continuum C (a running mean over ``CONTRAST_WINDOW`` pixels): s -> C·(s/C)^α. Absorption depths
            and emission equivalent widths scale together, as with other metallicities, ages and nebular
            conditions than the library's (real passive galaxies' metal lines are weaker or stronger than its
            SSPs'). Applied before the LSF and the noise.
    """

    bad_pixel_prob: float = 0.0
    bad_pixel_max: float = 0.15
    distortion: float = 0.0
    noise_variation: float = 0.0
    mix_prob: float = 0.0
    line_contrast: float = 0.0

    DISTORTION_ORDER = 3
    CONTRAST_WINDOW = 41  # pixels (~550 Å on NISP, ~200 Å in the rest frame): wider than lines and most bands
    NOISE_ORDER = 2

    def __post_init__(self):
        if not (0.0 <= self.mix_prob <= 1.0):
            raise ValueError(f"mix_prob must be within [0, 1], got {self.mix_prob}")
        if not (0.0 <= self.bad_pixel_prob <= 1.0 and 0.0 <= self.bad_pixel_max < 1.0):
            raise ValueError(f"need 0 <= bad_pixel_prob <= 1 and 0 <= bad_pixel_max < 1, got "
                             f"{self.bad_pixel_prob}, {self.bad_pixel_max}")  # fmt: skip
        for name in ("distortion", "noise_variation", "line_contrast"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 2.0):
                raise ValueError(f"{name} must be within [0, 2] (an rms in ln flux), got {value}")

    @property
    def active(self) -> bool:
        return (self.bad_pixel_prob > 0 or self.distortion > 0 or self.noise_variation > 0 or self.mix_prob > 0
                or self.line_contrast > 0)  # fmt: skip


def running_mean(spectra: torch.Tensor, window: int) -> torch.Tensor:
    """[B, M]: the mean of ``spectra`` [B, M] over ``window`` (odd) pixels centred on each, the window shortened
    at the ends (so a constant stays constant)."""
    half = window // 2
    m = spectra.shape[1]
    csum = torch.nn.functional.pad(torch.cumsum(spectra.double(), dim=1), (1, 0))
    idx = torch.arange(m, device=spectra.device)
    lo, hi = (idx - half).clamp(min=0), (idx + half + 1).clamp(max=m)
    return ((csum[:, hi] - csum[:, lo]) / (hi - lo).double()).to(spectra.dtype)


def contrast_scaled(spectra: torch.Tensor, rms: float, window: int, generator) -> torch.Tensor:
    """``Perturbations.line_contrast``: C·(s/C)^α per spectrum of positive ``spectra`` [B, M], C their running
    mean over ``window`` pixels, ln α ~ N(0, rms²); non-positive pixels are left as they are."""
    alpha = torch.exp(rms * torch.randn(spectra.shape[0], 1, generator=generator, device=spectra.device, dtype=spectra.dtype))
    continuum = running_mean(spectra, window)
    good = (spectra > 0) & (continuum > 0)
    ratio = torch.where(good, spectra / torch.where(good, continuum, 1.0), 1.0)
    return torch.where(good, continuum * ratio.pow(alpha), spectra)


@functools.lru_cache(maxsize=16)
def legendre_basis(n_pixels: int, order: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[order, n_pixels]: Legendre polynomials P_1..P_order at the pixels, x = -1 at the first, +1 at the last
    (cached: the training loop asks for the same basis every batch; do not modify the returned tensor)."""
    x = torch.linspace(-1.0, 1.0, n_pixels, device=device, dtype=torch.float64)
    rows, previous, current = [], torch.ones_like(x), x
    for k in range(1, order + 1):
        rows.append(current)
        previous, current = current, ((2 * k + 1) * x * current - k * previous) / (k + 1)
    return torch.stack(rows).to(dtype)


def smooth_log_profile(n_spectra: int, n_pixels: int, rms: float, order: int, generator, device,
                       dtype=torch.float32) -> torch.Tensor:  # fmt: skip
    """[B, M]: Σ_k a_k P_k(x), a_k ~ N(0, (rms / k)²), k = 1..order (``legendre_basis``): a smooth random curve."""
    k = torch.arange(1, order + 1, device=device, dtype=dtype)
    a = torch.randn(n_spectra, order, generator=generator, device=device, dtype=dtype) * (rms / k)
    return a @ legendre_basis(n_pixels, order, device, dtype)


def scattered_bad_pixels(n_spectra: int, n_pixels: int, prob: float, max_rate: float, generator,
                         device) -> torch.Tensor:  # fmt: skip
    """Boolean [B, M]: in a ``prob`` share of the spectra, each pixel bad with a rate ~ U[0, max_rate) per spectrum."""
    hit = torch.rand(n_spectra, 1, generator=generator, device=device) < prob
    rate = torch.rand(n_spectra, 1, generator=generator, device=device) * max_rate
    return hit & (torch.rand(n_spectra, n_pixels, generator=generator, device=device) < rate)


class AugmentedSpectra:
    """An endless iterable of augmented batches ``(flux[B, M], ivar[B, M], z[B], sed_index[B])``.

    Args:
        library (SEDLibrary): rest-frame SEDs, on the device the batches should live on.
        instrument (Instrument): observed pixels, LSF and noise.
        z_range (tuple): redshifts drawn uniformly in [lo, hi) (the paper: 1 <= z < 1.8).
        split (str or Tensor): "train", "val" or "test" of ``split_by_sed(len(library), fractions, split_seed)``,
            or an explicit tensor of SED indices.
        batch_size (int): spectra per batch. seed (int): seeds the draws (SED, z, noise).
        fractions, split_seed: how the library is split (see ``split_by_sed``).
        z_prior (tuple, optional): a user prior instead of the uniform draw: (edges [K+1], weights [K]), a
            piecewise-constant density over z bins (weights >= 0, any normalisation) within ``z_range``; z is
            drawn by picking a bin with probability ∝ weight, then uniformly inside it.
        mask_prob (float): chance that a spectrum gets a masked gap (ivar = 0, as bad pixels, detector gaps or
            incomplete coverage arrive in real data), 1 to ``max_gap`` pixels long at a uniform position (it may
            run off either end). Masked pixels reach the network as 0 (``normalise``), exactly as
            ``zfast.predict`` passes masked pixels of real spectra. Default 0 (no gaps).
        min_line_snr (float): keep only spectra whose Hα + [NII] detection SNR (``Instrument.halpha_snr``: the
            Euclid survey's convention, >= 3.5 under the "euclid" noise model is its line-flux limit) is at least
            this; the others are redrawn, so every batch holds ``batch_size`` selected spectra. Default 0 (all).
        perturbations (Perturbations, optional): scattered bad pixels, continuum distortions and noise that
            varies along the spectrum (see ``Perturbations``). Default: none (the random stream is then the
            same as without the option).

    flux and ivar are float32 and normalised per spectrum (``normalise``); z is float64 (exact labels);
    sed_index is int64.
    """

    def __init__(
        self,
        library: SEDLibrary,
        instrument: Instrument,
        z_range: tuple = (1.0, 1.8),
        split: Union[str, torch.Tensor] = "train",
        batch_size: int = 256,
        seed: int = 0,
        fractions: tuple = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        z_prior: Optional[tuple] = None,
        mask_prob: float = 0.0,
        max_gap: int = 32,
        min_line_snr: float = 0.0,
        sed_weights: Optional[torch.Tensor] = None,
        perturbations: Optional[Perturbations] = None,
    ):
        self.perturbations = perturbations if perturbations is not None else Perturbations()
        if self.perturbations.noise_variation > 0 and instrument.noise.kind == "none":
            raise ValueError("perturbations.noise_variation needs a noise model (the instrument's is 'none')")
        if not math.isfinite(min_line_snr) or min_line_snr < 0:
            raise ValueError(f"min_line_snr must be finite and >= 0, got {min_line_snr}")
        if min_line_snr > 0 and instrument.lsf_fwhm is None:
            raise ValueError("min_line_snr needs an instrument with an LSF (the line SNR is over its resolution)")
        self.min_line_snr = float(min_line_snr)
        if not (0.0 <= mask_prob <= 1.0) or max_gap < 1:
            raise ValueError(f"need 0 <= mask_prob <= 1 and max_gap >= 1, got {mask_prob}, {max_gap}")
        self.mask_prob, self.max_gap = float(mask_prob), int(max_gap)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        z_lo, z_hi = map(float, z_range)
        if not (0 <= z_lo < z_hi):
            raise ValueError(f"z_range must be (lo, hi) with 0 <= lo < hi, got {z_range}")
        self.library, self.instrument, self.batch_size = library, instrument, batch_size
        self.z_range = (z_lo, z_hi)
        self.device = library.device
        if isinstance(split, str):
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS} or a tensor of SED indices, got {split!r}")
            indices = split_by_sed(len(library), fractions, split_seed)[split]
        else:
            indices = torch.as_tensor(split, dtype=torch.int64)
            if indices.numel() == 0 or int(indices.min()) < 0 or int(indices.max()) >= len(library):
                raise ValueError(f"split indices must be non-empty and within [0, {len(library)})")
        self.sed_indices = indices.to(self.device)
        self.sed_weights = None  # uniform over the split's SEDs
        if sed_weights is not None:
            weights = torch.as_tensor(sed_weights, dtype=torch.float64).flatten()
            if weights.numel() != len(library) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError(f"sed_weights must be {len(library)} finite values >= 0 (one per library SED)")
            weights = weights[indices]
            if not bool((weights > 0).any()):
                raise ValueError("sed_weights are 0 for every SED of the split")
            self.sed_weights = weights.to(self.device)
        library.check_coverage(instrument.wave_edges, self.z_range)
        self.wave_edges = instrument.wave_edges.to(self.device)
        self.z_prior = None if z_prior is None else self._check_prior(z_prior)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _check_prior(self, z_prior) -> tuple:
        edges, weights = (torch.as_tensor(x, dtype=torch.float64) for x in z_prior)
        if edges.dim() != 1 or weights.shape != (edges.numel() - 1,) or weights.numel() < 1:
            raise ValueError(f"z_prior must be (edges [K+1], weights [K]), got shapes {tuple(edges.shape)} and {tuple(weights.shape)}")
        if not bool((edges[1:] > edges[:-1]).all()) or not bool(torch.isfinite(edges).all()):
            raise ValueError("z_prior edges must be finite and strictly increasing")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or not weights.sum() > 0:
            raise ValueError("z_prior weights must be finite, >= 0 and not all 0")
        if edges[0] < self.z_range[0] or edges[-1] > self.z_range[1]:
            raise ValueError(f"z_prior edges {edges[0].item():.4g}-{edges[-1].item():.4g} must lie within z_range {self.z_range}")
        return edges.to(self.device), (weights / weights.sum()).to(self.device)

    def __iter__(self):
        return self

    def __next__(self):
        return self.draw(self.batch_size)

    # Rounds of redrawing before min_line_snr gives up (each keeps its selected spectra).
    MAX_SELECTION_ROUNDS = 50

    def draw(self, n_spectra: int, clean: bool = False):
        """One batch of ``n_spectra`` spectra from the running random stream. With ``clean=True`` a fifth tensor
        [B, M] follows: the same spectra before noise and gaps (through the LSF), divided by the same per-spectrum
        scale as ``flux`` (for truth-based diagnostics such as ``Instrument.halpha_snr``; same random stream)."""
        if self.min_line_snr <= 0:
            return self._draw(n_spectra, clean)
        kept, n_kept = [], 0
        for _ in range(self.MAX_SELECTION_ROUNDS):
            # Draw what is missing, with headroom for the rejected share (one host synchronisation per round).
            *batch, spectra_clean = self._draw(max(2 * (n_spectra - n_kept), 16), clean=True)
            keep = self.instrument.halpha_snr(spectra_clean, batch[1], batch[2]) >= self.min_line_snr
            kept.append([t[keep] for t in (*batch, spectra_clean)])
            n_kept += int(keep.sum())
            if n_kept >= n_spectra:
                out = [torch.cat(parts)[:n_spectra] for parts in zip(*kept)]
                return tuple(out) if clean else tuple(out[:4])
        raise RuntimeError(f"min_line_snr = {self.min_line_snr}: only {n_kept} of {n_spectra} spectra passed after "
                           f"{self.MAX_SELECTION_ROUNDS} rounds of drawing; is Hα within the instrument's band?")

    def _pick(self, n_spectra: int, g: torch.Generator) -> torch.Tensor:
        """SED indices [n] of the split, uniform or by ``sed_weights``."""
        if self.sed_weights is None:
            pick = torch.randint(0, self.sed_indices.numel(), (n_spectra,), generator=g, device=self.device)
        else:
            pick = torch.multinomial(self.sed_weights, n_spectra, replacement=True, generator=g)
        return self.sed_indices[pick]

    def _mixed(self, spectra: torch.Tensor, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``spectra`` with a ``mix_prob`` share replaced by mixtures with a second SED at the same z
        (``Perturbations.mix_prob``); no host synchronisation."""
        n = spectra.shape[0]
        other = self.library.redshift_resample(self._pick(n, g), z, self.wave_edges, check=False)
        alpha = torch.rand(n, 1, generator=g, device=self.device, dtype=spectra.dtype)
        mixed = torch.rand(n, 1, generator=g, device=self.device) < self.perturbations.mix_prob
        tiny = torch.finfo(spectra.dtype).tiny
        level = spectra.mean(dim=1, keepdim=True).clamp_min(tiny)  # the first SED's flux scale is kept (noise models
        second = other / other.mean(dim=1, keepdim=True).clamp_min(tiny)  # in physical units depend on it)
        return torch.where(mixed, alpha * spectra + (1 - alpha) * level * second, spectra)

    def _draw(self, n_spectra: int, clean: bool = False):
        g = self.generator
        sed_index = self._pick(n_spectra, g)
        u = torch.rand(n_spectra, generator=g, device=self.device, dtype=torch.float64)
        if self.z_prior is None:
            z_lo, z_hi = self.z_range
            z = z_lo + (z_hi - z_lo) * u
        else:
            edges, weights = self.z_prior
            k = torch.multinomial(weights, n_spectra, replacement=True, generator=g)
            z = edges[k] + u * (edges[k + 1] - edges[k])
        # Validated once at construction (split indices, coverage of z_range): no host sync per batch.
        spectra = self.library.redshift_resample(sed_index, z, self.wave_edges, check=False)
        p = self.perturbations
        if p.mix_prob > 0:
            spectra = self._mixed(spectra, z, g)
        if p.line_contrast > 0:
            spectra = contrast_scaled(spectra, p.line_contrast, p.CONTRAST_WINDOW, g)
        if p.distortion > 0:
            spectra = spectra * smooth_log_profile(n_spectra, spectra.shape[1], p.distortion, p.DISTORTION_ORDER, g,
                                                   self.device, spectra.dtype).exp()  # fmt: skip
        profile = None
        if p.noise_variation > 0:
            profile = smooth_log_profile(n_spectra, spectra.shape[1], p.noise_variation, p.NOISE_ORDER, g,
                                         self.device, spectra.dtype).exp()  # fmt: skip
        flux, ivar = self.instrument.observe(spectra, g, noise_profile=profile)
        if self.mask_prob > 0:
            ivar = self._mask_gaps(ivar, g)
        if p.bad_pixel_prob > 0:
            bad = scattered_bad_pixels(n_spectra, ivar.shape[1], p.bad_pixel_prob, p.bad_pixel_max, g, self.device)
            ivar = ivar.masked_fill(bad, 0.0)
        flux, ivar, scale = normalise(flux, ivar)
        if clean:
            return flux, ivar, z, sed_index, self.instrument.convolve_lsf(spectra) / scale
        return flux, ivar, z, sed_index

    def _mask_gaps(self, ivar: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """ivar with one gap (ivar = 0) in a ``mask_prob`` share of the spectra; no host synchronisation."""
        n, m = ivar.shape
        has_gap = torch.rand(n, 1, generator=g, device=self.device) < self.mask_prob
        length = torch.randint(1, self.max_gap + 1, (n, 1), generator=g, device=self.device)
        start = torch.randint(-self.max_gap + 1, m, (n, 1), generator=g, device=self.device)
        pixel = torch.arange(m, device=self.device)
        gap = has_gap & (pixel >= start) & (pixel < start + length)
        return ivar.masked_fill(gap, 0.0)

    def fixed_set(self, n_spectra: int, seed: int, clean: bool = False) -> tuple:
        """``n_spectra`` spectra drawn from their own generator seeded with ``seed``: identical on every call
        and every run (for validation and test sets), leaving the running stream untouched. ``clean``: as
        ``draw``."""
        running = self.generator
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        try:
            return self.draw(n_spectra, clean=clean)
        finally:
            self.generator = running

    def state_dict(self) -> dict:
        """The random stream's state (for checkpoints)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
