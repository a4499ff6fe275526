"""The one device picker: "auto" (or None) is the first CUDA GPU when there is one, else the CPU; and inference
results independent of the CPU thread count (``serial_linear_layers``)."""

from __future__ import annotations

from typing import Union

import torch


def pick_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """``torch.device`` of ``name``: "auto"/None → CUDA if available, else CPU; otherwise as torch reads it.
    ValueError, naming the device, for a name torch does not know or a GPU this machine does not have."""
    if name is None or (isinstance(name, str) and name == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is usable here (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type not in ("cpu", "mps", "xpu", "meta"):
        raise ValueError(f"device {name!r}: not a device zfast runs on (auto, cpu, cuda, cuda:N)")
    return device



M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_FREED = 1 << 30  # bytes of freed heap glibc may keep before giving memory back
MMAP_ABOVE = 32 << 20  # allocations from this size up are mmap'ed (glibc's largest dynamic threshold)


def steady_allocator() -> bool:
    """Let glibc keep freed memory for the next batch instead of returning it to the system and faulting it back
    in: inference allocates and frees the same ~100 MB of activations per batch. Measured on 2 CPU cores: the
    quick preset's forward pass 439 -> 289 ms per 1,024 spectra; in a Dask worker (whose nanny sets
    MALLOC_TRIM_THRESHOLD_=65536) zfast-predict ran at half the speed without it (docs/survey.md). Costs up to
    KEEP_FREED bytes of resident memory per process. True where applied (Linux with glibc), else False."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


def serial_linear_layers(network: torch.nn.Module) -> torch.nn.Module:
    """Run each ``nn.Linear`` of ``network`` on one CPU thread (forward hooks; convolutions keep every thread).
    MKL's GEMM gives last-bit different results on 1 and on 2 threads: on an AMD EPYC only at 5-7 and 9-11 rows, on
    an Intel AVX-512 Xeon also for full batches (the quick preset's 2,048-feature head at 40-1,024 rows), so without
    this a catalogue written by one process could differ from one written by Dask workers with fewer threads each;
    the other layers measured thread-independent (docs/survey.md). It costs ~7 % of the quick preset's forward pass
    (289 -> 310 ms per 1,024 on the EPYC). Returns ``network``."""

    saved: list = []  # the thread count to restore, pushed by before() and popped by after()

    def before(module, inputs):
        x = inputs[0] if inputs else None
        threads = torch.get_num_threads()
        serial = isinstance(x, torch.Tensor) and x.device.type == "cpu" and 1 < threads
        saved.append(threads if serial else None)
        if serial:
            torch.set_num_threads(1)

    def after(module, inputs, output):
        threads = saved.pop() if saved else None
        if threads is not None:
            torch.set_num_threads(threads)

    for module in network.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after, always_call=True)
    return network
