"""Large CPU tensors in memory backed by transparent huge pages (Linux), for the library's random row reads.

The redshift kernel reads a few KB from each of B random rows of a library of hundreds of MB: with 4 KB pages
every row costs two or three TLB misses and page walks; huge pages cut most of them (docs/kernels.md has the
timings). Linux's default THP mode ("madvise") gives huge pages only to memory advised so before it is first touched, hence a fresh copy.
"""

from __future__ import annotations

import ctypes
import sys

import torch

HUGE_PAGE = 2 << 20  # x86-64 and arm64 (4 KB base pages) transparent huge page size
MIN_BYTES = 8 * HUGE_PAGE  # below this, not worth a copy
MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux


def _madvise():
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise() if sys.platform.startswith("linux") else None


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``tensor`` whose 2 MB-aligned interior was advised ``MADV_HUGEPAGE`` before being
    written, or ``tensor`` itself when that does not apply (not on the CPU, smaller than ``MIN_BYTES``, not
    Linux). The values are the same either way; only where the kernel finds them changes. If the advice is
    refused (THP off), the copy is plain memory."""
    if _MADVISE is None or tensor.device.type != "cpu" or tensor.numel() * tensor.element_size() < MIN_BYTES:
        return tensor
    copy = torch.empty(tensor.shape, dtype=tensor.dtype)  # a fresh block: its pages are not touched yet
    begin = copy.data_ptr()
    end = begin + copy.numel() * copy.element_size()
    first = -(-begin // HUGE_PAGE) * HUGE_PAGE
    last = end // HUGE_PAGE * HUGE_PAGE
    if last > first:
        _MADVISE(first, last - first, MADV_HUGEPAGE)  # best effort: the result does not change the values
    copy.copy_(tensor)
    return copy
