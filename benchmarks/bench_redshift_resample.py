"""Benchmark of ``zfast.SEDLibrary.redshift_resample`` against PyTorch, torch.compile, spectres and numpy.interp.

What is measured: the time to put B SEDs, drawn uniformly from a library of S = 10,000 (rest frame
3500-10500 Å, log-uniform at dlnλ = 1/2000, ~2200 px, and at dlnλ = 1/6000, ~6600 px; random positive
flux), at redshifts z ~ U[1, 1.8) (float64) onto the Euclid NISP red grism grid (12060-18920 Å, 13.4 Å
pixels, M = 512 bins), for B = 256 and B = 4096. Every provider gets the same inputs:

    native          lib.redshift_resample(sed_index, z, edges): the native kernel, default value checks
    native-nocheck  the same with check=False, so the difference from native is the validation cost
    native-portable the raw C++ launcher with its portable edge loop forced (allow_avx512=False), no
                    validation: on CPUs with AVX-512, the gain of the hand-written edge loop is
                    native-portable / native-nocheck (CPU only; the raw call skips the op's Python
                    dispatch, ~25 µs, so the ratio slightly understates the gain)
    torch           zfast.ops.redshift_resample.redshift_resample_reference, eager
    torch.compile   torch.compile of that reference (compiled and warmed up before timing)
    spectres        spectres.spectres, one call per spectrum (B = 256 only, CPU only)
    numpy.interp    numpy.interp at the bin centres, one call per spectrum, not flux-conserving
                    (B = 256 only, CPU only)
    memory-floor    torch.empty(B, M).fill_(1.0): allocating and writing the float32 [B, M] output,
                    the floor any op producing that output pays. The allocator hands back the block
                    just freed, so this is a cache-speed floor (the native op's output gets the same)
    memory-floor-dram
                    fill_(1.0) of the next of a ring of [B, M] outputs spanning 128 MB (4x this box's
                    L3), so every write goes to DRAM: the floor for output that does not stay in cache

The same inputs (and the same wave_edges tensor, as in a training loop) are passed to every call, so at
B = 256 the few MB of library rows read stay in cache between calls while at B = 4096 (29-88 MB) they come
from DRAM; a training loop draws fresh rows every batch (bench_augment.py times that). The
benchmark fails if zfast's native kernel is not importable, rather than timing its PyTorch fallback as
"native". Each provider is called once before timing (warm-up, and torch.compile's compilation); the outputs
of native-nocheck, torch, torch.compile and spectres are then checked against native's. Each library is
built once per (module, dlnλ) and dropped before the next one is built (the 1/6000 one holds 528 MB of
float64). Torch's default thread count is kept; extra_info records it with the provider, B, dlnλ, device and
spectra_per_s (B / mean time). Benchmarks are grouped by (dlnλ, B) so the providers sit side by side.

Not part of the default test run (pytest collects tests/ only). From the repository root, with zfast
installed (run the ``pytest`` script, not ``python -m pytest``, which would import the uncompiled source
tree):

    pytest benchmarks/bench_redshift_resample.py --benchmark-only --benchmark-json=results.json
    python benchmarks/report.py results.json

On a GPU add ``--device cuda``: the library and inputs live on the GPU, every timed call ends with
torch.cuda.synchronize(), and spectres / numpy.interp are skipped.
"""

import functools
import itertools
import math

import numpy as np
import pytest
import spectres
import torch

import zfast
from zfast.ops.redshift_resample import redshift_resample_reference

N_SEDS = 10_000
REST_FIRST_CENTRE, REST_LAST_CENTRE = 3500.0, 10500.0  # Å
OBS_FIRST_EDGE, OBS_PIXEL, OBS_BINS = 12060.0, 13.4, 512  # Å; Euclid NISP red grism, 12060-18920 Å
Z_LOW, Z_HIGH = 1.0, 1.8
SEED = 0

DLN_CASES = (1 / 2000, 1 / 6000)
BATCH_SIZES = (256, 4096)
PROVIDERS = (
    "native", "native-nocheck", "native-portable", "torch", "torch.compile", "spectres", "numpy.interp", "memory-floor",
    "memory-floor-dram",
)  # fmt: skip
DRAM_RING_BYTES = 128 * 2**20
PER_SPECTRUM_LOOPS = ("spectres", "numpy.interp")
PER_SPECTRUM_LOOP_BATCH = 256
# spectres does ~200 spectra/s, so B = 256 takes over a second: a few rounds are enough.
PER_SPECTRUM_LOOP_ROUNDS = 3
# Relative tolerance of each provider computing the same flux-conserving bin means as native.
# spectres takes the rest pixel edges as arithmetic (not geometric) midpoints: ~2e-4 apart here.
AGREEMENT_RTOL = {
    "native-nocheck": 0.0,
    "native-portable": 1e-6,
    "torch": 1e-5,
    "torch.compile": 1e-5,
    "spectres": 1e-3,
}


def dln_label(dln: float) -> str:
    return f"1/{round(1 / dln)}"


def benchmark_cases():
    for dln in DLN_CASES:
        for batch_size in BATCH_SIZES:
            for provider in PROVIDERS:
                if provider in PER_SPECTRUM_LOOPS and batch_size != PER_SPECTRUM_LOOP_BATCH:
                    continue
                yield pytest.param(dln, batch_size, provider, id=f"dln{dln_label(dln)}-B{batch_size}-{provider}")


def build_library(dln: float) -> zfast.SEDLibrary:
    """S random positive SEDs on rest centres exp(ln 3500 Å + k·dln), k = 0, 1, ... while <= 10500 Å."""
    n_pixels = math.floor(math.log(REST_LAST_CENTRE / REST_FIRST_CENTRE) / dln) + 1
    k = torch.arange(n_pixels, dtype=torch.float64)
    wavelength = torch.exp(math.log(REST_FIRST_CENTRE) + k * dln)
    generator = torch.Generator().manual_seed(SEED)
    flux = torch.rand(N_SEDS, n_pixels, generator=generator) + 0.1
    return zfast.SEDLibrary(wavelength, flux)


def observed_edges(device: torch.device) -> torch.Tensor:
    k = torch.arange(OBS_BINS + 1, dtype=torch.float64)
    return (OBS_FIRST_EDGE + OBS_PIXEL * k).to(device)


def random_spectra(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sed_index int64 [B] uniform in [0, S), z float64 [B] ~ U[1, 1.8)), fixed seed."""
    generator = torch.Generator().manual_seed(SEED)
    sed_index = torch.randint(0, N_SEDS, (batch_size,), generator=generator)
    z = Z_LOW + (Z_HIGH - Z_LOW) * torch.rand(batch_size, dtype=torch.float64, generator=generator)
    return sed_index.to(device), z.to(device)


@functools.cache
def compiled_reference():
    return torch.compile(redshift_resample_reference, dynamic=False)


@pytest.fixture(scope="module")
def library(request, device) -> zfast.SEDLibrary:
    """The library for dlnλ = request.param, on ``device`` (indirectly parametrized)."""
    native = zfast.native_available()
    if not native[device.type]:
        pytest.fail(
            f"zfast's native {device.type} kernel is not available (import error: {native['error']}), so "
            f"'native' would time the PyTorch reference. Was zfast imported from the source tree instead of "
            f"the installed package (python -m pytest puts the repository root first on sys.path)?"
        )
    return build_library(request.param).to(device)


@pytest.fixture(scope="module")
def rest_frame_arrays(library) -> tuple[np.ndarray, np.ndarray]:
    """(rest pixel centres [N], rest flux [S, N]) as float64 numpy arrays, for the per-spectrum loops."""
    return library.wavelength.cpu().numpy(), library.flux.cpu().numpy()


def make_provider(provider, library, sed_index, z, edges, request):
    """A no-argument callable computing the [B, M] output of ``provider`` on these inputs."""
    reference_args = (library.cumulative, sed_index, z, edges, library.ln_edge0, library.dln)
    if provider == "native":
        return functools.partial(library.redshift_resample, sed_index, z, edges)
    if provider == "native-nocheck":
        return functools.partial(library.redshift_resample, sed_index, z, edges, check=False)
    if provider == "native-portable":
        return portable_native_call(library, sed_index, z, edges)
    if provider == "torch":
        return functools.partial(redshift_resample_reference, *reference_args)
    if provider == "torch.compile":
        return functools.partial(compiled_reference(), *reference_args)
    if provider == "memory-floor":
        shape = (z.shape[0], edges.shape[0] - 1)
        return lambda: torch.empty(shape, device=edges.device).fill_(1.0)
    if provider == "memory-floor-dram":
        shape = (z.shape[0], edges.shape[0] - 1)
        ring = itertools.cycle(
            [torch.empty(shape, device=edges.device) for _ in range(-(-DRAM_RING_BYTES // (4 * math.prod(shape))))]
        )
        return lambda: next(ring).fill_(1.0)

    rest_centres, rest_flux = request.getfixturevalue("rest_frame_arrays")
    obs_centres = (0.5 * (edges[1:] + edges[:-1])).cpu().numpy()
    spectra = list(zip(sed_index.tolist(), z.tolist()))
    if provider == "spectres":
        return lambda: np.stack(
            [
                spectres.spectres(obs_centres, rest_centres * (1 + zb), rest_flux[s] / (1 + zb), verbose=False)
                for s, zb in spectra
            ]
        )
    if provider == "numpy.interp":
        return lambda: np.stack(
            [np.interp(obs_centres, rest_centres * (1 + zb), rest_flux[s] / (1 + zb)) for s, zb in spectra]
        )
    raise ValueError(f"unknown provider {provider!r}")


def portable_native_call(library, sed_index, z, edges):
    """The raw C++ launcher (what native-nocheck ends in) with the portable edge loop forced."""
    edge_position = torch.log(edges) / library.dln
    inv_bin_width = 1.0 / (edges[1:] - edges[:-1])
    inv_expm1_dln = 1.0 / math.expm1(library.dln)

    def run():
        out = torch.empty(z.shape[0], edges.shape[0] - 1)
        zfast._native._C.redshift_resample_cpu(
            library.cumulative.data_ptr(), library.n_seds, library.n_pixels, sed_index.data_ptr(), z.data_ptr(),
            z.shape[0], edge_position.data_ptr(), inv_bin_width.data_ptr(), edges.shape[0] - 1, library.ln_edge0,
            library.dln, inv_expm1_dln, math.nan, out.data_ptr(), torch.get_num_threads(), allow_avx512=False,
        )  # fmt: skip
        return out

    return run


def synchronized(function, device: torch.device):
    """``function``, followed on a GPU by torch.cuda.synchronize() so that the timing covers the kernels."""
    if device.type != "cuda":
        return function

    def function_then_synchronize():
        output = function()
        torch.cuda.synchronize(device)
        return output

    return function_then_synchronize


def describe_device(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


@pytest.mark.parametrize(("library", "batch_size", "provider"), list(benchmark_cases()), indirect=["library"])
def test_redshift_resample(benchmark, request, device, library, batch_size, provider):
    if device.type == "cuda" and provider in PER_SPECTRUM_LOOPS:
        pytest.skip(f"{provider} is a per-spectrum numpy loop: CPU only")
    if device.type == "cuda" and provider == "native-portable":
        pytest.skip("native-portable is the CPU launcher's portable edge loop")
    sed_index, z = random_spectra(batch_size, device)
    edges = observed_edges(device)
    run = synchronized(make_provider(provider, library, sed_index, z, edges, request), device)

    warm_up_output = run()
    if provider in AGREEMENT_RTOL:
        torch.testing.assert_close(
            torch.as_tensor(warm_up_output, dtype=torch.float32, device=device),
            library.redshift_resample(sed_index, z, edges),
            rtol=AGREEMENT_RTOL[provider],
            atol=0.0,
        )

    benchmark.group = f"dlnλ={dln_label(library.dln)} B={batch_size}"
    if provider in PER_SPECTRUM_LOOPS:
        benchmark.pedantic(run, rounds=PER_SPECTRUM_LOOP_ROUNDS, iterations=1)
    else:
        benchmark(run)
    benchmark.extra_info.update(
        provider=provider,
        batch_size=batch_size,
        dln=library.dln,
        dln_label=dln_label(library.dln),
        device=describe_device(device),
        threads=torch.get_num_threads(),
    )
    if benchmark.stats is not None:  # None under --benchmark-disable, where nothing is timed
        benchmark.extra_info["spectra_per_s"] = batch_size / benchmark.stats.stats.mean
