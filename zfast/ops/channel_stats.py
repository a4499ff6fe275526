"""channel_stats: each channel's mean and population standard deviation over wavelength of an activation
[B, C, L], the OOD score's summary of a network layer (``zfast.ood.channel_statistics`` is the spec and the
fallback off the CPU).

Why native: the spec's two passes over the quick preset's nine tapped activations (4M floats each per batch of
1,024, in channels-last memory) cost ~17 ms per batch, ~10 % of zfast-predict's time on an AVX-512 Xeon
(docs/survey.md); one sample's block stays in L1 between the native op's two passes. Sums are in double (the
spec's in float32): they agree to ~1e-7 relative.
"""

from __future__ import annotations

import torch

from .. import _native


def available(device: torch.device) -> bool:
    """Whether the native op runs on ``device`` (the CPU, with the extension built)."""
    return _native.native_backend(torch.device(device)) == "cpu" and hasattr(_native._C, "channel_stats_cpu")


def _check(activation: torch.Tensor) -> None:
    if not isinstance(activation, torch.Tensor):
        raise TypeError(f"activation must be a torch.Tensor, got {type(activation).__name__}")
    if activation.device.type != "cpu" or activation.dtype != torch.float32 or activation.dim() != 3:
        raise ValueError(f"activation must be a float32 [B, C, L] CPU tensor, got {activation.dtype} "
                         f"{tuple(activation.shape)} on {activation.device}")  # fmt: skip
    if activation.shape[2] == 0:
        raise ValueError("activation has L = 0: no statistics over wavelength")


@torch.library.custom_op("zfast::channel_stats", mutates_args=(), device_types="cpu")
def _channel_stats_op(activation: torch.Tensor) -> torch.Tensor:
    _check(activation)
    batch, channels, length = activation.shape
    if not (activation.stride(1) == 1 or activation.stride(2) == 1):
        activation = activation.contiguous()
    out = torch.empty((batch, 2 * channels), dtype=torch.float32)
    if batch and channels:
        _native._C.channel_stats_cpu(activation.data_ptr(), batch, channels, length, *activation.stride(), out.data_ptr(),
                                     torch.get_num_threads())  # fmt: skip
    return out


@_channel_stats_op.register_fake
def _(activation):
    _check(activation)
    return activation.new_empty((activation.shape[0], 2 * activation.shape[1]))


def channel_stats(activation: torch.Tensor) -> torch.Tensor:
    """[B, C, L] float32 (CPU, any strides) -> [B, 2C] float32: the C channel means over L, then the C population
    standard deviations."""
    return _channel_stats_op(activation)
