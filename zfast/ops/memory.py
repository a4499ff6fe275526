"""A size check before large allocations: a request that cannot fit fails at once with the sizes, before any
input is copied or any work is done (rather than after gigabytes of copies, or as an allocator's RuntimeError)."""

from __future__ import annotations

import os

import torch


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device`` in bytes: the GPU's, or the machine's physical memory for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no check
        return 1 << 62


def check_fits(n_bytes: int, device, what: str, advice: str) -> None:
    """Raise ValueError naming ``what`` when ``n_bytes`` exceed ``device``'s memory."""
    available = device_memory_bytes(device)
    if n_bytes > available:
        raise ValueError(f"{what} needs {n_bytes / 1e9:.3g} GB, more than the {available / 1e9:.3g} GB of "
                         f"{torch.device(device)}: {advice}")  # fmt: skip
