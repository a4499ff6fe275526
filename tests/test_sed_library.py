"""SEDLibrary construction: log-uniform detection, resampling of other grids, validation, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zfast
from conftest import log_uniform_centres, nisp_edges, random_library
from zfast.ops.rebin import cumulative_at


def test_log_uniform_input_is_kept_with_geometric_edges(generator):
    wave = log_uniform_centres(3500.0, 10500.0, 1 / 2000)
    flux = torch.rand(3, wave.numel(), dtype=torch.float64, generator=generator) + 0.1
    library = zfast.SEDLibrary(wave, flux)
    assert library.n_pixels == wave.numel() and len(library) == 3
    assert math.isclose(library.dln, 1 / 2000, rel_tol=1e-9)
    torch.testing.assert_close(library.wavelength, wave, rtol=1e-12, atol=0.0)
    edges = library.edges
    torch.testing.assert_close(edges[1:-1], torch.sqrt(wave[1:] * wave[:-1]), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(library.flux, flux, rtol=1e-10, atol=0.0)
    assert library.cumulative.dtype == torch.float64 and library.cumulative.shape == (3, wave.numel() + 1)
    expected_total = (flux * (edges[1:] - edges[:-1])).sum(dim=1)
    torch.testing.assert_close(library.cumulative[:, -1], expected_total, rtol=1e-12, atol=0.0)


def test_float32_log_uniform_wavelengths_are_recognised(generator):
    wave = log_uniform_centres(3500.0, 10500.0, 1 / 2000).to(torch.float32)
    library = zfast.SEDLibrary(wave, torch.rand(2, wave.numel(), generator=generator) + 0.1)
    assert library.n_pixels == wave.numel()


def test_linear_grid_is_resampled_conserving_flux(generator):
    wave = torch.linspace(3500.0, 10500.0, 3001, dtype=torch.float64)  # 2.33 Å pixels, not log-uniform
    flux = torch.rand(4, 3001, dtype=torch.float64, generator=generator) + 0.1
    library = zfast.SEDLibrary(wave, flux)
    edges_in = zfast.ops.pixel_edges(wave)
    ln_steps = torch.diff(torch.log(wave))
    assert math.isclose(library.dln, ln_steps.min().item(), rel_tol=1e-12)
    assert library.edges[0] >= edges_in[0] * (1 - 1e-12) and library.edges[-1] <= edges_in[-1] * (1 + 1e-12)
    assert library.edges[-1] > edges_in[-1] - 3.0  # the grid reaches to within one pixel of the end
    # The flux over the new grid's span equals the input's integral over the same span.
    span = cumulative_at(flux, edges_in, library.edges[[0, -1]])
    torch.testing.assert_close(library.cumulative[:, -1], span[:, 1] - span[:, 0], rtol=1e-10, atol=0.0)


def test_explicit_dln_resamples(generator):
    wave = log_uniform_centres(3500.0, 10500.0, 1 / 6000)
    flux = torch.rand(2, wave.numel(), dtype=torch.float64, generator=generator) + 0.1
    library = zfast.SEDLibrary(wave, flux, dln=1 / 2000)
    assert library.dln == 1 / 2000
    assert abs(library.n_pixels - wave.numel() / 3) < 2


def test_numpy_inputs_and_float16_flux(generator):
    wave = log_uniform_centres(3500.0, 10500.0, 1 / 2000).numpy()
    flux = (np.random.default_rng(0).random((2, wave.size)) + 0.5).astype(np.float16)
    library = zfast.SEDLibrary(wave, flux)
    torch.testing.assert_close(library.flux, torch.from_numpy(flux).double(), rtol=1e-9, atol=0.0)


def test_to_returns_self_on_the_same_device_and_moves_otherwise(generator):
    library = random_library(generator, n_seds=2)
    assert library.to("cpu") is library
    moved = library.to("meta")
    assert moved.cumulative.device.type == "meta" and moved.dln == library.dln and moved.ln_edge0 == library.ln_edge0


def test_z_range_of_the_paper_setup(generator):
    library = random_library(generator, n_seds=1)  # 3500-10500 Å rest
    z_min, z_max = library.z_range(nisp_edges())
    rest_lo, rest_hi = library.edges[[0, -1]].tolist()
    assert math.isclose(z_min, 18920.8 / rest_hi - 1, rel_tol=1e-6)
    assert math.isclose(z_max, 12060.0 / rest_lo - 1, rel_tol=1e-6)
    assert z_min < 1.0 and z_max > 1.8  # covers the paper's 1 <= z < 1.8


def test_repr_is_informative(generator):
    text = repr(random_library(generator, n_seds=3))
    assert "3 SEDs" in text and "1/2000" in text and "cpu" in text


@pytest.mark.parametrize(
    "wave, flux, error, match",
    [
        ([1.0, 2.0, 3.0], [[1.0, math.nan, 1.0]], ValueError, r"non-finite.*rows.*\[0\]"),
        ([1.0, 2.0, 3.0], [[1.0, 1.0, 1.0], [1.0, math.inf, 1.0]], ValueError, r"non-finite.*\[1\]"),
        ([1.0, 3.0, 2.0], [[1.0, 1.0, 1.0]], ValueError, "strictly increasing"),
        ([1.0, 2.0, 2.0], [[1.0, 1.0, 1.0]], ValueError, "strictly increasing"),
        ([-1.0, 2.0, 3.0], [[1.0, 1.0, 1.0]], ValueError, "positive"),
        ([1.0, 2.0, 3.0], [[1.0, 1.0]], ValueError, r"\[S, N\] with N = len\(wavelength\) = 3"),
        ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], ValueError, r"\[S, N\]"),
        ([1.0, 2.0, 3.0], np.zeros((0, 3)), ValueError, "no SEDs"),
        ([1.0, 2.0, 3.0], [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], ValueError, r"all-zero SEDs, rows \[1\]"),
        ([1.0, 2.0, 3.0], [[1, 1, 1]], TypeError, "floating-point"),
        ([1.0, 10.0, 100.0], [[1.0, 1.0, 1.0]], ValueError, "too coarse"),
    ],
)
def test_bad_libraries_raise_clear_errors(wave, flux, error, match):
    with pytest.raises(error, match=match):
        zfast.SEDLibrary(np.asarray(wave, dtype=np.float64), np.asarray(flux) if not isinstance(flux, np.ndarray) else flux)
