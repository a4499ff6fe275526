"""Benchmark of the augmentation pipeline against the resample kernel alone and a CNN training step.

What is measured, at B = 256 spectra per batch (the training batch) on the Euclid NISP red grism (512 px):

    kernel      SEDLibrary.redshift_resample alone (validation off, as the pipeline calls it)
    pipeline    next(AugmentedSpectra): draw SEDs and z, resample, LSF, white noise (SNR 3-30), normalise
    cnn-step    forward + backward + Adam step of a small 1D CNN of the paper's shape (3 x [Conv1d(16, k8) ->
                ReLU -> MaxPool(3, 2) -> BatchNorm] -> Linear 512 -> 800 logits, cross-entropy): the training
                step the pipeline must keep up with (target: pipeline <= 5 % of it)

Library: 2,000 random positive SEDs on 3500-10600 Å at dlnλ = 1/2000 (the pipeline's cost does not depend on
the SEDs' shapes). Run from the repository root with zfast installed:

    pytest benchmarks/bench_augment.py --benchmark-only --benchmark-json=augment.json

and read the "augment" group (mean times; the pipeline/cnn-step ratio is printed in the terminal summary
of extra_info). Add ``--device cuda`` on a GPU (every timed call ends with torch.cuda.synchronize()).
"""

import math

import pytest
import torch

import zfast

BATCH = 256
N_SEDS = 2_000


def build_library(device):
    k = torch.arange(math.floor(math.log(10600 / 3500) * 2000) + 1, dtype=torch.float64)
    wavelength = torch.exp(math.log(3500.0) + k / 2000)
    flux = torch.rand(N_SEDS, k.numel(), generator=torch.Generator().manual_seed(0)) + 0.1
    return zfast.SEDLibrary(wavelength, flux).to(device)


def paper_like_cnn(n_pixels: int, n_classes: int = 800) -> torch.nn.Module:
    layers, channels, length = [], 1, n_pixels
    for _ in range(3):
        layers += [torch.nn.Conv1d(channels, 16, 8, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool1d(3, 2),
                   torch.nn.BatchNorm1d(16)]  # fmt: skip
        channels, length = 16, (length - 3) // 2 + 1
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(16 * length, 512),
                               torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(512, n_classes))  # fmt: skip


def synchronized(function, device):
    if device.type != "cuda":
        return function

    def run():
        out = function()
        torch.cuda.synchronize(device)
        return out

    return run


@pytest.mark.parametrize("provider", ["kernel", "pipeline", "cnn-step"])
def test_augment(benchmark, device, provider):
    instrument = zfast.Instrument.preset("euclid-nisp-red", zfast.NoiseModel("white", snr=(3.0, 30.0)))
    library = build_library(device)
    pipeline = zfast.AugmentedSpectra(library, instrument, batch_size=BATCH, seed=0)
    if provider == "kernel":
        sed_index = torch.randint(0, N_SEDS, (BATCH,), device=device)
        z = 1.0 + 0.8 * torch.rand(BATCH, device=device, dtype=torch.float64)
        edges = instrument.wave_edges.to(device)
        run = lambda: library.redshift_resample(sed_index, z, edges, check=False)  # noqa: E731
    elif provider == "pipeline":
        run = lambda: next(pipeline)  # noqa: E731
    else:
        model = paper_like_cnn(instrument.n_pixels).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        flux, _, z, _ = next(pipeline)
        labels = zfast.bins.z_to_bin(z, zfast.redshift_bin_edges()).to(device)

        def run():
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(flux[:, None, :]), labels)
            loss.backward()
            optimiser.step()
            return loss

    run = synchronized(run, device)
    run()
    benchmark.group = f"augment B={BATCH}"
    benchmark(run)
    benchmark.extra_info.update(provider=provider, batch_size=BATCH, device=str(device), threads=torch.get_num_threads())
    if benchmark.stats is not None:  # None under --benchmark-disable, where nothing is timed
        benchmark.extra_info["spectra_per_s"] = BATCH / benchmark.stats.stats.mean
