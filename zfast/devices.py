"""The one device picker: "auto" (or None) is the first CUDA GPU when there is one, else the CPU."""

from __future__ import annotations

from typing import Union

import torch


def pick_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """``torch.device`` of ``name``: "auto"/None → CUDA if available, else CPU; otherwise as torch reads it."""
    if name is None or (isinstance(name, str) and name == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from error
