"""zfast.ops.channel_stats (the OOD taps' channel statistics, native) against a float64 reference and the torch spec
(zfast.ood.channel_statistics) on fresh random activations in both memory orders, odd sizes included."""

from __future__ import annotations

import pytest
import torch

from zfast import ood
from zfast.ops import channel_stats

SHAPES = [(1, 1, 1), (3, 5, 7), (257, 16, 256), (31, 64, 33), (2, 3, 1)]


def reference(activation: torch.Tensor) -> torch.Tensor:
    a = activation.double()
    mean = a.mean(dim=-1, keepdim=True)
    return torch.cat([mean[..., 0], (a - mean).square().mean(dim=-1).sqrt()], dim=1)


def activation(generator, shape, channels_last: bool) -> torch.Tensor:
    b, c, l = shape
    offset = 5 * torch.rand(1, c, 1, generator=generator)  # channels of very different levels
    if channels_last:  # Conv1dNHWC's output: [B, L, C] in memory, viewed as [B, C, L]
        return (torch.randn(b, l, c, generator=generator) * 2).transpose(1, 2) + offset
    return torch.randn(b, c, l, generator=generator) * 2 + offset


@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_float64_reference(generator, channels_last):
    for shape in SHAPES:
        x = activation(generator, shape, channels_last)
        out = channel_stats.channel_stats(x)
        expected = reference(x)
        assert out.dtype == torch.float32 and out.shape == (shape[0], 2 * shape[1])
        # float32 output of double sums: within a few float32 ulps of the exact statistics.
        torch.testing.assert_close(out.double(), expected, rtol=3e-7, atol=1e-6)
        assert torch.equal(ood.channel_statistics(x), out)  # what the OOD taps call on the CPU


def test_the_torch_spec_agrees(generator, monkeypatch):
    """The fallback (float32 sums) agrees with the float64 reference to its own rounding."""
    x = activation(generator, (64, 16, 256), True)
    monkeypatch.setattr(channel_stats, "available", lambda device: False)
    torch.testing.assert_close(ood.channel_statistics(x).double(), reference(x), rtol=3e-6, atol=1e-5)


def test_other_strides_and_threads(generator):
    base = torch.randn(40, 9, 30, generator=generator)
    x = base[:, ::2, 3:]  # neither layout: copied first
    torch.testing.assert_close(channel_stats.channel_stats(x).double(), reference(x), rtol=3e-7, atol=1e-6)
    y = activation(generator, (300, 32, 128), True)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(channel_stats.channel_stats(y))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_validation_and_opcheck(generator):
    with pytest.raises(ValueError, match="float32"):
        channel_stats.channel_stats(torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="L = 0"):
        channel_stats.channel_stats(torch.zeros(2, 3, 0))
    torch.library.opcheck(torch.ops.zfast.channel_stats.default, (activation(generator, (4, 6, 10), True),))
    torch.library.opcheck(torch.ops.zfast.channel_stats.default, (activation(generator, (4, 6, 10), False),))
