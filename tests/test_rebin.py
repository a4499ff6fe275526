"""zfast.rebin: flux-conserving resampling, checked against spectres and physics invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zfast
from conftest import requires_cuda

spectres = pytest.importorskip("spectres")


def random_centres(generator, lo, hi, n):
    steps = 0.2 + torch.rand(n, dtype=torch.float64, generator=generator)
    centres = torch.cumsum(steps, 0)
    return lo + (hi - lo) * (centres - centres[0]) / (centres[-1] - centres[0])


def spectres_oracle(flux, wave_in, wave_out, fill):
    return spectres.spectres(wave_out.numpy(), wave_in.numpy(), flux.numpy(), fill=fill, verbose=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_in,n_out", [(2, 2), (17, 5), (1001, 333), (300, 997), (64, 64)])
def test_matches_spectres_on_random_grids(generator, dtype, n_in, n_out):
    wave_in = random_centres(generator, 4000.0, 9000.0, n_in)
    # The output grid pokes out of the input on the left, so edge bins must get the fill value too.
    wave_out = random_centres(generator, 3990.0, 8900.0, n_out)
    flux = (torch.rand(3, 2, n_in, dtype=torch.float64, generator=generator) * 10 - 1).to(dtype)
    out = zfast.rebin(flux, wave_in, wave_out, fill=-99.0)
    expected = spectres_oracle(flux.double(), wave_in, wave_out, fill=-99.0)
    assert out.dtype == dtype and out.shape == (3, 2, n_out)
    assert (out == -99.0).any() == bool((expected == -99.0).any())
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(2, 400),
    n_out=st.integers(2, 400),
    lo_out=st.floats(0.0, 0.5),
    hi_out=st.floats(0.5, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_spectres(n_in, n_out, lo_out, hi_out, seed):
    generator = torch.Generator().manual_seed(seed)
    wave_in = random_centres(generator, 1.0, 2.0, n_in)
    wave_out = random_centres(generator, 1.0 + lo_out, 1.0 + hi_out + 1e-3, n_out)
    flux = torch.randn(2, n_in, dtype=torch.float64, generator=generator)
    out = zfast.rebin(flux, wave_in, wave_out, fill=0.0)
    expected = spectres_oracle(flux, wave_in, wave_out, fill=0.0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-9 + 1e-5 * np.abs(expected).max())


def test_default_fill_is_nan_outside_and_covered_bins_are_finite(generator):
    wave_in = torch.linspace(5000, 6000, 101, dtype=torch.float64)
    wave_out = torch.linspace(4900, 6100, 61, dtype=torch.float64)
    out = zfast.rebin(torch.ones(101, dtype=torch.float64), wave_in, wave_out)
    edges_out = zfast.ops.pixel_edges(wave_out)
    inside = (edges_out[:-1] >= 4995) & (edges_out[1:] <= 6005)
    assert torch.isnan(out[~inside]).all()
    torch.testing.assert_close(out[inside], torch.ones_like(out[inside]))


def test_flux_of_a_narrow_line_is_conserved(generator):
    wave_in = torch.linspace(6000, 7000, 5001, dtype=torch.float64)  # 0.2 Å pixels
    flux = torch.zeros(5001, dtype=torch.float64)
    k = int(torch.randint(100, 4900, (1,), generator=generator))
    flux[k] = 7.0  # a line one input pixel wide: integrated flux 7 * 0.2
    wave_out = torch.linspace(6010, 6990, 77, dtype=torch.float64)  # edges 6003.6-6996.4 Å
    out = zfast.rebin(flux, wave_in, wave_out)
    edges_out = zfast.ops.pixel_edges(wave_out)
    total = (out * (edges_out[1:] - edges_out[:-1])).sum()
    assert math.isclose(total.item(), 7.0 * 0.2, rel_tol=1e-9)


def test_gradcheck_float64(generator):
    wave_in = random_centres(generator, 10.0, 20.0, 13)
    wave_out = random_centres(generator, 9.5, 19.0, 6)
    flux = torch.rand(2, 13, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: zfast.rebin(f, wave_in, wave_out, fill=0.0), (flux,))
    assert torch.autograd.gradgradcheck(lambda f: zfast.rebin(f, wave_in, wave_out, fill=0.0), (flux,))


def test_opcheck(generator):
    wave_in = random_centres(generator, 10.0, 20.0, 31)
    wave_out = random_centres(generator, 11.0, 19.0, 9)
    for dtype in (torch.float32, torch.float64):
        flux = torch.rand(4, 31, generator=generator).to(dtype).requires_grad_()
        torch.library.opcheck(torch.ops.zfast.rebin.default, (flux, wave_in, wave_out, math.nan))


def test_torch_compile_fullgraph_forward_and_backward(generator):
    wave_in = random_centres(generator, 10.0, 20.0, 50)
    wave_out = random_centres(generator, 11.0, 19.0, 20)

    def resampled_energy(flux):
        return zfast.rebin(flux, wave_in, wave_out).pow(2).sum()

    compiled = torch.compile(resampled_energy, fullgraph=True)
    flux = torch.rand(3, 50, dtype=torch.float64, generator=generator, requires_grad=True)
    eager_value = resampled_energy(flux)
    (eager_grad,) = torch.autograd.grad(eager_value, flux)
    value = compiled(flux)
    (grad,) = torch.autograd.grad(value, flux)
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grad, eager_grad)


def test_empty_batch_returns_empty():
    out = zfast.rebin(torch.zeros(0, 5), torch.arange(5.0), torch.arange(3.0) + 1)
    assert out.shape == (0, 3)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: zfast.rebin(torch.tensor([1.0, math.nan, 3.0]), [1, 2, 3], [1.5, 2.5]), ValueError, "non-finite"),
        (lambda: zfast.rebin(torch.tensor([1.0, math.inf, 3.0]), [1, 2, 3], [1.5, 2.5]), ValueError, "non-finite"),
        (lambda: zfast.rebin(torch.ones(3), [1, 3, 2], [1.5, 2.5]), ValueError, "strictly increasing"),
        (lambda: zfast.rebin(torch.ones(3), [1, 2, 3], [2.5, 1.5]), ValueError, "wave_out must be strictly increasing"),
        (lambda: zfast.rebin(torch.ones(3), [1, 2, math.nan], [1.5, 2.5]), ValueError, "non-finite"),
        (lambda: zfast.rebin(torch.ones(4), [1, 2, 3], [1.5, 2.5]), ValueError, "last dimension must match"),
        (lambda: zfast.rebin(torch.ones(3, dtype=torch.int64), [1, 2, 3], [1.5, 2.5]), TypeError, "float32 or float64"),
        (lambda: zfast.rebin(np.ones(3), [1, 2, 3], [1.5, 2.5]), TypeError, "torch.Tensor"),
        (lambda: zfast.rebin(torch.ones(1), [1.0], [1.5, 2.5]), ValueError, "at least 2"),
        (lambda: zfast.rebin(torch.ones(3), [[1, 2, 3]], [1.5, 2.5]), ValueError, "1-D"),
        (lambda: zfast.rebin(torch.ones(3), torch.arange(3.0, device="meta"), [1.5, 2.5]), ValueError, "is on meta"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


@requires_cuda
def test_cuda_matches_cpu(generator):
    wave_in = random_centres(generator, 4000.0, 9000.0, 777)
    wave_out = random_centres(generator, 3990.0, 8900.0, 301)
    flux = torch.rand(5, 777, generator=generator)
    expected = zfast.rebin(flux, wave_in, wave_out)
    out = zfast.rebin(flux.cuda(), wave_in.cuda(), wave_out.cuda())
    torch.testing.assert_close(out.cpu(), expected, equal_nan=True)
