"""Networks that read a normalised spectrum [B, M] and predict z: the paper's CNN and a residual 1D CNN.

Both end in a linear head whose width depends on the estimator (``head_size``): 1 output for regression (a
scaled z, see ``zfast.z_to_target``), k logits for classification or a distribution over k redshift bins.
"""

from __future__ import annotations

import torch
from torch import nn

ESTIMATORS = ("regression", "classification", "distribution")


def head_size(estimator: str, n_bins: int) -> int:
    """Outputs of the final layer: 1 for regression, ``n_bins`` logits otherwise."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return 1 if estimator == "regression" else n_bins


class PaperCNN(nn.Module):
    """The authors' reference network (Stivaktakis et al. 2020):
    3 x [Conv1d(16 filters, kernel 8, same padding) -> ReLU -> MaxPool(3, stride 2) -> BatchNorm]
    -> Flatten -> Dropout 0.5 -> Linear 512 -> ReLU -> Dropout 0.5 -> Linear ``n_outputs``.

    Args:
        n_pixels (int): length M of the input spectra. n_outputs (int): width of the head.
    Input flux [B, M] (or [B, 1, M]); output [B, n_outputs].
    """

    def __init__(self, n_pixels: int, n_outputs: int):
        super().__init__()
        layers, channels, length = [], 1, n_pixels
        for _ in range(3):
            # Keras' "same" for an even kernel pads 3 before and 4 after (explicit: no hidden copy in PyTorch).
            layers += [nn.ConstantPad1d((3, 4), 0.0), nn.Conv1d(channels, 16, 8), nn.ReLU(), nn.MaxPool1d(3, 2),
                       nn.BatchNorm1d(16)]  # fmt: skip
            channels, length = 16, (length - 3) // 2 + 1
        if length < 1:
            raise ValueError(f"n_pixels = {n_pixels} is too short for three poolings")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(16 * length, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, n_outputs)
        )

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(flux if flux.dim() == 3 else flux[:, None, :]))

    def ood_taps(self) -> list:
        """The end of each stage (its BatchNorm), whose activations the OOD score summarises."""
        return [m for m in self.features if isinstance(m, nn.BatchNorm1d)]


class ResidualBlock1D(nn.Module):
    """Conv-BN-SiLU-Conv-BN plus a (strided 1x1 when the shape changes) shortcut, then SiLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, 5, stride=stride, padding=2, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.SiLU(),
            nn.Conv1d(out_channels, out_channels, 5, padding=2, bias=False),
            nn.BatchNorm1d(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm1d(out_channels))
        )
        self.activation = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


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
    """

    def __init__(self, n_pixels: int, n_outputs: int, channels: tuple = (16, 32, 64, 64), dropout: float = 0.2):
        super().__init__()
        stem, *stages = channels
        layers = [nn.Conv1d(1, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm1d(stem), nn.SiLU()]
        length, width = (n_pixels + 1) // 2, stem
        for out in stages:
            layers += [ResidualBlock1D(width, out, stride=2), ResidualBlock1D(out, out, stride=1)]
            length, width = (length + 1) // 2, out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * length, 256), nn.SiLU(), nn.Dropout(dropout), nn.Linear(256, n_outputs)
        )

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(flux if flux.dim() == 3 else flux[:, None, :]))

    def ood_taps(self) -> list:
        """The stem's activation and every residual block, whose activations the OOD score summarises."""
        return [m for m in self.features if isinstance(m, (nn.SiLU, ResidualBlock1D))]


def resnet1d_wide(n_pixels: int, n_outputs: int) -> ResNet1D:
    """ResNet1D with twice the channels, (32, 64, 128, 128): 1.97 M parameters for 512 pixels and 800 bins,
    ~3x the compute per step of the default (measured on 2 CPU cores: 0.51 vs 0.17 s per step of 256)."""
    return ResNet1D(n_pixels, n_outputs, channels=(32, 64, 128, 128))


MODELS = {"paper-cnn": PaperCNN, "resnet1d": ResNet1D, "resnet1d-wide": resnet1d_wide}


def build_model(name: str, n_pixels: int, estimator: str, n_bins: int, outside: bool = False) -> nn.Module:
    """``MODELS[name](n_pixels, head_size(estimator, n_bins) + outside)``: with ``outside``, one more output last,
    the logit of "this galaxy's z is outside the trained range" (zfast-train ``--outside-prob``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](n_pixels, head_size(estimator, n_bins) + int(bool(outside)))


def split_outside(output: torch.Tensor, outside: bool) -> tuple:
    """(the estimator's outputs [B, K], the "outside the trained range" logit [B] or None) of a network built
    with ``build_model(..., outside)``: that logit is the last output."""
    return (output[:, :-1], output[:, -1]) if outside else (output, None)


__all__ = ["ESTIMATORS", "MODELS", "PaperCNN", "ResNet1D", "build_model", "head_size", "split_outside"]
