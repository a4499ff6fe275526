"""pz_post: the native CPU post-processing of P(z) that ``zfast.predict`` runs on every batch.

Two custom ops over rows of a classification network's output (K redshift bins), in float64:

    zfast::pz_calibrate   logits [B, K] -> the plain softmax [B, K] and softmax(logits / T) [B, K], T from a
                          calibration table per SNR bin (and P(z) peak-share group)
    zfast::pz_summarise   probs [B, K] -> summary [B, 7] (z_mean, z_mode, sigma, lo68, hi68, lo95, hi95), the
                          candidates z and P [B, n], deltachi2 [B], and row flags [B]

The maths is that of the torch functions they replace, which stay the readable spec, the fallback off the CPU
or without the extension, and the tests' oracle: ``zfast.calibration.calibrated_probs`` and
``zfast.bins.pz_summary`` / ``refined_mode`` / ``pz_candidates`` (the docstrings there define every column).
Why native: those functions make a dozen passes over [B, K] float64 arrays in memory; at B = 1,024, K = 800
they took ~85 ms per batch on one core, ~12 % of zfast-predict's time (docs/survey.md), where one pass per
row in L1 takes a few ms. Results agree with the spec to rounding (sums in another order, libmvec's exp):
~1e-15 relative; a candidate can differ only where two windows' masses tie to within that.

Callers use ``zfast.calibration.plain_and_calibrated`` and ``zfast.bins.pz_summary_and_candidates``, which pick
this op on the CPU when the extension is built and the spec elsewhere.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _native

SUMMARY_FIELDS = ("z_mean", "z_mode", "sigma", "lo68", "hi68", "lo95", "hi95")
# flags of pz_summarise (kBadValues, kZeroSum in csrc/pz_post/pz_post.h)
BAD_VALUES, ZERO_SUM = 1, 2


def available(device: torch.device) -> bool:
    """Whether the native ops run on ``device`` (the CPU, with the extension built)."""
    return _native.native_backend(torch.device(device)) == "cpu" and hasattr(_native._C, "pz_summarise_cpu")


def _check(t: torch.Tensor, name: str, dtypes: tuple, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (the native pz_post ops), got {t.device}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")


def _check_calibrate(logits, centres, snr, snr_edges, temperatures, peak_edges) -> None:
    _check(logits, "logits", (torch.float32, torch.float64), 2)
    batch, n_bins = logits.shape
    _check(centres, "centres", (torch.float64,), 1)
    if centres.numel() != n_bins:
        raise ValueError(f"centres has {centres.numel()} values but logits has K = {n_bins} columns")
    if temperatures.numel() == 0:
        return
    _check(snr, "snr", (torch.float64,), 1)
    _check(snr_edges, "snr_edges", (torch.float64,), 1)
    if snr.numel() != batch:
        raise ValueError(f"snr has {snr.numel()} values but logits has B = {batch} rows")
    n_snr = snr_edges.numel() - 1
    if n_snr < 1:
        raise ValueError(f"snr_edges needs at least 2 values, got {snr_edges.numel()}")
    n_groups = 1 if peak_edges is None else peak_edges.numel() - 1
    if peak_edges is not None:
        _check(peak_edges, "peak_edges", (torch.float64,), 1)
        if n_groups < 1:
            raise ValueError(f"peak_edges needs at least 2 values, got {peak_edges.numel()}")
    _check(temperatures, "temperatures", (torch.float64,), 2 if peak_edges is not None else 1)
    expected = (n_groups, n_snr) if peak_edges is not None else (n_snr,)
    if tuple(temperatures.shape) != expected:
        raise ValueError(f"temperatures must have shape {expected} (peak groups, SNR bins), got {tuple(temperatures.shape)}")


@torch.library.custom_op("zfast::pz_calibrate", mutates_args=(), device_types="cpu")
def _pz_calibrate_op(logits: torch.Tensor, centres: torch.Tensor, snr: torch.Tensor, snr_edges: torch.Tensor,
                     temperatures: torch.Tensor, peak_edges: Optional[torch.Tensor],
                     peak_width: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check_calibrate(logits, centres, snr, snr_edges, temperatures, peak_edges)
    logits, centres = logits.contiguous(), centres.contiguous()
    batch, n_bins = logits.shape
    plain = torch.empty((batch, n_bins), dtype=torch.float64)
    calibrate = temperatures.numel() > 0
    calibrated = torch.empty((batch if calibrate else 0, n_bins), dtype=torch.float64)
    if batch == 0 or n_bins == 0:
        return plain, calibrated
    if calibrate:
        snr = torch.nan_to_num(snr, nan=0.0).contiguous()
        snr_edges, temperatures = snr_edges.contiguous(), temperatures.contiguous()
        peak_edges = None if peak_edges is None else peak_edges.contiguous()
    pointer = lambda t: 0 if t is None or not calibrate else t.data_ptr()  # noqa: E731
    _native._C.pz_calibrate_cpu(
        logits.data_ptr(), logits.dtype == torch.float64, batch, n_bins, centres.data_ptr(), pointer(snr),
        pointer(snr_edges), snr_edges.numel() if calibrate else 0, pointer(peak_edges),
        0 if peak_edges is None or not calibrate else peak_edges.numel(), pointer(temperatures), float(peak_width),
        plain.data_ptr(), calibrated.data_ptr() if calibrate else 0, torch.get_num_threads(),
    )  # fmt: skip
    return plain, calibrated


@_pz_calibrate_op.register_fake
def _(logits, centres, snr, snr_edges, temperatures, peak_edges, peak_width):
    _check_calibrate(logits, centres, snr, snr_edges, temperatures, peak_edges)
    batch, n_bins = logits.shape
    calibrated_rows = batch if temperatures.numel() > 0 else 0
    return logits.new_empty((batch, n_bins), dtype=torch.float64), logits.new_empty((calibrated_rows, n_bins), dtype=torch.float64)


def pz_calibrate(logits: torch.Tensor, centres: torch.Tensor, snr: Optional[torch.Tensor] = None,
                 snr_edges: Optional[torch.Tensor] = None, temperatures: Optional[torch.Tensor] = None,
                 peak_edges: Optional[torch.Tensor] = None, peak_width: float = 0.01) -> tuple[torch.Tensor, Optional[torch.Tensor]]:  # fmt: skip
    """(softmax(logits) [B, K], softmax(logits / T) [B, K] or None without ``temperatures``), float64.

    Args:
        logits (Tensor[B, K]): float32 or float64, CPU. centres (Tensor[K]): float64 bin centres.
        snr (Tensor[B]): float64 continuum SNR (NaN counts as 0); snr_edges (Tensor[S+1]): its bins.
        temperatures (Tensor[S] or Tensor[G, S]): float64, > 0; [G, S] with ``peak_edges`` [G+1], the bins of the
            plain softmax's share within ±peak_width·(1 + z_peak) of its peak bin's centre.
    A row with a NaN or +inf logit comes back NaN (as the softmax would)."""
    none = torch.empty(0, dtype=torch.float64)
    calibrate = temperatures is not None
    plain, calibrated = _pz_calibrate_op(logits, centres, snr if calibrate else none, snr_edges if calibrate else none,
                                         temperatures if calibrate else none, peak_edges if calibrate else None, peak_width)  # fmt: skip
    return plain, calibrated if calibrate else None


def _check_summarise(probs, mode_probs, edges, n_candidates) -> None:
    _check(probs, "probs", (torch.float64,), 2)
    _check(edges, "bin_edges", (torch.float64,), 1)
    if edges.numel() != probs.shape[1] + 1:
        raise ValueError(f"probs has C = {probs.shape[1]} columns but bin_edges defines {edges.numel() - 1} bins")
    if mode_probs is not None:
        _check(mode_probs, "mode_probs", (torch.float64,), 2)
        if mode_probs.shape != probs.shape:
            raise ValueError(f"mode_probs must have probs' shape {tuple(probs.shape)}, got {tuple(mode_probs.shape)}")
    if n_candidates < 1:
        raise ValueError(f"n (candidates) must be >= 1, got {n_candidates}")


@torch.library.custom_op("zfast::pz_summarise", mutates_args=(), device_types="cpu")
def _pz_summarise_op(probs: torch.Tensor, mode_probs: Optional[torch.Tensor], edges: torch.Tensor, n_candidates: int,
                     half_width: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    _check_summarise(probs, mode_probs, edges, n_candidates)
    probs, edges = probs.contiguous(), edges.contiguous()
    mode_probs = None if mode_probs is None else mode_probs.contiguous()
    batch, n_bins = probs.shape
    summary = torch.empty((batch, len(SUMMARY_FIELDS)), dtype=torch.float64)
    z_cand = torch.empty((batch, n_candidates), dtype=torch.float64)
    p_cand = torch.empty((batch, n_candidates), dtype=torch.float64)
    deltachi2 = torch.empty(batch, dtype=torch.float64)
    flags = torch.zeros(batch, dtype=torch.int8)
    if batch and n_bins:
        _native._C.pz_summarise_cpu(
            probs.data_ptr(), 0 if mode_probs is None else mode_probs.data_ptr(), batch, n_bins, edges.data_ptr(),
            n_candidates, float(half_width), summary.data_ptr(), z_cand.data_ptr(), p_cand.data_ptr(),
            deltachi2.data_ptr(), flags.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
    return summary, z_cand, p_cand, deltachi2, flags


@_pz_summarise_op.register_fake
def _(probs, mode_probs, edges, n_candidates, half_width):
    _check_summarise(probs, mode_probs, edges, n_candidates)
    batch = probs.shape[0]
    f64 = dict(dtype=torch.float64)
    return (probs.new_empty((batch, len(SUMMARY_FIELDS)), **f64), probs.new_empty((batch, n_candidates), **f64),
            probs.new_empty((batch, n_candidates), **f64), probs.new_empty(batch, **f64), probs.new_empty(batch, dtype=torch.int8))  # fmt: skip


class PzPost(NamedTuple):
    """``pz_summarise``'s outputs: ``summary`` [B, 7] (columns ``SUMMARY_FIELDS``), ``z_cand`` / ``p_cand`` [B, n],
    ``deltachi2`` [B], all float64."""

    summary: torch.Tensor
    z_cand: torch.Tensor
    p_cand: torch.Tensor
    deltachi2: torch.Tensor


def pz_summarise(probs: torch.Tensor, edges: torch.Tensor, mode_probs: Optional[torch.Tensor] = None, n: int = 3,
                 half_width: float = 0.01) -> PzPost:  # fmt: skip
    """Summaries and candidates of P(z) ``probs`` [B, K] (float64, CPU, >= 0; rows normalised here) over float64
    ``edges`` [K+1]; z_mode from the peak of ``mode_probs`` (used as given) or of probs. Raises ValueError as
    ``zfast.bins.normalised_probs`` does for non-finite or negative values and rows summing to 0."""
    summary, z_cand, p_cand, deltachi2, flags = _pz_summarise_op(probs, mode_probs, edges, int(n), float(half_width))
    if flags.numel() and bool(flags.any()):
        if bool((flags & BAD_VALUES).any()):
            raise ValueError("probs must be finite and >= 0")
        b = int(torch.nonzero(flags).flatten()[0])
        raise ValueError(f"probs row {b} sums to 0")
    return PzPost(summary, z_cand, p_cand, deltachi2)
