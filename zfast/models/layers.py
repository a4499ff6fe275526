"""Building blocks shared by the residual networks: channels-last Conv1d / BatchNorm1d for the CPU, and the
residual block.
"""

from __future__ import annotations

import torch
from torch import nn


def _as_nhwc(x: torch.Tensor) -> torch.Tensor:
    """[B, C, L] -> [B, C, 1, L] in channels-last memory (a view when ``x`` came out of one of these layers)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class Conv1dNHWC(nn.Conv1d):
    """``nn.Conv1d`` (same parameters, same state dict, same maths) computed on the CPU as a 2-D convolution over
    [B, C, 1, L] in channels-last memory, the layout oneDNN's CPU kernels are fastest in for these short, narrow
    convolutions (docs/performance.md has the per-layer timings). The output is a [B, C, L] view of that memory,
    which the next layer of this kind reads without a copy. Other devices run ``nn.Conv1d`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        y = nn.functional.conv2d(_as_nhwc(x), self.weight.unsqueeze(2), self.bias, (1, self.stride[0]),
                                 (0, self.padding[0]), (1, self.dilation[0]), self.groups)  # fmt: skip
        return y.squeeze(2)


class BatchNorm1dNHWC(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same state dict) that normalises Conv1dNHWC's channels-last output in place of layout
    (as [B, C, 1, L], where the CPU kernel has a channels-last path), returning a [B, C, L] view again."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 3:
            return super().forward(x)
        return super().forward(_as_nhwc(x)).squeeze(2)


# The residual networks' activations by name: SiLU (the default, smooth) or hardswish (x·relu6(x + 3)/6, a
# piecewise-quadratic SiLU without exp: ~4x cheaper forward + backward on AVX2 CPUs, docs/performance.md).
ACTIVATIONS = {"silu": nn.SiLU, "hardswish": nn.Hardswish}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module of ``ACTIVATIONS``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ResidualBlock1D(nn.Module):
    """Conv-BN-act-Conv-BN plus a (strided 1x1 when the shape changes) shortcut, then act (``activation``: SiLU by
    default, ``ACTIVATIONS``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str = "silu"):
        super().__init__()
        self.body = nn.Sequential(
            Conv1dNHWC(in_channels, out_channels, 5, stride=stride, padding=2, bias=False),
            BatchNorm1dNHWC(out_channels),
            activation_layer(activation),
            Conv1dNHWC(out_channels, out_channels, 5, padding=2, bias=False),
            BatchNorm1dNHWC(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(Conv1dNHWC(in_channels, out_channels, 1, stride=stride, bias=False), BatchNorm1dNHWC(out_channels))
        )
        self.activation = activation_layer(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """Fold every BatchNorm1d that directly follows a Conv1d in an ``nn.Sequential`` into that convolution, for
    inference: conv(x)·s + (β - μ·s) with s = γ/√(σ² + ε) from the running statistics is one convolution with
    weights W·s and bias (b - μ)·s + β (computed in float64, stored in the conv's dtype), and the BatchNorm becomes
    ``nn.Identity``. What the network computes is unchanged up to float32 rounding (~1e-6 relative); the pass over
    memory the BatchNorm made is gone (~10 % of the quick preset's forward pass on the CPU, docs/survey.md).

    Only for a network in eval mode that will not be trained again (its BatchNorms are removed); ``load_model``
    applies it. Conv → ReLU → pool → BatchNorm (PaperCNN) is left as it is: the BatchNorm does not follow the conv.
    Returns ``network``, changed in place."""
    if network.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (it folds the running statistics)")
    for sequence in [m for m in network.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if not (isinstance(conv, nn.Conv1d) and isinstance(norm, nn.BatchNorm1d) and norm.running_mean is not None
                    and norm.running_var is not None and conv.out_channels == norm.num_features):  # fmt: skip
                continue
            with torch.no_grad():
                scale = (norm.running_var.double() + norm.eps).rsqrt()
                if norm.weight is not None:
                    scale = scale * norm.weight.double()
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                shift = (bias - norm.running_mean.double()) * scale
                if norm.bias is not None:
                    shift = shift + norm.bias.double()
                conv.weight.copy_((conv.weight.double() * scale[:, None, None]).to(conv.weight.dtype))
                conv.bias = nn.Parameter(shift.to(dtype=conv.weight.dtype, device=conv.weight.device), requires_grad=False)
            sequence[i + 1] = nn.Identity()
    return network
