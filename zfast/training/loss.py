"""The training loss of each estimator (``zfast.training.config`` explains the three), plus the outside output's."""

from __future__ import annotations

import torch
from torch.nn import functional

from ..bins import soft_labels, z_to_bin, z_to_target
from ..models import split_outside
from ..ops.jsd_entropy import jsd_entropy
from .config import TrainConfig


def distribution_schedule(c: TrainConfig, step: int) -> tuple[float, float]:
    """(soft-label σ in z, entropy weight) at ``step``: wide labels and JS alone first, then geometric narrowing
    of σ and a linear ramp of λ_ent over ``schedule_fraction`` of the steps."""
    progress = min(1.0, step / max(1.0, c.schedule_fraction * c.steps))
    width = (c.z_max - c.z_min) / c.n_bins
    sigma = c.label_sigma_bins * width * c.label_start_factor ** (1.0 - progress)
    return sigma, c.lambda_ent * progress


def estimator_loss(c: TrainConfig, output: torch.Tensor, z: torch.Tensor, edges: torch.Tensor, step: int) -> torch.Tensor:
    """The estimator's loss of outputs [B, K] against redshifts z [B] in range, at ``step``."""
    if c.estimator == "regression":
        return functional.mse_loss(output[:, 0], z_to_target(z, edges).to(output.dtype))
    if c.estimator == "classification":
        return functional.cross_entropy(output, z_to_bin(z, edges))
    sigma, lambda_ent = distribution_schedule(c, step)
    target = soft_labels(z, edges, sigma).to(output.dtype)
    loss = jsd_entropy(output, target, c.lambda_js, lambda_ent)
    if c.lambda_ce:
        loss = loss + c.lambda_ce * functional.cross_entropy(output, z_to_bin(z, edges))
    return loss


def training_loss(c: TrainConfig, output: torch.Tensor, z: torch.Tensor, edges: torch.Tensor, step: int,
                  n_beyond: int = 0) -> torch.Tensor:  # fmt: skip
    """The estimator's loss on the first B - ``n_beyond`` rows of ``output`` (z [B - n_beyond] in range) plus,
    with an outside output, ``outside_weight`` x the binary cross-entropy of its logit against "row is one of the
    last n_beyond"."""
    output, outside = split_outside(output, c.outside_prob > 0)
    inside = output.shape[0] - n_beyond
    loss = estimator_loss(c, output[:inside], z, edges, step)
    if outside is not None:
        target = (torch.arange(outside.shape[0], device=outside.device) >= inside).to(outside.dtype)
        loss = loss + c.outside_weight * functional.binary_cross_entropy_with_logits(outside, target)
    return loss
