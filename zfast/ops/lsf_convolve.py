"""lsf_convolve: spectra [B, M] convolved with an instrument's line-spread kernel [2h + 1], edge pixels replicated
outwards, optionally with the squares of the result (``zfast.data.instrument.Instrument.convolve_lsf``'s torch
lines are the spec, the tests' oracle and the fallback off the CPU).

Its row maths (``csrc/lsf_convolve/lsf_convolve.h``) is what the template fit's rendering
(``zfast.ops.redshift_resample.render_templates``) runs on each row while it is in L1; alone, on rows already in
memory, it is memory-bound (4.6 against torch's 5.9 ms for [7,200, 512] float32 with squares, docs/kernels.md),
so zfast calls the fused rendering, and these ops are that maths' tested entry (any kernel, odd sizes). The two
agree with torch's convolution to a few float32 ulps (a different summation order than oneDNN's).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _native


def available(device: torch.device) -> bool:
    """Whether the native op runs on ``device`` (the CPU, with the extension built)."""
    return _native.native_backend(torch.device(device)) == "cpu" and hasattr(_native._C, "lsf_convolve_cpu")


def _check(x: torch.Tensor, kernel: torch.Tensor) -> None:
    for name, tensor in (("x", x), ("kernel", kernel)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must be a float32 or float64 CPU tensor, got {tensor.dtype} on {tensor.device}")
    if x.dim() != 2:
        raise ValueError(f"x must be [B, M], got shape {tuple(x.shape)}")
    if kernel.dim() != 1 or kernel.numel() % 2 != 1:
        raise ValueError(f"kernel must be [2h + 1] (odd length), got shape {tuple(kernel.shape)}")
    if kernel.dtype != x.dtype:
        raise ValueError(f"kernel must have x's dtype {x.dtype}, got {kernel.dtype}")


def _launch(x: torch.Tensor, kernel: torch.Tensor, square: Optional[torch.Tensor]) -> torch.Tensor:
    x, kernel = x.contiguous(), kernel.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        _native._C.lsf_convolve_cpu(x.data_ptr(), kernel.data_ptr(), x.shape[0], x.shape[1], (kernel.numel() - 1) // 2,
                                    x.dtype == torch.float64, out.data_ptr(), 0 if square is None else square.data_ptr(),
                                    torch.get_num_threads())  # fmt: skip
    return out


@torch.library.custom_op("zfast::lsf_convolve", mutates_args=(), device_types="cpu")
def _lsf_convolve_op(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    _check(x, kernel)
    return _launch(x, kernel, None)


@_lsf_convolve_op.register_fake
def _(x, kernel):
    _check(x, kernel)
    return torch.empty_like(x)


@torch.library.custom_op("zfast::lsf_convolve_square", mutates_args=(), device_types="cpu")
def _lsf_convolve_square_op(x: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, kernel)
    square = torch.empty(x.shape, dtype=x.dtype)
    return _launch(x, kernel, square), square


@_lsf_convolve_square_op.register_fake
def _(x, kernel):
    _check(x, kernel)
    return torch.empty_like(x), torch.empty_like(x)


def lsf_convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[B, M] (float32/float64, CPU) convolved with ``kernel`` [2h + 1] (same dtype; the LSF over pixel offsets
    -h..h, ``Instrument.lsf_kernel``), edge pixels replicated outwards: out[j] = Σ_d x[clamp(j + d)]·kernel[h - d]."""
    _check(x, kernel)
    return _lsf_convolve_op(x, kernel)


def lsf_convolve_square(x: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``lsf_convolve(x, kernel)``, its square), in one pass."""
    _check(x, kernel)
    return _lsf_convolve_square_op(x, kernel)
