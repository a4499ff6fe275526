"""SEDLibrary.redshift_resample: physics invariants, native kernel vs the float64 reference, op checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import zfast
from conftest import log_uniform_centres, nisp_edges, random_edges, random_library, requires_cuda
from zfast import _native
from zfast.ops.rebin import rebin_edges_reference
from zfast.ops.redshift_resample import redshift_resample_reference

SENTINEL = -12345.0


def reference(library, sed_index, z, edges, fill=math.nan):
    return redshift_resample_reference(library.cumulative, sed_index, z, edges, library.ln_edge0, library.dln, fill)


def run_cpu_kernel(library, sed_index, z, edges, fill=math.nan, n_threads=2, allow_avx512=True):
    """Call the raw C++ launcher on an output pre-filled with a sentinel (an unwritten element would show).
    allow_avx512=False forces the portable edge loop on CPUs where the hand-written AVX-512 one would run."""
    edges = edges.to(torch.float64)
    edge_position = torch.log(edges) / library.dln
    inv_bin_width = 1.0 / (edges[1:] - edges[:-1])
    sed_index = sed_index.to(torch.int64).contiguous()
    z = z.to(torch.float64).contiguous()
    out = torch.full((z.numel(), edges.numel() - 1), SENTINEL, dtype=torch.float32)
    _native._C.redshift_resample_cpu(
        library.cumulative.data_ptr(), library.n_seds, library.n_pixels, sed_index.data_ptr(), z.data_ptr(),
        z.numel(), edge_position.data_ptr(), inv_bin_width.data_ptr(), edges.numel() - 1,
        library.ln_edge0, library.dln, 1.0 / math.expm1(library.dln), fill, out.data_ptr(), n_threads,
        allow_avx512=allow_avx512,
    )  # fmt: skip
    return out


def assert_float32_close(out, expected):
    """Both sides round the same float64 value to float32: allow one or two ulps of the row scale."""
    scale = expected.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    assert torch.all((out - expected).abs() <= 3e-7 * scale), float(((out - expected).abs() / scale).max())


# --- physics ------------------------------------------------------------------------------------------------
def test_z0_onto_own_pixels_is_identity(generator):
    library = random_library(generator, n_seds=5)
    sed_index = torch.arange(5)
    out = library.redshift_resample(sed_index, torch.zeros(5), library.edges)
    torch.testing.assert_close(out, library.flux.to(torch.float32), rtol=2e-7, atol=0.0)


def test_constant_flux_density_becomes_constant_over_one_plus_z(generator):
    wave = log_uniform_centres(3000.0, 11000.0, 1 / 3000)
    library = zfast.SEDLibrary(wave, torch.full((2, wave.numel()), 3.0, dtype=torch.float64))
    z = 1.0 + 0.8 * torch.rand(64, dtype=torch.float64, generator=generator)
    edges = random_edges(generator, 12060.0, 18920.0, 301)
    out = library.redshift_resample(torch.randint(0, 2, (64,), generator=generator), z, edges)
    expected = (3.0 / (1.0 + z))[:, None].expand_as(out).to(torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0.0)


def test_narrow_line_lands_in_its_bin_and_keeps_its_flux(generator):
    # Hα (vacuum) as a Gaussian of σ = 0.1 Å on a fine rest grid, integrated exactly over each rest pixel.
    line, sigma, line_flux = 6564.61, 0.1, 5.0
    wave = log_uniform_centres(4200.0, 9000.0, 1 / 100_000)  # serves 1.11 <= z <= 1.87 on NISP
    library = zfast.SEDLibrary(wave, torch.ones(1, wave.numel(), dtype=torch.float64))  # for its edges
    edges_rest = library.edges
    cdf = 0.5 * (1 + torch.erf((edges_rest - line) / (sigma * math.sqrt(2))))
    flux = line_flux * (cdf[1:] - cdf[:-1]) / (edges_rest[1:] - edges_rest[:-1])
    library = zfast.SEDLibrary(library.wavelength, flux[None])
    obs_edges = nisp_edges()
    # Put the redshifted line anywhere in the central 60 % of a random NISP bin (>= 9σ(1+z) from its edges).
    n = 40
    bins = torch.randint(140, 505, (n,), generator=generator)
    where_in_bin = 0.2 + 0.6 * torch.rand(n, dtype=torch.float64, generator=generator)
    observed_line = obs_edges[bins] + where_in_bin * 13.4
    z = observed_line / line - 1.0
    out = library.redshift_resample(torch.zeros(n, dtype=torch.int64), z, obs_edges).double()
    widths = obs_edges[1:] - obs_edges[:-1]
    integrated = (out * widths).sum(dim=1)
    torch.testing.assert_close(integrated, torch.full_like(integrated, line_flux), rtol=1e-5, atol=0.0)
    assert torch.equal(out.argmax(dim=1), bins)
    in_bin = out[torch.arange(n), bins] * widths[bins]
    assert torch.all(in_bin >= (1 - 1e-5) * line_flux)


def test_total_flux_conserved_when_output_covers_the_redshifted_sed(generator):
    library = random_library(generator, n_seds=4)
    n = library.n_pixels
    for s in range(4):
        z = 1.0 + 0.8 * torch.rand((), dtype=torch.float64, generator=generator).item()
        # Coarser output bins from a random subset of the redshifted rest edges, interior ones jittered.
        keep = torch.sort(torch.randperm(n - 1, generator=generator)[: n // 5] + 1).values
        chosen = torch.cat([torch.tensor([0]), keep, torch.tensor([n])])
        edges = library.edges[chosen] * (1 + z)
        jitter = 0.3 * torch.rand(edges.numel() - 2, dtype=torch.float64, generator=generator)
        edges[1:-1] = edges[1:-1] + jitter * (edges[2:] - edges[1:-1])
        out = library.redshift_resample(torch.tensor([s]), torch.tensor([z], dtype=torch.float64), edges)
        total = (out.double() * (edges[1:] - edges[:-1])).sum()
        assert math.isclose(total.item(), library.cumulative[s, -1].item(), rel_tol=1e-6)


def test_matches_independent_rebin_of_the_redshifted_sed(generator):
    """An independent path: searchsorted + linear fraction in λ on the redshifted edges (no log location)."""
    library = random_library(generator, n_seds=6)
    z = 1.0 + 0.8 * torch.rand(6, dtype=torch.float64, generator=generator)
    edges = random_edges(generator, 12060.0, 18920.0, 211)
    out = library.redshift_resample(torch.arange(6), z, edges)
    for b in range(6):
        expected = rebin_edges_reference(library.flux[b] / (1 + z[b]), library.edges * (1 + z[b]), edges, math.nan)
        assert_float32_close(out[b], expected.to(torch.float32))


# --- native kernel vs the float64 reference -----------------------------------------------------------------
@pytest.mark.parametrize(
    "batch,n_bins", [(1, 512), (3, 37), (129, 511), (1100, 1000), (17, 1)]
)  # 1100 x 1000: 3 threads
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("allow_avx512", [True, False], ids=["edge-loop-auto", "edge-loop-portable"])
def test_native_cpu_kernel_matches_reference_and_writes_every_element(
    generator, batch, n_bins, n_threads, allow_avx512
):
    library = random_library(generator, n_seds=31)
    edges = random_edges(generator, 12060.0, 18920.0, n_bins)
    z_min, z_max = library.z_range(edges)
    z = z_min + (z_max - z_min) * torch.rand(batch, dtype=torch.float64, generator=generator)
    sed_index = torch.randint(0, 31, (batch,), generator=generator)
    out = run_cpu_kernel(library, sed_index, z, edges, n_threads=n_threads, allow_avx512=allow_avx512)
    assert not (out == SENTINEL).any()
    assert_float32_close(out, reference(library, sed_index, z, edges))


@pytest.mark.parametrize("dln", [1 / 500, 1 / 499, 0.01, 0.0499])
@pytest.mark.parametrize("allow_avx512", [True, False], ids=["edge-loop-auto", "edge-loop-portable"])
def test_coarse_libraries_match_reference(generator, dln, allow_avx512):
    """dlnλ above 1/500 switches the kernels' expm1 polynomial from degree 3 to 5; both sides of the switch
    and the library's cap agree with the reference, which calls expm1 itself."""
    library = random_library(generator, n_seds=5, lo=2000.0, hi=20000.0, dln=dln)
    edges = random_edges(generator, 12060.0, 18920.0, 97)
    z = 0.2 + 0.6 * torch.rand(50, dtype=torch.float64, generator=generator)
    sed_index = torch.randint(0, 5, (50,), generator=generator)
    out = run_cpu_kernel(library, sed_index, z, edges, allow_avx512=allow_avx512)
    assert not (out == SENTINEL).any()
    assert_float32_close(out, reference(library, sed_index, z, edges))


def test_avx512_and_portable_edge_loops_agree(generator):
    """The hand-written AVX-512 edge loop (where the CPU has it) and the portable one evaluate the same header
    maths: on a NISP batch whose z reach both coverage limits they agree to a float32 rounding of the row."""
    if not _native._C.redshift_resample_cpu_uses_avx512():
        pytest.skip("this CPU runs the portable edge loop only")
    library = random_library(generator, n_seds=17)
    edges = nisp_edges()
    z_min, z_max = library.z_range(edges)
    z = z_min + (z_max - z_min) * torch.rand(301, dtype=torch.float64, generator=generator)
    z[:2] = torch.tensor([z_min, z_max], dtype=torch.float64)
    sed_index = torch.randint(0, 17, (301,), generator=generator)
    fast = run_cpu_kernel(library, sed_index, z, edges, allow_avx512=True)
    portable = run_cpu_kernel(library, sed_index, z, edges, allow_avx512=False)
    scale = portable.abs().amax(dim=-1, keepdim=True)
    assert torch.all((fast - portable).abs() <= 2.5e-7 * scale)


def test_z_at_the_coverage_limits_is_served_exactly(generator):
    library = random_library(generator, n_seds=3)
    edges = nisp_edges()
    z_min, z_max = library.z_range(edges)
    z = torch.tensor([z_min, z_max, z_min, z_max], dtype=torch.float64)
    sed_index = torch.tensor([0, 1, 2, 0])
    out = library.redshift_resample(sed_index, z, edges)
    assert torch.isfinite(out).all()
    assert_float32_close(out, reference(library, sed_index, z, edges))
    # One step beyond either limit is refused, naming the z.
    for beyond in (z_min - 1e-6, z_max + 1e-6):
        with pytest.raises(ValueError, match=r"z\[0\] = .* is outside the redshifts this library can serve"):
            library.redshift_resample(torch.tensor([0]), torch.tensor([beyond], dtype=torch.float64), edges)


def test_explicit_fill_for_uncovered_bins(generator):
    library = random_library(generator, n_seds=4)
    edges = nisp_edges()
    z = torch.tensor([0.5, 1.4, 2.6, 0.9], dtype=torch.float64)  # 0.5 and 2.6 leave the rest coverage
    sed_index = torch.tensor([0, 1, 2, 3])
    out = library.redshift_resample(sed_index, z, edges, fill=-1.0)
    expected = reference(library, sed_index, z, edges, fill=-1.0)
    assert (out[0] == -1.0).any() and (out[2] == -1.0).any() and not (out[1] == -1.0).any()
    assert torch.equal(out == -1.0, expected == -1.0)
    assert_float32_close(out, expected)


def test_unchecked_call_never_reads_out_of_bounds(generator):
    library = random_library(generator, n_seds=4)
    edges = nisp_edges()
    sed_index = torch.tensor([0, 4, -1, 2])
    z = torch.tensor([1.2, 1.3, 1.4, 5.0], dtype=torch.float64)
    out = library.redshift_resample(sed_index, z, edges, check=False)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()  # bad sed_index: whole row is fill (NaN)
    assert torch.isnan(out[3]).all()  # z = 5 lies beyond the rest grid for every bin
    torch.testing.assert_close(out, reference(library, sed_index, z, edges), equal_nan=True)


@pytest.mark.parametrize("allow_avx512", [True, False], ids=["edge-loop-auto", "edge-loop-portable"])
def test_unchecked_nan_and_huge_z_stay_in_bounds(generator, allow_avx512):
    """With validation off, NaN/inf/huge z give garbage or fill but never a read outside the library."""
    library = random_library(generator, n_seds=2)
    z = torch.tensor([math.nan, math.inf, 1e300, -0.9999, 1.3], dtype=torch.float64)
    out = run_cpu_kernel(library, torch.tensor([0, 1, 0, 1, 0]), z, nisp_edges(), allow_avx512=allow_avx512)
    assert out.shape == (5, 512) and not (out == SENTINEL).any()
    assert_float32_close(out[4:], reference(library, torch.tensor([0]), z[4:], nisp_edges()))


def test_native_input_stats_match_the_torch_path(generator, monkeypatch):
    module = importlib.import_module("zfast.ops.redshift_resample")

    z = torch.rand(1001, dtype=torch.float64, generator=generator) * 3 - 0.5
    z[torch.randint(0, 1001, (7,), generator=generator)] = math.nan
    z[3] = math.inf
    z[5] = -math.inf
    sed_index = torch.randint(-5, 100, (1001,), generator=generator)
    native = module._value_stats(z, sed_index)
    monkeypatch.setattr(module._native, "native_backend", lambda device: None)
    assert module._value_stats(z, sed_index) == native
    finite = z[torch.isfinite(z)]
    assert native == (int((~torch.isfinite(z)).sum()), finite.min().item(), finite.max().item(),
                      int(sed_index.min()), int(sed_index.max()))  # fmt: skip


# --- op machinery ------------------------------------------------------------------------------------------
def op_arguments(library, sed_index, z, edges, fill=None, check=True):
    return (library.cumulative, sed_index, z, edges, library.ln_edge0, library.dln, fill, check)


def test_opcheck(generator):
    library = random_library(generator, n_seds=5)
    edges = random_edges(generator, 12060.0, 18920.0, 45)
    for z_dtype, index_dtype in ((torch.float32, torch.int64), (torch.float64, torch.int32)):
        z = (1.0 + 0.7 * torch.rand(9, dtype=torch.float64, generator=generator)).to(z_dtype)
        sed_index = torch.randint(0, 5, (9,), generator=generator).to(index_dtype)
        torch.library.opcheck(torch.ops.zfast.redshift_resample.default, op_arguments(library, sed_index, z, edges))
    torch.library.opcheck(
        torch.ops.zfast.redshift_resample.default, op_arguments(library, sed_index, z, edges, fill=0.0, check=False)
    )


def test_torch_compile_fullgraph(generator):
    library = random_library(generator, n_seds=5)
    edges = nisp_edges()

    def observe(sed_index, z):
        spectra = library.redshift_resample(sed_index, z, edges)
        return spectra / spectra.mean(dim=1, keepdim=True)

    compiled = torch.compile(observe, fullgraph=True)
    sed_index = torch.randint(0, 5, (33,), generator=generator)
    z = 1.0 + 0.8 * torch.rand(33, generator=generator)
    torch.testing.assert_close(compiled(sed_index, z), observe(sed_index, z))


def test_grid_changed_in_place_is_not_served_from_the_cache(generator):
    library = random_library(generator, n_seds=3)
    edges = nisp_edges()
    sed_index, z = torch.tensor([0, 1, 2]), torch.tensor([1.1, 1.4, 1.7])
    before = library.redshift_resample(sed_index, z, edges)
    assert torch.equal(library.redshift_resample(sed_index, z, edges), before)  # cached tables, same answer
    edges.mul_(1.01)
    after = library.redshift_resample(sed_index, z, edges)
    assert_float32_close(after, reference(library, sed_index, z, edges))
    assert not torch.equal(after, before)


def test_empty_batch_returns_empty(generator):
    library = random_library(generator, n_seds=2)
    out = library.redshift_resample(torch.zeros(0, dtype=torch.int64), torch.zeros(0), nisp_edges())
    assert out.shape == (0, 512) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "sed_index, z, match, error",
    [
        (torch.tensor([0, 1]), torch.tensor([1.2, -0.1]), r"z must be >= 0.*got z\[1\] = -0.1", ValueError),
        (torch.tensor([0, 1]), torch.tensor([1.2, math.nan]), r"non-finite.*z\[1\] = nan", ValueError),
        (torch.tensor([0, 1]), torch.tensor([math.inf, 1.0]), r"non-finite.*z\[0\] = inf", ValueError),
        (
            torch.tensor([0, 3]),
            torch.tensor([1.2, 1.3]),
            r"sed_index must lie in \[0, 3\).*sed_index\[1\] = 3",
            ValueError,
        ),
        (torch.tensor([-1, 0]), torch.tensor([1.2, 1.3]), r"sed_index\[0\] = -1", ValueError),
        (torch.tensor([0, 1]), torch.tensor([1.2, 3.5]), r"z\[1\] = 3.5 is outside.*pass fill=", ValueError),
        (torch.tensor([0, 1, 2]), torch.tensor([1.2, 1.3]), "same length", ValueError),
        (torch.tensor([[0, 1]]), torch.tensor([[1.2, 1.3]]), "1-D", ValueError),
        (torch.tensor([0.0, 1.0]), torch.tensor([1.2, 1.3]), "sed_index must be int32 or int64", TypeError),
        (torch.tensor([0, 1]), torch.tensor([1, 2]), "z must be float32 or float64", TypeError),
        ([0, 1], torch.tensor([1.2, 1.3]), "sed_index must be a torch.Tensor", TypeError),
        (torch.tensor([0, 1]), torch.tensor([1.2, 1.3], device="meta"), "z is on meta", ValueError),
    ],
)
def test_bad_inputs_raise_clear_errors(generator, sed_index, z, match, error):
    library = random_library(generator, n_seds=3)
    with pytest.raises(error, match=match):
        library.redshift_resample(sed_index, z, nisp_edges())


@pytest.mark.parametrize(
    "edges, match",
    [
        (torch.tensor([12060.0]), "M\\+1 >= 2"),
        (
            torch.tensor([12060.0, 12080.0, 12070.0, 12090.0]),
            r"wave_edges must be strictly increasing; wave_edges\[2\]",
        ),
        (torch.tensor([12060.0, math.nan, 12090.0]), "wave_edges has 1 non-finite"),
        (torch.tensor([-1.0, 12080.0, 12090.0]), "wave_edges must be positive"),
        (torch.tensor([[12060.0, 12070.0]]), "1-D"),
        (torch.arange(3.0, device="meta") + 12060, "wave_edges is on meta"),
    ],
)
def test_bad_grids_raise_clear_errors(generator, edges, match):
    library = random_library(generator, n_seds=2)
    with pytest.raises(ValueError, match=match):
        library.redshift_resample(torch.tensor([0]), torch.tensor([1.2]), edges)


# --- CUDA (compared with the CPU path) ---------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("batch,n_bins", [(1, 512), (257, 511), (4096, 512), (5, 3)])
def test_cuda_matches_cpu(generator, batch, n_bins):
    library = random_library(generator, n_seds=40)
    edges = random_edges(generator, 12060.0, 18920.0, n_bins)
    z_min, z_max = library.z_range(edges)
    z = z_min + (z_max - z_min) * torch.rand(batch, dtype=torch.float64, generator=generator)
    z[0] = z_min
    sed_index = torch.randint(0, 40, (batch,), generator=generator)
    expected = library.redshift_resample(sed_index, z, edges)
    on_gpu = library.to("cuda")
    out = on_gpu.redshift_resample(sed_index.cuda(), z.cuda(), edges.cuda())
    assert out.device.type == "cuda"
    assert_float32_close(out.cpu(), expected)


@requires_cuda
def test_cuda_launches_on_torchs_current_stream(generator):
    """The input is written on a side stream after a long sleep; a kernel launched on any other stream would
    run at once and read the placeholder instead."""
    library = random_library(generator, n_seds=8).to("cuda")
    edges = nisp_edges().cuda()
    sed_index = torch.randint(0, 8, (4096,), generator=generator).cuda()
    z = (1.0 + 0.8 * torch.rand(4096, generator=generator)).cuda()
    expected = library.redshift_resample(sed_index, z, edges)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        z_late = torch.full_like(z, 1.25)  # the placeholder
        torch.cuda._sleep(100_000_000)
        z_late.copy_(z)
        out = library.redshift_resample(sed_index, z_late, edges, check=False)  # no host sync
    stream.synchronize()
    torch.testing.assert_close(out, expected)


@requires_cuda
def test_cuda_unchecked_bad_rows_are_fill(generator):
    library = random_library(generator, n_seds=4).to("cuda")
    sed_index = torch.tensor([0, 9, -3], device="cuda")
    z = torch.tensor([1.2, 1.2, 1.2], device="cuda")
    out = library.redshift_resample(sed_index, z, nisp_edges().cuda(), fill=-7.0, check=False)
    assert torch.isfinite(out[0]).all() and (out[0] != -7.0).all()
    assert (out[1:] == -7.0).all()
