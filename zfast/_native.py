"""Loading of the native module ``zfast._C`` and the one place that decides which backend runs an op."""

from __future__ import annotations

import functools

import torch

try:  # the extension is optional: without it every op runs its pure-PyTorch reference
    from . import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: Exception | None = None
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    _C = None
    _IMPORT_ERROR = error


@functools.lru_cache(maxsize=1)
def _cuda_device_count() -> int:
    if _C is None or not _C.built_with_cuda:
        return 0
    return int(_C.cuda_device_count())


def native_available() -> dict:
    """What the native extension provides on this machine.

    Returns:
        dict with ``cpu`` (bool: the C++ kernels were built and import), ``cuda`` (bool: the CUDA kernels
        were built *and* a CUDA device is usable), ``cuda_built`` (bool: the CUDA kernels were compiled,
        whether or not a GPU is present) and ``error`` (str or None: why the extension failed to import).
    """
    return {
        "cpu": _C is not None,
        "cuda": _cuda_device_count() > 0,
        "cuda_built": bool(_C is not None and _C.built_with_cuda),
        "error": None if _IMPORT_ERROR is None else str(_IMPORT_ERROR),
    }


def native_backend(device: torch.device) -> str | None:
    """``"cpu"`` or ``"cuda"`` when a native kernel can run on ``device``; None means: use the reference."""
    if _C is None:
        return None
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda" and _cuda_device_count() > 0:
        return "cuda"
    return None


def cuda_stream_handle(device: torch.device) -> int:
    """torch's current stream on ``device`` as an integer, for our (separate, static) CUDA runtime."""
    return int(torch.cuda.current_stream(device).cuda_stream)


def launch(kernel: str, device: torch.device, *args) -> None:
    """Run the native kernel ``kernel`` on ``device``: ``_C.<kernel>_cpu(*args, threads)`` with torch's thread
    count, or ``_C.<kernel>_cuda(*args, device index, stream)`` on torch's current stream. The caller has
    checked ``native_backend(device)`` and validated every pointer in ``args``."""
    if device.type == "cpu":
        getattr(_C, f"{kernel}_cpu")(*args, torch.get_num_threads())
    else:
        getattr(_C, f"{kernel}_cuda")(*args, device.index, cuda_stream_handle(device))
