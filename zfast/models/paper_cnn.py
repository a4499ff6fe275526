"""The paper's reference CNN (Stivaktakis et al. 2020): flux [B, M] -> [B, n_outputs]."""

from __future__ import annotations

import torch
from torch import nn


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
