"""The one device picker: "auto" (or None) is the first CUDA GPU when there is one, else the CPU."""

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
