"""ShiftResNet1D: LogGridResNet1D plus a branch of learned rest-frame templates slid over its features."""

from __future__ import annotations

import math

import torch
from torch import nn

from .log_grid_resnet import LogGridResNet1D


def smooth_length(k: int) -> int:
    """The smallest n >= k whose prime factors are all 2, 3 or 5 (FFT lengths that pocketfft and cuFFT do fast)."""
    n = max(int(k), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


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

    Args: as LogGridResNet1D (n_log included), plus z_edges (Tensor[n_bins + 1]): the redshift bin edges of the
    head's first n_bins outputs (any further output, the outside logit, comes from the flattened head alone).
    """

    def __init__(self, n_pixels: int, n_outputs: int, wave_edges: torch.Tensor, z_edges: torch.Tensor,
                 n_sub: int = 16, template_channels: int = 16, n_log: int | None = None, fine_channels: int = 0,
                 fine_sub: int = 4, activation: str = "silu"):  # fmt: skip
        super().__init__(n_pixels, n_outputs, wave_edges, n_log=n_log, activation=activation)
        z_edges = torch.as_tensor(z_edges, dtype=torch.float64).cpu()
        n_bins = z_edges.numel() - 1
        if n_bins < 2 or n_bins > n_outputs or not bool((z_edges[1:] > z_edges[:-1]).all()) or z_edges[0] <= -1:
            raise ValueError(f"z_edges must be 3 to {n_outputs + 1} increasing redshifts > -1, got {z_edges.numel()}")
        self.n_bins, self.n_sub = n_bins, n_sub
        edges = torch.as_tensor(wave_edges, dtype=torch.float64).cpu()
        n_log = self.resample.shape[1]
        step = math.log(edges[-1].item() / edges[0].item()) / n_log  # ln λ per log pixel
        t = torch.log1p(0.5 * (z_edges[1:] + z_edges[:-1]))  # bin centres in ln(1 + z)
        self.tap = 7  # features[:7]: stem (stride 2) + two stages (stride 2 each): stride 8
        self.n_shifts, self.length, interp = _shift_grid(n_log, 8, step, t, n_sub)
        features_width = self.features[self.tap - 1].body[-1].num_features
        self.project = nn.Conv1d(features_width, template_channels, 1)
        self.templates = nn.Parameter(torch.zeros(n_sub, template_channels, self.length + self.n_shifts - 1))
        self.register_buffer("interp", interp, persistent=False)
        # The optional fine branch: the same on the stem's output (stride 2, 4x the coarse branch's resolution in
        # ln(1 + z)), for features narrower than the coarse branch's step (absorption lines of passive spectra).
        self.fine_tap, self.fine_sub = 3, fine_sub
        if fine_channels > 0:
            self.fine_shifts, self.fine_length, fine_interp = _shift_grid(n_log, 2, step, t, fine_sub)
            stem_width = self.features[self.fine_tap - 2].num_features
            self.fine_project = nn.Conv1d(stem_width, fine_channels, 1)
            self.fine_templates = nn.Parameter(torch.zeros(fine_sub, fine_channels, self.fine_length + self.fine_shifts - 1))
            self.register_buffer("fine_interp", fine_interp, persistent=False)
        else:
            self.fine_templates = None

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        flux = flux if flux.dim() == 2 else flux[:, 0, :]
        x = self.to_log_grid(flux)[:, None, :]
        stem = self.features[: self.fine_tap](x)
        mid = self.features[self.fine_tap : self.tap](stem)
        logits = self.head(self.features[self.tap :](mid))
        shift_logits = self._branch_logits(mid, self.project, self.templates, self.n_shifts, self.interp, logits.dtype)
        if self.fine_templates is not None:
            shift_logits = shift_logits + self._branch_logits(stem, self.fine_project, self.fine_templates, self.fine_shifts,
                                                              self.fine_interp, logits.dtype)  # fmt: skip
        return torch.cat([logits[:, : self.n_bins] + shift_logits, logits[:, self.n_bins :]], dim=1)

    @staticmethod
    def _branch_logits(mid, project, templates, n_shifts, interp, dtype) -> torch.Tensor:
        """[B, n_bins]: a branch's template scores of features ``mid`` [B, C, L], interpolated to the bins."""
        # The 1x1 projection as a matmul over the channels of mid's channels-last memory ([B, L, C]): its gradient
        # then comes back channels-last, as the trunk's own does; nn.Conv1d's came back contiguous, and the mixed
        # layouts sent the trunk's BatchNorm backward down a slow path (training step 310 -> 245 ms per 282 spectra).
        projected = (mid.transpose(1, 2) @ project.weight[:, :, 0].T + project.bias).transpose(1, 2)
        scores = correlate(projected, templates, n_shifts)  # [B, n_sub, n_shifts] float32: shift j, sub-step r
        fine = scores.transpose(1, 2).reshape(scores.shape[0], -1).to(dtype)  # f = j·n_sub + r
        return fine @ interp

    def template_scores(self, projected: torch.Tensor) -> torch.Tensor:
        """The coarse branch's ``correlate`` of projected features [B, template_channels, L] with its templates."""
        return correlate(projected, self.templates, self.n_shifts)


def _shift_grid(n_log: int, stride: int, step: float, t: torch.Tensor, n_sub: int) -> tuple:
    """(n_shifts, length, interp [n_shifts·n_sub, n_bins] float32) of a branch on features of stride ``stride``
    over ``n_log`` log pixels of ``step`` in ln λ, for bin centres ``t`` in ln(1 + z): trial shifts j at
    ln(1 + z) = t_lo + (j + r / n_sub)·D, D = stride·step, t_lo one D below the first bin; the fine grid
    f = j·n_sub + r mapped to the bins by linear interpolation in ln(1 + z)."""
    length = n_log
    for _ in range(int(round(math.log2(stride)))):
        length = (length + 1) // 2
    coarse = stride * step  # D
    t_lo = t[0].item() - coarse
    n_shifts = math.ceil((t[-1].item() - t_lo) / coarse) + 2
    position = (t - t_lo) / (coarse / n_sub)
    below = position.floor().long()
    weight = position - below
    n_bins = t.numel()
    interp = torch.zeros(n_shifts * n_sub, n_bins, dtype=torch.float64)
    columns = torch.arange(n_bins)
    interp[below, columns] = 1 - weight
    interp[below + 1, columns] = weight
    return n_shifts, length, interp.float()


def correlate(projected: torch.Tensor, templates: torch.Tensor, n_shifts: int) -> torch.Tensor:
    """[B, C, L] projected features, templates [n_sub, C, L + n_shifts - 1] -> [B, n_sub, n_shifts] float32: for each sub-step r and
    trial shift j, Σ_c Σ_x W_r[c, x - j + n_shifts - 1] F[c, x], the correlation of the features with the
    templates at every shift (what ``conv1d(pad(F, n_shifts - 1 both sides), templates)`` computes).

    Computed through real FFTs: the direct convolution's kernel spans the whole padded row (L + n_shifts - 1
    taps for n_shifts outputs), ~0.75 GMAC per training batch of 282, as much as the rest of the network; in the
    frequency domain the channel sum is one small complex matmul per frequency. The FFT length n only has to
    hold the templates (L + n_shifts - 1): every lag asked for reads W at x - j + n_shifts - 1 within
    [0, L + n_shifts - 2] for x < L, so a circular correlation of that length never wraps onto them; n is the
    smallest 5-smooth length that does (144 for the NISP preset, against 256 for the full linear correlation:
    the branch's forward 29 -> 13 ms per 1024 spectra). Float32 whatever the autocast (FFT rounding ~1e-6
    relative)."""
    f, w = projected.float(), templates.float()
    length = f.shape[-1]
    n = smooth_length(length + n_shifts - 1)  # the templates' length
    spectrum_f = torch.fft.rfft(f, n=n)  # [B, C, n/2 + 1]
    spectrum_w = torch.fft.rfft(w, n=n)  # [R, C, n/2 + 1]
    # Σ_c F[b, c, ν] conj(W[r, c, ν]) per frequency ν: [ν, B, C] @ [ν, C, R]
    product = torch.bmm(spectrum_f.permute(2, 0, 1), spectrum_w.conj().permute(2, 1, 0)).permute(1, 2, 0)
    correlation = torch.fft.irfft(product, n=n)  # [B, R, n]: lag m = Σ_x F[x] W[x - m], m mod n
    lags = (torch.arange(n_shifts, device=f.device) - (n_shifts - 1)) % n  # shift j is lag j - (n_shifts - 1)
    return correlation[:, :, lags]
