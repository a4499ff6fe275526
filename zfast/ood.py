"""Out-of-distribution scores: how far a spectrum's network activations lie from those of training spectra.

Mahalanobis scores at several depths of the network (Lee et al. 2018). For each layer the network names
(``ood_taps``: the end of each convolutional stage or residual block) the features are the per-channel mean and
standard deviation of its activations over wavelength; the penultimate features (the input of the last Linear
layer) are always added. Each layer's squared Mahalanobis distance from augmented training spectra, divided by the
feature dimension, is scaled by its median on validation spectra; the score is the largest of these ratios, so a
spectrum odd at any depth scores high. Early layers see input statistics (noise, power laws, square waves) that the
penultimate features of a deep network can map close to the training mean.

zfast-train fits the statistics at the end of a run (``fit_ood``) and stores them in the checkpoint; ``flag_ood``
(``zfast.flags``) is raised above the ``OOD_QUANTILE`` of validation spectra's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .ops import channel_stats

OOD_QUANTILE = 0.995  # share of validation spectra below the OOD threshold
OOD_SHRINKAGE = 1e-3  # covariance + 1e-3 · (mean variance) · I: a well-conditioned inverse


@dataclass
class OODStats:
    """The fitted statistics: per layer (in ``ood_features`` order) the training mean [D_l] and the inverse of the
    shrunk covariance [D_l, D_l] (float64), the validation median of the distance (``scales`` [L]), and the
    threshold on the combined score. ``taps`` False: only the penultimate features (one layer, scale 1: what
    checkpoints of layout version 1 written before the per-layer scores hold)."""

    means: list
    precisions: list
    scales: torch.Tensor
    threshold: float
    taps: bool = True

    def to_dict(self) -> dict:
        return {"means": list(self.means), "precisions": list(self.precisions), "scales": self.scales,
                "threshold": float(self.threshold), "taps": bool(self.taps)}  # fmt: skip

    @classmethod
    def from_dict(cls, record: dict) -> "OODStats":
        return cls(list(record["means"]), list(record["precisions"]), torch.as_tensor(record["scales"]),
                   float(record["threshold"]), bool(record.get("taps", True)))  # fmt: skip


def last_linear(network: nn.Module) -> nn.Linear:
    """The network's last ``nn.Linear`` (whose input is the penultimate features)."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the network has no Linear layer to read penultimate features from")
    return linears[-1]


def ood_taps(network: nn.Module) -> list:
    """The modules whose activations the OOD score summarises: ``network.ood_taps()`` (zfast's models), none
    for a network without that method (the penultimate features are always used)."""
    taps = getattr(network, "ood_taps", None)
    return list(taps()) if callable(taps) else []


def channel_statistics(activation: torch.Tensor) -> torch.Tensor:
    """[B, C, L] -> [B, 2C]: each channel's mean and (population) standard deviation over wavelength. On the CPU
    the native op ``zfast.ops.channel_stats`` (sums in double; the torch lines below are its spec and fallback)."""
    a = activation.float()
    if a.dim() == 3 and a.shape[2] > 0 and channel_stats.available(a.device):
        return channel_stats.channel_stats(a)
    mean = a.mean(dim=-1, keepdim=True)
    # Two passes written out: torch.std over rows of 32-256 values is ~6x slower (it was a quarter of predict's time).
    std = (a - mean).square().mean(dim=-1).sqrt()
    return torch.cat([mean[..., 0], std], dim=1)


def ood_features(network: nn.Module, flux: torch.Tensor, taps: bool = True) -> tuple[list, torch.Tensor]:
    """([channel statistics of each of ``ood_taps(network)`` in forward order..., penultimate features [B, D]],
    outputs [B, K]): what the OOD score reads, from one forward pass. Call under ``torch.no_grad()`` in eval mode."""
    captured = []
    modules = ood_taps(network) if taps else []
    handles = [m.register_forward_hook(lambda module, inputs, output: captured.append(channel_statistics(output)))
               for m in modules]  # fmt: skip
    handles.append(last_linear(network).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].flatten(1))))  # fmt: skip
    try:
        output = network(flux)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(modules) + 1:
        raise RuntimeError(f"expected {len(modules) + 1} OOD feature blocks from one forward pass, got {len(captured)}")
    return captured, output


def features_and_outputs(network: nn.Module, flux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features [B, D], outputs [B, K]). Call under ``torch.no_grad()`` in eval mode."""
    layers, output = ood_features(network, flux, taps=False)
    return layers[-1], output


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance / feature dimension, float64 [B]. The precision is made row-major first:
    ``cholesky_inverse`` returns it column-major, and MKL's GEMM with a transposed operand gives last-bit
    differences between thread counts at some batch sizes, which would break byte-identical catalogues between
    one process and several workers (docs/survey.md)."""
    centred = features.double() - mean.to(features.device)
    return ((centred @ precision.to(features.device).contiguous()) * centred).sum(dim=1) / mean.numel()


def fit_gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], inverse of the shrunk covariance [D, D]) of features [N, D], float64 on the CPU."""
    f = features.double().cpu()
    mean = f.mean(dim=0)
    centred = f - mean
    covariance = centred.T @ centred / max(1, f.shape[0] - 1)
    dim = covariance.shape[0]
    covariance += OOD_SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12) * torch.eye(dim, dtype=torch.float64)
    return mean, torch.cholesky_inverse(torch.linalg.cholesky(covariance))


def _layers(features) -> list:
    return [features] if torch.is_tensor(features) else list(features)


def fit_ood(train_features, val_features) -> OODStats:
    """``OODStats`` from ``ood_features`` of training spectra (lists of [N, D_l], or one tensor) for the means and
    covariances and of validation spectra for each layer's scale and the threshold (their ``OOD_QUANTILE``)."""
    train_layers, val_layers = _layers(train_features), _layers(val_features)
    if len(train_layers) != len(val_layers):
        raise ValueError(f"{len(train_layers)} training feature blocks but {len(val_layers)} validation ones")
    means, precisions, scales = [], [], []
    for train_layer, val_layer in zip(train_layers, val_layers):
        mean, precision = fit_gaussian(train_layer)
        means.append(mean)
        precisions.append(precision)
        scales.append(mahalanobis(val_layer.cpu(), mean, precision).median().clamp_min(1e-12))
    stats = OODStats(means, precisions, torch.stack(scales), 0.0)
    stats.threshold = float(torch.quantile(ood_scores(val_layers, stats), OOD_QUANTILE))
    return stats


def ood_scores(features, stats: OODStats) -> torch.Tensor:
    """The OOD score, float64 [B]: the largest over layers of (squared Mahalanobis distance / dimension) / the
    layer's validation median. ``features``: ``ood_features``' list (or one tensor: the penultimate features)."""
    layers = _layers(features)
    if not stats.taps:
        layers = layers[-1:]
    if len(layers) != len(stats.means):
        raise ValueError(f"the checkpoint's OOD statistics cover {len(stats.means)} layers, the network gave {len(layers)}")
    per_layer = [mahalanobis(f, m, p) / float(s) for f, m, p, s in zip(layers, stats.means, stats.precisions, stats.scales)]
    return torch.stack(per_layer).amax(dim=0)
