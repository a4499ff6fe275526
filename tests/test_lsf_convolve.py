"""zfast.ops.lsf_convolve and zfast.ops.redshift_resample.render_templates (the template fit's rendering) against
independent references: an explicit float64 sum over clamped neighbours for the LSF, and the composition
redshift_resample -> Instrument.convolve_lsf (torch's conv1d) for the rendering; fresh random rows, odd lengths,
kernels wider than the row; plus opcheck and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zfast
from zfast import template_fit
from zfast.ops import lsf_convolve as lc
from zfast.ops.redshift_resample import render_templates, render_templates_available


def clamped_reference(x: torch.Tensor, kernel: torch.Tensor) -> np.ndarray:
    """out[j] = Σ_d x[clamp(j + d)]·kernel[h - d], in float64 numpy, one explicit index per term."""
    x, k = x.double().numpy(), kernel.double().numpy()
    h = (k.size - 1) // 2
    m = x.shape[1]
    out = np.zeros_like(x)
    for d in range(-h, h + 1):
        idx = np.clip(np.arange(m) + d, 0, m - 1)
        out += x[:, idx] * k[h - d]
    return out


def random_kernel(generator, half, dtype):
    k = torch.rand(2 * half + 1, generator=generator, dtype=torch.float64) + 0.1  # not symmetric: the flip matters
    return (k / k.sum()).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, half", [((1, 1), 0), ((3, 5), 2), ((7, 4), 3), ((33, 512), 6), ((5, 257), 1), ((2, 9), 9)])
def test_matches_clamped_reference(generator, dtype, shape, half):
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) + 2).to(dtype)
    kernel = random_kernel(generator, half, dtype)
    out = lc.lsf_convolve(x, kernel)
    out2, square = lc.lsf_convolve_square(x, kernel)
    expected = clamped_reference(x, kernel)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=tol, atol=tol)
    assert torch.equal(out, out2) and torch.equal(square, out * out)


def test_equals_instruments_torch_convolution(generator):
    """Instrument.convolve_lsf (replicate pad + conv1d, the spec) and the ops agree on the NISP kernel."""
    instrument = zfast.Instrument.preset("euclid-nisp-red")
    x = torch.rand(100, instrument.n_pixels, generator=generator) + 0.5
    kernel = instrument.lsf_kernel(dtype=torch.float32)
    torch.testing.assert_close(lc.lsf_convolve(x, kernel), instrument.convolve_lsf(x), rtol=2e-6, atol=1e-7)
    out, square = lc.lsf_convolve_square(x, kernel)
    torch.testing.assert_close(out, instrument.convolve_lsf(x), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(square, instrument.convolve_lsf(x).square(), rtol=5e-6, atol=1e-7)


def test_render_templates_is_resample_then_lsf(generator):
    library = zfast.SEDLibrary.default()
    instrument = zfast.Instrument.preset("euclid-nisp-red")
    assert render_templates_available(torch.device("cpu"))
    n = 131
    seds = torch.randint(0, len(library), (n,), generator=generator)
    z = 1.0 + 0.8 * torch.rand(n, generator=generator, dtype=torch.float64)
    kernel = instrument.lsf_kernel(dtype=torch.float32)
    templates, squares = render_templates(library.cumulative, seds, z, instrument.wave_edges, library.ln_edge0,
                                          library.dln, kernel)  # fmt: skip
    spec = instrument.convolve_lsf(library.redshift_resample(seds, z, instrument.wave_edges))
    torch.testing.assert_close(templates, spec, rtol=2e-6, atol=0.0)
    torch.testing.assert_close(squares, spec.square(), rtol=5e-6, atol=0.0)
    # the template fit's own entry point, and its fallback (what runs off the CPU)
    a, sa = template_fit.rendered(library, instrument, seds, z, instrument.wave_edges)
    assert torch.equal(a, templates) and torch.equal(sa, squares)
    # validation as redshift_resample's: a z the library cannot serve on this grid is named
    with pytest.raises(ValueError, match="outside the redshifts"):
        render_templates(library.cumulative, seds[:1], torch.tensor([9.0], dtype=torch.float64), instrument.wave_edges,
                         library.ln_edge0, library.dln, kernel)  # fmt: skip
    with pytest.raises(ValueError, match="lsf_kernel must be float32"):
        render_templates(library.cumulative, seds, z, instrument.wave_edges, library.ln_edge0, library.dln, kernel.double())


def test_opcheck_and_validation(generator):
    x = torch.rand(4, 11, generator=generator)
    kernel = random_kernel(generator, 2, torch.float32)
    torch.library.opcheck(torch.ops.zfast.lsf_convolve.default, (x, kernel))
    torch.library.opcheck(torch.ops.zfast.lsf_convolve_square.default, (x, kernel))
    library = zfast.SEDLibrary.default()
    instrument = zfast.Instrument.preset("euclid-nisp-red")
    args = (library.cumulative, torch.tensor([0, 5]), torch.tensor([1.2, 1.5], dtype=torch.float64), instrument.wave_edges,
            library.ln_edge0, library.dln, instrument.lsf_kernel(dtype=torch.float32))  # fmt: skip
    torch.library.opcheck(torch.ops.zfast.render_templates.default, args)
    with pytest.raises(ValueError, match="odd length"):
        lc.lsf_convolve(x, kernel[1:])
    with pytest.raises(ValueError, match="kernel must have x's dtype"):
        lc.lsf_convolve(x, kernel.double())
    with pytest.raises(ValueError, match=r"x must be \[B, M\]"):
        lc.lsf_convolve(x[0], kernel)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        lc.lsf_convolve(x.numpy(), kernel)


def test_threads_agree(generator):
    x = torch.rand(500, 300, generator=generator)
    kernel = random_kernel(generator, 5, torch.float32)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(lc.lsf_convolve(x, kernel))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
