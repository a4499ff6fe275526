"""Input validation shared by the ops: messages name the argument, what was expected and what was received."""

from __future__ import annotations

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def as_grid(values, name: str, device: torch.device) -> torch.Tensor:
    """A 1-D wavelength grid as a float64 tensor on ``device``.

    Array-likes (numpy, lists) are converted and moved; a tensor on another device is an error (moving it
    silently would hide a host/device mix-up in the caller).
    """
    if isinstance(values, torch.Tensor):
        if values.device != device:
            raise ValueError(f"{name} is on {values.device} but the data are on {device}; move it with .to({str(device)!r})")
        if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {values.dtype}")
        grid = values.to(torch.float64)
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be real numbers, got numpy dtype {array.dtype}")
        grid = torch.as_tensor(array, dtype=torch.float64, device=device)
    if grid.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(grid.shape)}")
    return grid


def check_increasing(grid: torch.Tensor, name: str, *, min_length: int = 2, positive: bool = False) -> None:
    """Raise unless ``grid`` is finite, strictly increasing, long enough (and > 0 if ``positive``)."""
    if grid.numel() < min_length:
        raise ValueError(f"{name} needs at least {min_length} values, got {grid.numel()}")
    finite = torch.isfinite(grid)
    steps = grid[1:] - grid[:-1]
    # One host sync for all three conditions.
    n_bad, n_unsorted, minimum = torch.stack(
        [(~finite).sum().double(), (steps <= 0).sum().double(), grid.min()]
    ).tolist()
    if n_bad:
        where = torch.nonzero(~finite).flatten()[:5].tolist()
        raise ValueError(f"{name} has {int(n_bad)} non-finite values (first at indices {where})")
    if n_unsorted:
        first = int(torch.nonzero(steps <= 0).flatten()[0])
        raise ValueError(
            f"{name} must be strictly increasing; {name}[{first + 1}] = {grid[first + 1].item():.10g} "
            f"is not above {name}[{first}] = {grid[first].item():.10g} ({int(n_unsorted)} such steps)"
        )
    if positive and minimum <= 0:
        raise ValueError(f"{name} must be positive (wavelengths in Å), got minimum {minimum:.6g}")


def check_edges(edges: torch.Tensor, name: str) -> None:
    """Raise unless the pixel edges made from the centres ``name`` are finite with finite, positive widths (centres
    a float64 limit apart, or so close that neighbouring midpoints round together, are not pixels)."""
    widths = edges[1:] - edges[:-1]
    if not bool(torch.isfinite(edges).all() & torch.isfinite(widths).all() & (widths > 0).all()):
        raise ValueError(f"{name}: its pixel edges (midpoints between centres, the outer two mirrored) are not finite and "
                         "strictly increasing: centres a float64 limit apart, or too close to each other")  # fmt: skip


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise naming the first rows (leading index) that hold NaN or inf."""
    bad = ~torch.isfinite(tensor)
    if tensor.dim() >= 2:
        bad_rows = bad.reshape(-1, tensor.shape[-1]).any(dim=1)
        if bool(bad_rows.any()):
            rows = torch.nonzero(bad_rows).flatten()
            raise ValueError(
                f"{name} has non-finite values (NaN/inf) in {rows.numel()} spectra, "
                f"first rows (flattened leading dims): {rows[:10].tolist()}"
            )
    elif bool(bad.any()):
        where = torch.nonzero(bad).flatten()[:10].tolist()
        raise ValueError(f"{name} has non-finite values (NaN/inf) at indices {where}")
