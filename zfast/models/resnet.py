"""ResNet1D, the residual 1D CNN on the instrument's pixels, and its wide variant: flux [B, M] -> [B, n_outputs]."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ACTIVATIONS, BatchNorm1dNHWC, Conv1dNHWC, ResidualBlock1D, activation_layer


class ResNet1D(nn.Module):
    """A residual 1D CNN, the stronger default: a stem, then stages of two residual blocks, each stage halving
    the length and widening the channels, then Flatten -> Linear 256 -> SiLU -> Dropout -> Linear ``n_outputs``.

    Why strided downsampling and a flattened (position-aware) head rather than global pooling: the redshift is
    *where* the features sit on the wavelength axis. Global pooling is translation invariant and would throw that
    away; flattening a short, wide feature map keeps it, at a head of (channels x M/32) x 256 weights.
    SiLU and BatchNorm train stably from scratch; residual shortcuts let the 9 conv layers train as fast as 3.
    Sized for CPU training: channels (16, 32, 64, 64) by default, 0.91 M parameters for 512 pixels (the
    paper's CNN: 0.93 M).

    Args:
        n_pixels (int): length M of the input. n_outputs (int): width of the head.
        channels (tuple): widths of the stem and the stages. dropout (float): before the last layer.
        activation (str): "silu" (default) or "hardswish" (``zfast.models.layers.ACTIVATIONS``).
    """

    def __init__(self, n_pixels: int, n_outputs: int, channels: tuple = (16, 32, 64, 64), dropout: float = 0.2,
                 activation: str = "silu"):  # fmt: skip
        super().__init__()
        stem, *stages = channels
        layers = [Conv1dNHWC(1, stem, 7, stride=2, padding=3, bias=False), BatchNorm1dNHWC(stem), activation_layer(activation)]
        length, width = (n_pixels + 1) // 2, stem
        for out in stages:
            layers += [ResidualBlock1D(width, out, stride=2, activation=activation), ResidualBlock1D(out, out, stride=1, activation=activation)]
            length, width = (length + 1) // 2, out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * length, 256), activation_layer(activation), nn.Dropout(dropout), nn.Linear(256, n_outputs)
        )

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(flux if flux.dim() == 3 else flux[:, None, :]))

    def ood_taps(self) -> list:
        """The stem's activation and every residual block, whose activations the OOD score summarises."""
        return [m for m in self.features if isinstance(m, (*ACTIVATIONS.values(), ResidualBlock1D))]


def resnet1d_wide(n_pixels: int, n_outputs: int, activation: str = "silu") -> ResNet1D:
    """ResNet1D with twice the channels, (32, 64, 128, 128): 1.97 M parameters for 512 pixels and 800 bins,
    about 3x the compute per training step of the default."""
    return ResNet1D(n_pixels, n_outputs, channels=(32, 64, 128, 128), activation=activation)
