"""Benchmark of zfast.predict's P(z) post-processing per batch: the native op (zfast.ops.pz_post) against its torch
spec, on the same logits.

What is measured, at zfast-predict's batch of B = 1,024 spectra and the quick preset's K = 800 bins (logits: a
Gaussian bump of 0.6-9 bins at a random bin plus noise; a calibration table of 4 SNR bins x 3 peak-share groups):

    native   zfast.calibration.plain_and_calibrated + zfast.bins.pz_summary_and_candidates (n = 3), the path
             zfast.predict takes on the CPU: the plain and calibrated softmax, the summaries and the candidates
    spec     the same two calls with the native op switched off: softmax, calibrated_probs, pz_summary,
             refined_mode and pz_candidates in torch (the fallback off the CPU)

Both are checked against each other first. extra_info records spectra_per_s. CPU only (off the CPU zfast runs
the spec). From the repository root, with zfast installed:

    pytest benchmarks/bench_pz_post.py --benchmark-only --benchmark-json=pz_post.json
"""

import math

import pytest
import torch

from zfast.bins import pz_summary_and_candidates, redshift_bin_edges
from zfast.calibration import plain_and_calibrated
from zfast.ops import pz_post

BATCH, N_BINS = 1024, 800


def inputs():
    g = torch.Generator().manual_seed(0)
    k = torch.arange(N_BINS, dtype=torch.float64)[None]
    centre = torch.randint(0, N_BINS, (BATCH, 1), generator=g).double()
    width = 3 * (0.2 + 3 * torch.rand(BATCH, 1, dtype=torch.float64, generator=g))
    logits = (-0.5 * ((k - centre) / width) ** 2 + 2 * torch.randn(BATCH, N_BINS, dtype=torch.float64, generator=g)).float()
    snr = 40 * torch.rand(BATCH, dtype=torch.float64, generator=g)
    calibration = dict(snr_edges=torch.tensor([0.0, 5.0, 10.0, 30.0, math.inf], dtype=torch.float64),
                       temperatures=0.4 + 1.5 * torch.rand(3, 4, dtype=torch.float64, generator=g),
                       peak_edges=torch.tensor([0.0, 0.3, 0.7, 1.0001], dtype=torch.float64))  # fmt: skip
    return logits, snr, calibration, redshift_bin_edges(1.0, 1.8, N_BINS).double()


def post(logits, snr, calibration, edges):
    plain, calibrated = plain_and_calibrated(logits, snr, calibration, edges)
    return pz_summary_and_candidates(calibrated, edges, plain, n=3)


@pytest.mark.parametrize("provider", ["native", "spec"])
def test_pz_post(native_or_spec, provider):
    def compare(native, spec):
        torch.testing.assert_close(native[0].z_mode, spec[0].z_mode, rtol=0, atol=1e-12)
        torch.testing.assert_close(native[1].p, spec[1].p, rtol=0, atol=1e-14)

    native_or_spec(pz_post, provider, post, inputs(), compare, f"pz_post B={BATCH} K={N_BINS}", BATCH)
