"""Networks that read a normalised spectrum [B, M] and predict z: the paper's CNN and a residual 1D CNN.

Both end in a linear head whose width depends on the estimator (``head_size``): 1 output for regression (a
scaled z, see ``zfast.z_to_target``), k logits for classification or a distribution over k redshift bins.
"""

from __future__ import annotations

import math

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


class ResidualBlock1D(nn.Module):
    """Conv-BN-SiLU-Conv-BN plus a (strided 1x1 when the shape changes) shortcut, then SiLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            Conv1dNHWC(in_channels, out_channels, 5, stride=stride, padding=2, bias=False),
            BatchNorm1dNHWC(out_channels),
            nn.SiLU(),
            Conv1dNHWC(out_channels, out_channels, 5, padding=2, bias=False),
            BatchNorm1dNHWC(out_channels),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(Conv1dNHWC(in_channels, out_channels, 1, stride=stride, bias=False), BatchNorm1dNHWC(out_channels))
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
        layers = [Conv1dNHWC(1, stem, 7, stride=2, padding=3, bias=False), BatchNorm1dNHWC(stem), nn.SiLU()]
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


class LogGridResNet1D(ResNet1D):
    """ResNet1D reading its input resampled (flux-conserving, a fixed linear map) onto a log-uniform wavelength
    grid over the same range, so that a redshift is a pure shift of the spectrum.

    Why: on the instrument's linear grid the spacing of a line pattern ([NII]-Hα-[NII], the [OIII] doublet, the
    [SII] pair) grows with (1 + z) by 40 % over 1 <= z < 1.8, so each convolution filter has to be learned at
    every scale; on a log grid one filter fits every z. The log grid has ``n_log`` pixels (default: as many as
    keep the instrument's finest sampling in ln λ, i.e. its reddest pixel), so no resolution is lost.

    Args:
        n_pixels (int): instrument pixels. n_outputs (int): head width.
        wave_edges (Tensor[n_pixels + 1]): the instrument's pixel edges in Å, increasing.
        n_log (int or None): pixels of the log grid.
    """

    def __init__(self, n_pixels: int, n_outputs: int, wave_edges: torch.Tensor, n_log: int | None = None, **kwargs):
        from ..ops.rebin import rebin_edges_reference

        edges = torch.as_tensor(wave_edges, dtype=torch.float64).cpu()
        if edges.dim() != 1 or edges.numel() != n_pixels + 1 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(f"wave_edges must be {n_pixels + 1} increasing pixel edges, got shape {tuple(edges.shape)}")
        span = math.log(edges[-1].item() / edges[0].item())
        if n_log is None:
            finest = torch.log(edges[1:] / edges[:-1]).min().item()
            n_log = math.ceil(span / finest)
        super().__init__(n_log, n_outputs, **kwargs)
        log_edges = edges[0] * torch.exp(torch.arange(n_log + 1, dtype=torch.float64) * (span / n_log))
        log_edges[-1] = edges[-1]
        # Row i = where input pixel i's unit flux density lands: x_log = x @ resample.
        resample = rebin_edges_reference(torch.eye(n_pixels, dtype=torch.float64), edges, log_edges, 0.0)
        self.register_buffer("resample", resample.float(), persistent=False)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        flux = flux if flux.dim() == 2 else flux[:, 0, :]
        return super().forward(flux @ self.resample)


class ShiftResNet1D(LogGridResNet1D):
    """LogGridResNet1D plus a redshift-equivariant branch: learned rest-frame templates slid over its features.

    On the log grid a redshift shifts the spectrum, and so the features of the second stage (stride 8 in log
    pixels, step D in ln λ), by ln(1 + z). The branch projects those features to ``template_channels`` channels
    F[c, x] and scores every trial shift j (ln(1 + z_j) = ln(1 + z_lo) + j·D) by the correlation
    Σ_c Σ_x W_r[c, x - j] F[c, x] with learned rest-frame templates W_r, one per sub-step r = 0 .. ``n_sub`` - 1
    (the features carry the sub-step phase; ln(1 + z) = ... + (j + r / n_sub)·D). So one template scores every
    z: what the branch learns about a line pattern at one z holds at all others, which a flattened head has to
    learn position by position. The scores on that fine grid in ln(1 + z) are interpolated (a fixed linear map)
    to the redshift bins and added to the flattened head's logits. The templates start at zero, so training
    starts from LogGridResNet1D.

    Args: as LogGridResNet1D, plus z_edges (Tensor[n_bins + 1]): the redshift bin edges of the head's first
    n_bins outputs (any further output, the outside logit, comes from the flattened head alone).
    """

    def __init__(self, n_pixels: int, n_outputs: int, wave_edges: torch.Tensor, z_edges: torch.Tensor,
                 n_sub: int = 16, template_channels: int = 16):  # fmt: skip
        super().__init__(n_pixels, n_outputs, wave_edges)
        z_edges = torch.as_tensor(z_edges, dtype=torch.float64).cpu()
        n_bins = z_edges.numel() - 1
        if n_bins < 2 or n_bins > n_outputs or not bool((z_edges[1:] > z_edges[:-1]).all()) or z_edges[0] <= -1:
            raise ValueError(f"z_edges must be 3 to {n_outputs + 1} increasing redshifts > -1, got {z_edges.numel()}")
        self.n_bins, self.n_sub = n_bins, n_sub
        edges = torch.as_tensor(wave_edges, dtype=torch.float64).cpu()
        n_log = self.resample.shape[1]
        step = math.log(edges[-1].item() / edges[0].item()) / n_log  # ln λ per log pixel
        self.tap = 7  # features[:7]: stem (stride 2) + two stages (stride 2 each): stride 8
        stride = 8
        length = n_log
        for _ in range(3):
            length = (length + 1) // 2
        coarse = stride * step  # D
        t = torch.log1p(0.5 * (z_edges[1:] + z_edges[:-1]))  # bin centres in ln(1 + z)
        t_lo = t[0].item() - coarse
        n_shifts = math.ceil((t[-1].item() - t_lo) / coarse) + 2
        self.n_shifts, self.length = n_shifts, length
        features_width = self.features[self.tap - 1].body[-1].num_features
        self.project = nn.Conv1d(features_width, template_channels, 1)
        self.templates = nn.Parameter(torch.zeros(n_sub, template_channels, length + n_shifts - 1))
        # Fine grid f = j·n_sub + r at ln(1 + z) = t_lo + f·D/n_sub -> bins: linear interpolation in ln(1 + z).
        position = (t - t_lo) / (coarse / n_sub)
        below = position.floor().long()
        weight = position - below
        interp = torch.zeros(n_shifts * n_sub, n_bins, dtype=torch.float64)
        columns = torch.arange(n_bins)
        interp[below, columns] = 1 - weight
        interp[below + 1, columns] = weight
        self.register_buffer("interp", interp.float(), persistent=False)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        flux = flux if flux.dim() == 2 else flux[:, 0, :]
        x = (flux @ self.resample)[:, None, :]
        mid = self.features[: self.tap](x)
        logits = self.head(self.features[self.tap :](mid))
        f = nn.functional.pad(self.project(mid), (self.n_shifts - 1, self.n_shifts - 1))
        scores = nn.functional.conv1d(f, self.templates)  # [B, n_sub, n_shifts]: score of shift j, sub-step r
        fine = scores.transpose(1, 2).reshape(scores.shape[0], -1)  # f = j·n_sub + r
        shift_logits = fine @ self.interp
        return torch.cat([logits[:, : self.n_bins] + shift_logits, logits[:, self.n_bins :]], dim=1)


MODELS = {"paper-cnn": PaperCNN, "resnet1d": ResNet1D, "resnet1d-wide": resnet1d_wide, "resnet1d-log": LogGridResNet1D,
          "resnet1d-shift": ShiftResNet1D}  # fmt: skip
NEEDS_GRID = ("resnet1d-log", "resnet1d-shift")


def build_model(name: str, n_pixels: int, estimator: str, n_bins: int, outside: bool = False,
                wave_edges: torch.Tensor | None = None, z_range: tuple | None = None) -> nn.Module:
    """``MODELS[name](n_pixels, head_size(estimator, n_bins) + outside)``: with ``outside``, one more output last,
    the logit of "this galaxy's z is outside the trained range" (zfast-train ``--outside-prob``). Models in
    ``NEEDS_GRID`` also take the instrument's pixel edges ``wave_edges``; resnet1d-shift (binned estimators
    only) the trained redshift range ``z_range`` = (z_min, z_max) of the ``n_bins`` uniform bins."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    n_outputs = head_size(estimator, n_bins) + int(bool(outside))
    if name not in NEEDS_GRID:
        return MODELS[name](n_pixels, n_outputs)
    if wave_edges is None:
        raise ValueError(f"model {name!r} needs the instrument's wave_edges")
    if name != "resnet1d-shift":
        return MODELS[name](n_pixels, n_outputs, wave_edges)
    if estimator == "regression" or z_range is None:
        raise ValueError("model 'resnet1d-shift' scores redshift bins: it needs a binned estimator and z_range")
    z_min, z_max = z_range
    return MODELS[name](n_pixels, n_outputs, wave_edges, z_min + (z_max - z_min) * torch.arange(n_bins + 1.0) / n_bins)


def split_outside(output: torch.Tensor, outside: bool) -> tuple:
    """(the estimator's outputs [B, K], the "outside the trained range" logit [B] or None) of a network built
    with ``build_model(..., outside)``: that logit is the last output."""
    return (output[:, :-1], output[:, -1]) if outside else (output, None)


__all__ = ["ESTIMATORS", "MODELS", "LogGridResNet1D", "PaperCNN", "ResNet1D", "ShiftResNet1D", "build_model", "head_size", "split_outside"]
