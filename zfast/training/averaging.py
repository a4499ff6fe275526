"""An exponential moving average of a network's weights and BatchNorm statistics (``--ema``), the network that a
run validates, checkpoints (as ``model``) and predicts with when it is on.

Why: the last steps of a one-cycle schedule still move the weights by the noise of each batch; their average sits
nearer the middle of the valley the steps wander in, which tends to generalise better for free (one lerp per
tensor a step). Measured in docs/real_galaxies.md.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """``module``: a copy of ``model`` whose floating-point parameters and buffers follow
    a <- a + (1 - d)(p - a) after every ``update``, with d = min(``decay``, (1 + n) / (10 + n)) at the n-th update
    (early updates weigh more: the average does not stay near the initial weights); integer buffers (BatchNorm's
    num_batches_tracked) are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    def _pairs(self, model: torch.nn.Module):
        mine = list(self.module.parameters()) + list(self.module.buffers())
        theirs = list(model.parameters()) + list(model.buffers())
        if len(mine) != len(theirs):
            raise ValueError("the averaged network and the trained one differ in structure")
        return zip(mine, theirs)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for a, p in self._pairs(model):
            if a.is_floating_point():
                a.lerp_(p.detach(), 1.0 - d)
            else:
                a.copy_(p)
        self.updates += 1
