"""zfast.jsd_entropy: the maths against scipy and its invariants, native kernels vs the float64 reference,
op machinery (gradcheck, opcheck, torch.compile) and validation."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zfast
from conftest import requires_cuda
from zfast import _native
from zfast.ops.jsd_entropy import jsd_entropy_reference

SENTINEL = -12345.0
jsd_module = importlib.import_module("zfast.ops.jsd_entropy")
LN2 = math.log(2.0)


# --- inputs ------------------------------------------------------------------------------------------------
def random_logits(generator, batch, n_classes, scale=3.0, dtype=torch.float32):
    return (scale * torch.randn(batch, n_classes, dtype=torch.float64, generator=generator)).to(dtype)


def random_target(generator, batch, n_classes, kind="soft", dtype=torch.float32):
    """Rows summing to 1: "soft" (all > 0), "zeros" (about half the classes 0), "onehot", or "box" (a
    contiguous run of equal values, the soft labels of the paper)."""
    if kind == "onehot":
        index = torch.randint(0, n_classes, (batch,), generator=generator)
        return torch.nn.functional.one_hot(index, n_classes).to(dtype)
    if kind == "box":
        width = torch.randint(1, min(n_classes, 7) + 1, (batch,), generator=generator)
        start = (torch.rand(batch, dtype=torch.float64, generator=generator) * (n_classes - width + 1)).long()
        c = torch.arange(n_classes)
        inside = (c >= start[:, None]) & (c < (start + width)[:, None])
        return (inside / width[:, None]).to(dtype)
    weights = torch.rand(batch, n_classes, dtype=torch.float64, generator=generator) ** 3
    if kind == "zeros":
        keep = torch.rand(batch, n_classes, generator=generator) < 0.5
        keep[torch.arange(batch), torch.randint(0, n_classes, (batch,), generator=generator)] = True
        weights = weights.clamp_min(1e-3) * keep
    else:
        weights = weights + 1e-3
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)


# --- references --------------------------------------------------------------------------------------------
def reference_rows(logits, target, lambda_js=0.85, lambda_ent=0.15, dtype=torch.float64):
    """(loss [B], dloss_b/dlogits [B, C]) of the reference in ``dtype``, the gradient by autograd."""
    x = logits.detach().to(dtype).requires_grad_()
    loss = jsd_entropy_reference(x, target.to(dtype), lambda_js, lambda_ent, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def assert_matches_reference(loss, grad, logits, target, lambda_js=0.85, lambda_ent=0.15):
    """float64 results: close to the float64 reference. float32 results: an error at most a few times the one
    PyTorch itself makes in float32 on the same inputs (plus a floor of a few float32 ulps of the row)."""
    expected_loss, expected_grad = reference_rows(logits, target, lambda_js, lambda_ent)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    if loss.dtype == torch.float64:
        torch.testing.assert_close(loss, expected_loss, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
        return
    torch_loss, torch_grad = reference_rows(logits.float(), target.float(), lambda_js, lambda_ent, torch.float32)
    comparisons = (("loss", loss, expected_loss, torch_loss), ("grad", grad, expected_grad, torch_grad))
    for name, out, expected, pytorch in comparisons:
        error = (out.double() - expected).abs().max().item()
        pytorch_error = (pytorch.double() - expected).abs().max().item()
        floor = 4e-7 * max(1.0, expected.abs().max().item())
        assert error <= 4 * pytorch_error + floor, f"{name}: error {error:.3g}, PyTorch's float32 {pytorch_error:.3g}"


def run_cpu_kernel(logits, target, lambda_js=0.85, lambda_ent=0.15, n_threads=2, stats=True, grad_scale=1.0):
    """The raw C++ launcher on loss/grad/stats buffers pre-filled with a sentinel (an unwritten element shows)."""
    dtype = logits.dtype
    batch, n_classes = logits.shape
    loss = torch.full((batch,), SENTINEL, dtype=dtype)
    grad = torch.full((batch, n_classes), SENTINEL, dtype=dtype)
    row_stats = torch.full((batch, 3), SENTINEL, dtype=dtype)
    _native._C.jsd_entropy_cpu(
        logits.data_ptr(), target.data_ptr(), batch, n_classes, lambda_js, lambda_ent, grad_scale, loss.data_ptr(),
        grad.data_ptr(), row_stats.data_ptr() if stats else 0, dtype == torch.float64, n_threads,
    )  # fmt: skip
    return loss, grad, row_stats


# --- the maths ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_scipy_jensenshannon_and_entropy(generator, dtype):
    logits = random_logits(generator, 40, 80, dtype=dtype)
    target = random_target(generator, 40, 80, kind="zeros", dtype=dtype)
    js = zfast.jsd_entropy(logits, target, lambda_js=1.0, lambda_ent=0.0, reduction="none")
    entropy = zfast.jsd_entropy(logits, target, lambda_js=0.0, lambda_ent=1.0, reduction="none")
    p = torch.softmax(logits.double(), dim=1).numpy()
    q = target.double().numpy()
    expected_js = scipy.spatial.distance.jensenshannon(p, q, axis=1) ** 2  # base e; scipy returns sqrt(JS)
    expected_entropy = scipy.stats.entropy(p, axis=1)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(js.double().numpy(), expected_js, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(entropy.double().numpy(), expected_entropy, rtol=tolerance, atol=tolerance)
    combined = zfast.jsd_entropy(logits, target, reduction="none")
    expected = 0.85 * expected_js + 0.15 * expected_entropy
    np.testing.assert_allclose(combined.double().numpy(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_js_of_a_distribution_with_itself_is_zero(generator, dtype):
    logits = random_logits(generator, 16, 300, dtype=dtype)
    target = torch.softmax(logits.double(), dim=1).to(dtype)
    js = zfast.jsd_entropy(logits, target, lambda_js=1.0, lambda_ent=0.0, reduction="none")
    assert js.abs().max().item() <= 8 * torch.finfo(dtype).eps  # cancellation of ln P - ln M, ~1 ulp each


@pytest.mark.parametrize("n_classes", [1, 2, 80, 800])
def test_entropy_of_uniform_is_ln_c(n_classes):
    logits = torch.full((3, n_classes), 7.5, dtype=torch.float64)
    target = torch.full((3, n_classes), 1.0 / n_classes, dtype=torch.float64)
    loss = zfast.jsd_entropy(logits, target, reduction="none")
    expected = torch.full((3,), 0.15 * math.log(n_classes), dtype=torch.float64)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-13)


def test_js_is_at_most_ln2_and_reaches_it_for_disjoint_supports(generator):
    logits = random_logits(generator, 200, 80, scale=30.0, dtype=torch.float64)
    target = random_target(generator, 200, 80, kind="onehot", dtype=torch.float64)
    js = zfast.jsd_entropy(logits, target, lambda_js=1.0, lambda_ent=0.0, reduction="none")
    assert (js >= 0).all() and (js <= LN2 + 1e-15).all()
    # P all on class 0 (the others underflow), Q all on class 1.
    logits = torch.tensor([[1e4, -1e4, 0.0], [0.0, -900.0, -900.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    js = zfast.jsd_entropy(logits, target, lambda_js=1.0, lambda_ent=0.0, reduction="none")
    torch.testing.assert_close(js, torch.full((2,), LN2, dtype=torch.float64), rtol=0, atol=1e-15)


def test_gradcheck_float64_through_the_op(generator):
    logits = random_logits(generator, 4, 9, dtype=torch.float64).requires_grad_()
    target = random_target(generator, 4, 9, kind="zeros", dtype=torch.float64)
    weights = torch.rand(4, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda x: zfast.jsd_entropy(x, target, reduction="none") * weights, (logits,))
    assert torch.autograd.gradcheck(lambda x: zfast.jsd_entropy(x, target, 0.4, 0.6, reduction="sum"), (logits,))


# --- native kernel vs the float64 reference ----------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [1, 2, 80, 800, 1023])
@pytest.mark.parametrize("batch", [1, 67])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_cpu_kernel_matches_reference_and_writes_every_element(generator, n_classes, batch, dtype):
    for kind in ("soft", "zeros", "onehot", "box"):
        logits = random_logits(generator, batch, n_classes, dtype=dtype)
        target = random_target(generator, batch, n_classes, kind=kind, dtype=dtype)
        for n_threads in (1, 3):  # 67 x 1023 splits over threads; the rest runs on the caller
            loss, grad, stats = run_cpu_kernel(logits, target, n_threads=n_threads)
            assert not (loss == SENTINEL).any() and not (grad == SENTINEL).any() and not (stats == SENTINEL).any()
            assert_matches_reference(loss, grad, logits, target)
            torch.testing.assert_close(stats[:, 0], target.sum(dim=1))
            assert torch.equal(stats[:, 1], target.amin(dim=1)) and (stats[:, 2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_and_underflowing_p_where_q_is_positive(generator, dtype):
    batch, n_classes = 50, 80
    logits = torch.where(torch.rand(batch, n_classes, generator=generator) < 0.1, 1e4, -1e4).to(dtype)
    logits[:, 0] = 1e4  # every row has a winner, and the other +1e4 tie with it
    logits[:5] = random_logits(generator, 5, n_classes, scale=1e4, dtype=dtype)
    target = random_target(generator, batch, n_classes, kind="soft", dtype=dtype)  # Q > 0 where P underflows
    target[10:20] = random_target(generator, 10, n_classes, kind="onehot", dtype=dtype)
    loss, grad, _ = run_cpu_kernel(logits, target)
    assert_matches_reference(loss, grad, logits, target)


def one_hot_loss(target, winner, lambda_js=0.85):
    """Analytic loss when P is one-hot at `winner` (H = 0): λ_js JS(δ_k, Q) with M_k = (1 + Q_k)/2 and
    M_c = Q_c/2 elsewhere, in float64 numpy: independent of the kernels and of the torch reference."""
    q = target.double().numpy()
    k = winner.numpy()
    rows = np.arange(len(q))
    q_k = q[rows, k]
    others = q.copy()
    others[rows, k] = 0.0
    q_terms = others.sum(axis=1) * np.log(2.0)  # Q_c ln(Q_c / (Q_c/2)) for c != k
    m_k = 0.5 * (1.0 + q_k)
    q_k_term = q_k * np.log(np.maximum(q_k, 1e-300) / m_k)  # 0 where Q_k = 0
    js = 0.5 * np.log(1.0 / m_k) + 0.5 * (q_terms + q_k_term)
    return torch.from_numpy(lambda_js * js)


EXTREME_SCALES = [(torch.float32, s) for s in (1e19, 1e25, 1e30, 1e37, 3e38)] + [
    (torch.float64, s) for s in (1e250, 1e300, 1e306, 1.7e308)
]


@pytest.mark.parametrize("dtype, scale", EXTREME_SCALES)
@pytest.mark.parametrize("backend", ["kernel", "op", "torch"])
def test_huge_finite_logits_give_the_true_loss(generator, monkeypatch, dtype, scale, backend):
    """A diverging run's logits (|x| from 1e19 up to the dtype's limit, where x_c - max x overflows) must give
    the true loss: P is one-hot at the largest logit, so the loss is the analytic λ_js JS(δ_k, Q) >= 0, and the
    gradient is 0 (P(1 - P) = 0 everywhere). The CPU kernel once gave -78 at 1e25 and -8e6 at 1e30."""
    batch, n_classes = 24, 803
    limit = torch.finfo(dtype).max
    half = 0.5 * limit
    logits = (torch.randn(batch, n_classes, dtype=torch.float64, generator=generator) * scale).clamp(-half, half)
    winner = torch.randint(0, n_classes, (batch,), generator=generator)
    winner[:4] = torch.randint(2, n_classes, (4,), generator=generator)  # not under the -limit columns below
    logits[:4, :2] = -limit  # x_c - max x = -2 * limit: -inf unless floored
    logits[torch.arange(batch), winner] = limit  # a unique winner, far above the rest
    logits = logits.to(dtype)
    target = random_target(generator, batch, n_classes, kind="soft", dtype=dtype)
    target[12:] = random_target(generator, batch - 12, n_classes, kind="box", dtype=dtype)
    expected = one_hot_loss(target, winner)
    if backend == "kernel":
        loss, grad, _ = run_cpu_kernel(logits, target)
    else:
        if backend == "torch":
            monkeypatch.setattr(jsd_module._native, "native_backend", lambda device: None)
        x = logits.clone().requires_grad_()
        loss = zfast.jsd_entropy(x, target, reduction="none")
        loss.sum().backward()
        loss, grad = loss.detach(), x.grad
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    tolerance = 2e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=tolerance)
    assert grad.abs().max().item() <= tolerance


def test_tiny_positive_targets_stay_finite(generator):
    """Q_c = 1e-40 (a float32 subnormal) where P_c underflows: M_c = Q_c/2 is subnormal, ln M_c must be finite."""
    logits = torch.tensor([[0.0, 500.0, -500.0, 3.0]]).repeat(4, 1)
    target = torch.tensor([[1e-40, 0.5, 0.5 - 1e-40, 0.0]]).repeat(4, 1)
    loss, grad, _ = run_cpu_kernel(logits, target)
    assert_matches_reference(loss, grad, logits, target)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 9),
    n_classes=st.integers(1, 300),
    log10_scale=st.floats(-2.0, 4.0),
    kind=st.sampled_from(["soft", "zeros", "onehot", "box"]),
    lambdas=st.tuples(st.floats(0.0, 1.0), st.floats(-0.5, 1.0)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_native_matches_reference(batch, n_classes, log10_scale, kind, lambdas, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = random_logits(generator, batch, n_classes, scale=10.0**log10_scale, dtype=dtype)
    target = random_target(generator, batch, n_classes, kind=kind, dtype=dtype)
    loss, grad, _ = run_cpu_kernel(logits, target, *lambdas)
    assert_matches_reference(loss, grad, logits, target, *lambdas)


def test_non_contiguous_inputs_give_the_contiguous_result(generator):
    logits = random_logits(generator, 80, 30).t()  # [30, 80], column-major
    target = torch.zeros(30, 160)
    target[:, ::2] = random_target(generator, 30, 80)
    target = target[:, ::2]  # every other column of a wider tensor
    assert not logits.is_contiguous() and not target.is_contiguous()
    x = logits.clone().requires_grad_()  # clone keeps the strides
    loss = zfast.jsd_entropy(x, target, reduction="none")
    loss.sum().backward()
    assert_matches_reference(loss.detach(), x.grad, logits, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_logits_are_computed_in_float32(generator, dtype):
    logits = random_logits(generator, 20, 80, dtype=dtype).requires_grad_()
    target = random_target(generator, 20, 80, kind="zeros").to(dtype)  # also a 16-bit target
    target = target.float() / target.float().sum(dim=1, keepdim=True)
    loss = zfast.jsd_entropy(logits, target, reduction="none")
    loss.sum().backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    expected_loss, expected_grad = reference_rows(logits.float(), target)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-5, atol=1e-6)
    expected_grad = expected_grad.to(dtype).double()
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=0, atol=2 * torch.finfo(dtype).eps)


# --- the op: reductions, autograd, fallback, machinery -----------------------------------------------------
def test_reductions_and_module_form(generator):
    logits = random_logits(generator, 12, 80)
    target = random_target(generator, 12, 80, kind="box")
    rows = zfast.jsd_entropy(logits, target, reduction="none")
    assert rows.shape == (12,)
    torch.testing.assert_close(zfast.jsd_entropy(logits, target), rows.mean())
    torch.testing.assert_close(zfast.jsd_entropy(logits, target, reduction="sum"), rows.sum())
    module = zfast.JSDEntropyLoss(lambda_js=0.5, lambda_ent=0.25, reduction="sum")
    torch.testing.assert_close(module(logits, target), zfast.jsd_entropy(logits, target, 0.5, 0.25, "sum"))
    assert "lambda_js=0.5" in repr(module)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_backward_scales_the_saved_gradient_also_with_retain_graph(generator, reduction):
    logits = random_logits(generator, 10, 80, dtype=torch.float64).requires_grad_()
    target = random_target(generator, 10, 80, kind="zeros", dtype=torch.float64)
    rows_grad = reference_rows(logits, target)[1]
    weights = torch.randn(10, dtype=torch.float64, generator=generator)
    per_row = {"none": weights, "mean": torch.full((10,), 3.0 / 10, dtype=torch.float64), "sum": torch.ones(10)}
    expected = rows_grad * per_row[reduction].double()[:, None]
    loss = zfast.jsd_entropy(logits, target, reduction=reduction)
    loss = (loss * weights).sum() if reduction == "none" else 3 * loss if reduction == "mean" else loss
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)  # frees the graph: may reuse the saved buffer
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    # loss.backward() of a plain mean: the saved gradient is handed over as is.
    x = logits.detach().clone().requires_grad_()
    zfast.jsd_entropy(x, target).backward()
    torch.testing.assert_close(x.grad, rows_grad / 10)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(zfast.jsd_entropy(logits, target), logits, create_graph=True)


def test_grad_scale_of_the_raw_kernel(generator):
    logits = random_logits(generator, 7, 80)
    target = random_target(generator, 7, 80, kind="box")
    loss, grad, _ = run_cpu_kernel(logits, target)
    scaled_loss, scaled_grad, _ = run_cpu_kernel(logits, target, grad_scale=1 / 7)
    assert torch.equal(scaled_loss, loss)
    torch.testing.assert_close(scaled_grad, grad / 7)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_reference_fallback_matches_native(generator, monkeypatch, reduction):
    logits = random_logits(generator, 33, 80)
    target = random_target(generator, 33, 80, kind="zeros")
    results = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(jsd_module._native, "native_backend", lambda device: None)
        x = logits.clone().requires_grad_()
        loss = zfast.jsd_entropy(x, target, reduction=reduction)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[1], results[0])
    with pytest.raises(ValueError, match="row 3 sums to"):
        zfast.jsd_entropy(logits, torch.where(torch.arange(33)[:, None] == 3, 2 * target, target))


def test_native_stats_match_the_torch_path(generator, monkeypatch):
    logits = random_logits(generator, 33, 80)
    target = random_target(generator, 33, 80, kind="zeros")
    logits[5, 7] = math.nan
    target[9, 2] = math.inf
    target[12, 0] = -0.5
    _, _, native_stats = run_cpu_kernel(logits, target)
    torch_stats = jsd_module._torch_stats(logits, target)
    assert torch.equal(native_stats[:, 2], torch_stats[:, 2])
    finite = torch_stats[:, 2] == 0
    torch.testing.assert_close(native_stats[finite], torch_stats[finite])
    assert native_stats[:, 2].tolist().count(1.0) == 1 and native_stats[5, 2] == 1 and native_stats[9, 2] == 2
    assert jsd_module._stats_summary(native_stats)[:2] == (3, -0.5)  # OR of the codes, smallest target
    monkeypatch.setattr(jsd_module._native, "native_backend", lambda device: None)
    assert jsd_module._stats_summary(native_stats)[:2] == (3, -0.5)


def test_empty_batch():
    loss = zfast.jsd_entropy(torch.zeros(0, 80, requires_grad=True), torch.zeros(0, 80), reduction="none")
    assert loss.shape == (0,) and loss.dtype == torch.float32


def test_opcheck(generator):
    for dtype, check in ((torch.float32, True), (torch.float64, False), (torch.bfloat16, True)):
        logits = random_logits(generator, 5, 17, dtype=dtype).requires_grad_()
        target = random_target(generator, 5, 17, kind="zeros")
        for reduction in ("none", "mean"):
            torch.library.opcheck(torch.ops.zfast.jsd_entropy.default, (logits, target, 0.85, 0.15, reduction, check))


def test_torch_compile_fullgraph_forward_and_backward(generator):
    def loss_of(logits, target):
        return zfast.jsd_entropy(torch.tanh(logits) * 5, target)  # something to fuse around the op

    compiled = torch.compile(loss_of, fullgraph=True)
    logits = random_logits(generator, 16, 80)
    target = random_target(generator, 16, 80, kind="box")
    grads = []
    for function in (loss_of, compiled):
        x = logits.clone().requires_grad_()
        loss = function(x, target)
        loss.backward()  # through the backward graph AOTAutograd compiled
        grads.append((loss.detach(), x.grad))
    torch.testing.assert_close(grads[1], grads[0])
    bad = target.clone()
    bad[2, 0] = math.nan
    with pytest.raises(ValueError, match=r"target has non-finite values .* first rows \[2\]"):
        compiled(logits, bad)


# --- validation --------------------------------------------------------------------------------------------
def _bad(target_edit=None, logits_edit=None):
    logits = torch.randn(4, 5)
    target = torch.full((4, 5), 0.2)
    if target_edit:
        target_edit(target)
    if logits_edit:
        logits_edit(logits)
    return logits, target


BAD_INPUTS = {
    "shape mismatch": (
        lambda: (torch.randn(4, 5), torch.full((4, 6), 1 / 6)),
        ValueError, r"target must have logits' shape .*\(4, 5\), got \(4, 6\)",
    ),
    "1-D logits": (lambda: (torch.randn(5), torch.full((5,), 0.2)), ValueError, r"logits must be \[B, C\]"),
    "no classes": (lambda: (torch.randn(4, 0), torch.zeros(4, 0)), ValueError, r"C >= 1"),
    "negative target": (
        lambda: _bad(lambda t: t[2].copy_(torch.tensor([0.5, 0.6, -0.1, 0.0, 0.0]))),
        ValueError, r"target must hold probabilities \(>= 0\); row 2",
    ),
    "NaN target": (
        lambda: _bad(lambda t: t[1, 3].fill_(math.nan)),
        ValueError, r"target has non-finite values \(NaN/inf\) in 1 rows, first rows \[1\]",
    ),
    "inf logits": (
        lambda: _bad(logits_edit=lambda x: x[3, 0].fill_(math.inf)),
        ValueError, r"logits has non-finite values .* first rows \[3\]",
    ),
    "NaN logits": (
        lambda: _bad(logits_edit=lambda x: x[0, 0].fill_(math.nan)),
        ValueError, r"logits has non-finite values .* first rows \[0\]",
    ),
    "row sum 1.01": (
        lambda: _bad(lambda t: t[3].mul_(1.01)), ValueError, r"each row of target must sum to 1 .*; row 3 sums to 1.01"
    ),
    "row sum 1.0003": (lambda: _bad(lambda t: t[0, 0].add_(3e-4)), ValueError, r"row 0 sums to 1.0003"),
    "integer target": (
        lambda: (torch.randn(4, 5), torch.ones(4, 5, dtype=torch.int64)), TypeError, r"target must be a floating-point"
    ),
    "integer logits": (
        lambda: (torch.randint(0, 3, (4, 5)), torch.full((4, 5), 0.2)), TypeError, r"logits must be float16, bfloat16"
    ),
    "target on another device": (
        lambda: (torch.randn(4, 5), torch.full((4, 5), 0.2, device="meta")),
        ValueError, r"target is on meta but logits are on cpu",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case, error, match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_naming_the_argument(case, error, match):
    logits, target = case()
    with pytest.raises(error, match=match):
        zfast.jsd_entropy(logits, target)


def test_bad_arguments_and_check_false():
    logits, target = torch.randn(4, 5), torch.full((4, 5), 0.2)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        zfast.jsd_entropy(logits, target, reduction="batchmean")
    with pytest.raises(ValueError, match=r"lambda_ent must be a finite number"):
        zfast.jsd_entropy(logits, target, lambda_ent=math.nan)
    with pytest.raises(ValueError, match=r"target requires grad"):
        zfast.jsd_entropy(logits, target.clone().requires_grad_())
    # Unnormalised targets pass unchecked with check=False (the loss is then just the formula's value).
    unchecked = zfast.jsd_entropy(logits, 2 * target, check=False, reduction="none")
    assert unchecked.shape == (4,) and torch.isfinite(unchecked).all()


# --- CUDA ---------------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("n_classes", [1, 2, 80, 800, 1023, 1025, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(generator, n_classes, dtype):
    batch = 300
    logits = random_logits(generator, batch, n_classes, dtype=dtype)
    logits[:3] = random_logits(generator, 3, n_classes, scale=1e4, dtype=dtype)
    target = random_target(generator, batch, n_classes, kind="zeros", dtype=dtype)
    target[-50:] = random_target(generator, 50, n_classes, kind="onehot", dtype=dtype)
    x = logits.cuda().requires_grad_()
    weights = torch.randn(batch, dtype=dtype, generator=generator)
    loss = zfast.jsd_entropy(x, target.cuda(), reduction="none")
    (loss * weights.cuda()).sum().backward()
    assert loss.device.type == "cuda"
    cpu_loss, cpu_grad, _ = run_cpu_kernel(logits, target)
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(loss.detach().cpu(), cpu_loss, **tolerance)
    torch.testing.assert_close(x.grad.cpu(), cpu_grad * weights[:, None], **tolerance)
    mean_x = logits.cuda().requires_grad_()
    zfast.jsd_entropy(mean_x, target.cuda()).backward()  # the gradient scaled by 1/B in the kernel
    torch.testing.assert_close(mean_x.grad.cpu(), cpu_grad / batch, **tolerance)


@requires_cuda
def test_cuda_validation_and_stats(generator):
    logits = random_logits(generator, 64, 2000).cuda()
    target = random_target(generator, 64, 2000, kind="zeros").cuda()
    target[40, 7] = -1e-3
    with pytest.raises(ValueError, match=r"row 40"):
        zfast.jsd_entropy(logits, target)
    target[40, 7] = math.nan
    with pytest.raises(ValueError, match=r"target has non-finite values .* first rows \[40\]"):
        zfast.jsd_entropy(logits, target)


@requires_cuda
def test_cuda_launches_on_torchs_current_stream(generator):
    """The logits are written on a side stream after a long sleep; a kernel on any other stream would read
    the placeholder instead."""
    logits = random_logits(generator, 4096, 800).cuda()
    target = random_target(generator, 4096, 800, kind="zeros").cuda()
    expected = zfast.jsd_entropy(logits, target, reduction="none")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        late = torch.zeros_like(logits)
        torch.cuda._sleep(100_000_000)
        late.copy_(logits)
        out = zfast.jsd_entropy(late, target, reduction="none", check=False)  # no host sync
    stream.synchronize()
    torch.testing.assert_close(out, expected)
