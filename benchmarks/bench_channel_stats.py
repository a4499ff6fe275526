"""Benchmark of the OOD taps' channel statistics for one zfast-predict batch: the native op
(zfast.ops.channel_stats) against its torch spec (zfast.ood.channel_statistics with the op switched off).

What is measured: the statistics of the quick preset's nine tapped activations for B = 1,024 spectra of 512 pixels
(the stem's [B, 16, 256] and two residual blocks each of [B, 32, 128], [B, 64, 64] and [B, 64, 32], plus one more
[B, 32, 128] as the first stage's entry: 4M floats per tap), random values in Conv1dNHWC's channels-last memory.

    native   zfast.ood.channel_statistics on the CPU (the native op)
    spec     the same with the op switched off: two float32 passes in torch

CPU only. From the repository root, with zfast installed:

    pytest benchmarks/bench_channel_stats.py --benchmark-only
"""

import pytest
import torch

from zfast import ood
from zfast.ops import channel_stats

BATCH = 1024
TAPS = [(16, 256), (32, 128), (32, 128), (32, 128), (64, 64), (64, 64), (64, 32), (64, 32), (64, 32)]


def activations():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(BATCH, length, channels, generator=g).transpose(1, 2) for channels, length in TAPS]


def all_statistics(taps):
    return [ood.channel_statistics(a) for a in taps]


@pytest.mark.parametrize("provider", ["native", "spec"])
def test_channel_stats(native_or_spec, provider):
    def compare(native, spec):
        for a, b in zip(native, spec):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    native_or_spec(channel_stats, provider, all_statistics, (activations(),), compare,
                   f"channel_stats B={BATCH}, 9 taps", BATCH)  # fmt: skip
