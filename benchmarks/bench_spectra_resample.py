"""Benchmark of zfast.predict's resampling onto the model's pixels for one zfast-predict batch: the native op
(zfast.ops.spectra_resample) against its torch spec (zfast.predict.resample with the op switched off).

What is measured: B = 1,024 spectra on a Euclid-SIR-like grid (11,900-19,000 Å, 13.4 Å pixels: 530 pixels, 10 %
of them masked at random) onto the NISP red grism's 512 model pixels, flux, variance and validity together, as
prepare_spectra calls it.

    native   zfast.predict.resample on the CPU (the native op)
    spec     the same with the op switched off: cumulative sums and index_select in float64 torch

CPU only. From the repository root, with zfast installed:

    pytest benchmarks/bench_spectra_resample.py --benchmark-only
"""

import importlib

import pytest
import torch

from zfast.data.instrument import Instrument
from zfast.ops import spectra_resample

predict_module = importlib.import_module("zfast.predict")
BATCH = 1024


def batch():
    g = torch.Generator().manual_seed(0)
    wave = torch.arange(11900.0, 19000.0, 13.4, dtype=torch.float64)
    flux = torch.rand(BATCH, wave.numel(), generator=g, dtype=torch.float64) + 0.5
    valid = torch.rand(BATCH, wave.numel(), generator=g) >= 0.1
    var = torch.where(valid, torch.rand(BATCH, wave.numel(), generator=g, dtype=torch.float64) + 0.01, 0.0)
    return flux, var, valid, wave, Instrument.preset("euclid-nisp-red").wave_edges


@pytest.mark.parametrize("provider", ["native", "spec"])
def test_spectra_resample(native_or_spec, provider):
    def compare(native, spec):
        for a, b in zip(native, spec):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=0.0, equal_nan=True)

    native_or_spec(spectra_resample, provider, predict_module.resample, batch(), compare,
                   f"spectra_resample B={BATCH}, 530 -> 512 pixels", BATCH)  # fmt: skip
