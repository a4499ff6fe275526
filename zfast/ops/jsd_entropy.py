"""jsd_entropy: the Jensen-Shannon + entropy loss of a softmax over redshift bins (Vernardos et al. 2020).

For each row b of logits x[C] with target probabilities Q[C] (Q_c >= 0, Σ_c Q_c = 1, zeros allowed), in
natural logs:

    P = softmax(x),   M = (P + Q)/2
    JS(P, Q) = ½ Σ_c P_c ln(P_c/M_c) + ½ Σ_c Q_c ln(Q_c/M_c)        0 <= JS <= ln 2
    H(P)     = -Σ_c P_c ln P_c                                       0 <= H <= ln C
    L_b      = λ_js·JS + λ_ent·H                                     λ_js = 0.85, λ_ent = 0.15 by default

The entropy is *added*, so a sharper P is favoured. Gradient: ∂JS/∂P_c = ½ ln(P_c/M_c), ∂H/∂P_c =
-(ln P_c + 1); through the softmax, with g_c = λ_js·½ ln(P_c/M_c) - λ_ent·ln P_c,

    ∂L_b/∂x_c = P_c (g_c - Σ_k P_k g_k).

Stability: ln P comes from a max-subtracted log-sum-exp (never the log of a softmax that underflowed);
where Q_c = 0, ln(P_c/M_c) = ln 2 exactly and Q_c ln(Q_c/M_c) = 0 by explicit selects; where Q_c > 0,
M_c >= Q_c/2 > 0 so ln M_c is finite even when P_c underflows. Logits of ±1e4 are fine.

The custom op ``zfast::jsd_entropy`` returns the reduced loss and its gradient: the native kernels
(``csrc/jsd_entropy/``, the maths written once more in ``jsd_entropy.h``) compute the loss and write the
gradient, already multiplied by the reduction's 1/B for a mean, in one pass per row. The backward pass then
only multiplies that saved gradient by the incoming gradient, in place unless the graph is kept, and not at all
when that is 1 on the CPU (``loss.backward()``): the only B×C memory the loss adds is the gradient itself, and
the usual step makes no second pass over it (that pass cost 1.7 ms of a 4.7 ms step at B=4096, C=800 when the
reduction was applied outside the op). No second derivative (create_graph=True raises).
``jsd_entropy_reference`` below is the readable spec, the autograd-differentiable eager version, and the float64
oracle of the tests; ``_rows_reference`` (the same maths plus the closed-form gradient) is the fallback on
devices without a native kernel.

Conventions: ``logits`` is the prediction (pre-softmax), ``target`` the label distribution. Rows are
computed in float32 for float16/bfloat16/float32 logits and in float64 for float64 logits; the target is
converted to that dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _native

LN2 = math.log(2.0)
REDUCTIONS = ("none", "mean", "sum")
LOGITS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The kernels' per-row statistics are stats [B, 3] = (target sum, target minimum, non-finite code) (kStat* in
# jsd_entropy.h); the code is the sum of these flags:
NONFINITE_LOGITS, NONFINITE_TARGET = 1, 2
# Rows of target must sum to 1 within this much, plus the rounding of the target's dtype and of a C-term sum
# in the compute dtype (see ``target_sum_tolerance``).
TARGET_SUM_TOLERANCE = 1e-4


def compute_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """The dtype rows are computed and returned in: float64 for float64 logits, float32 otherwise."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def target_sum_tolerance(n_classes: int, target_dtype: torch.dtype, dtype: torch.dtype) -> float:
    """|Σ_c Q_c - 1| allowed for a row: 1e-4, plus 2 ulps of the target's dtype (each Q_c rounded by at most
    ½ ulp·Q_c, so the sum by ½ ulp), plus C ulps of the compute dtype for the summation."""
    return TARGET_SUM_TOLERANCE + 2 * torch.finfo(target_dtype).eps + n_classes * torch.finfo(dtype).eps


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """ln P floored at -1e30 (float32) or -1e300 (float64), as the kernels floor x_c - max x: for logits near
    the dtype's limit x_c - max x is -inf, and P ln P = 0·(-inf) would be NaN. P = exp(ln P) is 0 there anyway."""
    floor = -1e300 if logits.dtype == torch.float64 else -1e30
    return torch.log_softmax(logits, dim=-1).clamp_min(floor)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def jsd_entropy_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_js: float = 0.85,
    lambda_ent: float = 0.15,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pure-PyTorch λ_js·JS(P, Q) + λ_ent·H(P), P = softmax(logits); differentiable by autograd.

    Args:
        logits (Tensor[B, C]): unnormalised log-probabilities (the prediction).
        target (Tensor[B, C]): probabilities Q (rows sum to 1, zeros allowed). Not validated here.
        lambda_js (float): weight of JS. Default 0.85. lambda_ent (float): weight of H. Default 0.15.
        reduction (str): "none" (Tensor[B]), "mean" (default) or "sum" over rows.

    Returns:
        the loss in float64 for float64 logits, float32 otherwise.
    """
    dtype = compute_dtype(logits.dtype)
    log_p = _log_softmax(logits.to(dtype))
    p = log_p.exp()
    q = target.to(dtype)
    has_q = q > 0
    # Where Q_c = 0 the logs are taken of 1 and unused (no log 0, no NaN gradient through the masked branch).
    log_m = torch.log(torch.where(has_q, 0.5 * (p + q), 1.0))
    log_p_over_m = torch.where(has_q, log_p - log_m, LN2)
    log_q_over_m = torch.log(torch.where(has_q, q, 1.0)) - log_m
    js = 0.5 * (p * log_p_over_m).sum(dim=-1) + 0.5 * (q * log_q_over_m).sum(dim=-1)
    entropy = -(p * log_p).sum(dim=-1)
    return _reduce(lambda_js * js + lambda_ent * entropy, reduction)


def _rows_reference(logits, target, lambda_js, lambda_ent):
    """(loss [B], ∂loss_b/∂logits [B, C]) with plain torch ops: the fallback without a native kernel."""
    loss = jsd_entropy_reference(logits, target, lambda_js, lambda_ent, reduction="none")
    log_p = _log_softmax(logits)
    p = log_p.exp()
    has_q = target > 0
    log_p_over_m = torch.where(has_q, log_p - torch.log(torch.where(has_q, 0.5 * (p + target), 1.0)), LN2)
    g = 0.5 * lambda_js * log_p_over_m - lambda_ent * log_p
    return loss, p * (g - (p * g).sum(dim=-1, keepdim=True))


def _torch_stats(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The kernels' per-row statistics [B, 3] with torch ops (devices without a native kernel)."""
    nonfinite = (~torch.isfinite(logits)).any(dim=1) * NONFINITE_LOGITS
    nonfinite = nonfinite + (~torch.isfinite(target)).any(dim=1) * NONFINITE_TARGET
    return torch.stack([target.sum(dim=1), target.amin(dim=1), nonfinite.to(target.dtype)], dim=1)


def _stats_summary(stats: torch.Tensor) -> tuple[int, float, float]:
    """(OR of the non-finite codes, smallest target value, largest |row sum - 1|): one native pass on the CPU,
    one host sync elsewhere."""
    if stats.device.type == "cpu" and _native.native_backend(stats.device) == "cpu":
        float64 = stats.dtype == torch.float64
        return tuple(_native._C.jsd_entropy_stats_summary_cpu(stats.data_ptr(), stats.shape[0], float64))
    target_sum, target_min, nonfinite = stats.unbind(dim=1)
    codes = nonfinite.to(torch.int64)
    logits_code, target_code, lowest, worst_sum_error = torch.stack(
        [(codes & NONFINITE_LOGITS).amax(), (codes & NONFINITE_TARGET).amax(), target_min.amin(),
         (target_sum - 1).abs().amax()]
    ).tolist()  # fmt: skip
    return int(logits_code) | int(target_code), lowest, worst_sum_error


def _validate_stats(stats: torch.Tensor, n_classes: int, target_dtype: torch.dtype) -> None:
    """Raise ValueError naming the first bad row, from the per-row statistics [B, 3] (B >= 1)."""
    code, lowest, worst_sum_error = _stats_summary(stats)
    tolerance = target_sum_tolerance(n_classes, target_dtype, stats.dtype)
    if not code and lowest >= 0 and worst_sum_error <= tolerance:
        return
    target_sum, target_min, nonfinite = stats.unbind(dim=1)
    for flag, name in ((NONFINITE_LOGITS, "logits"), (NONFINITE_TARGET, "target")):
        if code & flag:
            rows = torch.nonzero((nonfinite.to(torch.int64) & flag) != 0).flatten()
            raise ValueError(
                f"{name} has non-finite values (NaN/inf) in {rows.numel()} rows, first rows {rows[:10].tolist()}"
            )
    if lowest < 0:
        b = int(torch.argmin(target_min))
        raise ValueError(
            f"target must hold probabilities (>= 0); row {b} has a negative value, its minimum is {lowest:.6g}"
        )
    b = int(torch.argmax((target_sum - 1).abs()))
    raise ValueError(
        f"each row of target must sum to 1 (within {tolerance:.2g}); row {b} sums to {target_sum[b].item():.8g}"
    )


def _check_tensors(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> None:
    """Static checks (shapes, dtypes, devices, reduction): also run on fake tensors under torch.compile."""
    if logits.dtype not in LOGITS_DTYPES:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating-point tensor of probabilities, got {target.dtype}")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [B, C] with C >= 1 classes, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have logits' shape [B, C] = {tuple(logits.shape)}, got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but logits are on {logits.device}; move one of them with .to(device)"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduced_shape(logits: torch.Tensor, reduction: str) -> tuple:
    return logits.shape[:1] if reduction == "none" else ()


@torch.library.custom_op("zfast::jsd_entropy", mutates_args=())
def _jsd_entropy_op(
    logits: torch.Tensor, target: torch.Tensor, lambda_js: float, lambda_ent: float, reduction: str, check: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ∂loss/∂logits [B, C]), both in the compute dtype; loss is [B] for reduction "none", else a scalar.

    The gradient is an output so that autograd can save it (it is marked non-differentiable); callers should
    ignore it: the backward pass scales it in place when the graph is not kept.
    """
    _check_tensors(logits, target, reduction)
    dtype = compute_dtype(logits.dtype)
    target_dtype = target.dtype
    # No copies when the inputs already are contiguous and of the compute dtype.
    logits = logits.to(dtype).contiguous()
    target = target.to(dtype).contiguous()
    batch, n_classes = logits.shape
    grad_scale = 1.0 / batch if reduction == "mean" and batch else 1.0
    if _native.native_backend(logits.device) is None:
        if check and batch:
            _validate_stats(_torch_stats(logits, target), n_classes, target_dtype)
        loss, grad = _rows_reference(logits, target, lambda_js, lambda_ent)
        return _reduce(loss, reduction), grad if grad_scale == 1.0 else grad.mul_(grad_scale)

    loss = torch.empty(batch, dtype=dtype, device=logits.device)
    grad = torch.empty_like(logits)
    if batch == 0:
        return _reduce(loss, reduction), grad
    stats = torch.empty((batch, 3), dtype=dtype, device=logits.device) if check else None
    args = (
        logits.data_ptr(), target.data_ptr(), batch, n_classes, float(lambda_js), float(lambda_ent), grad_scale,
        loss.data_ptr(), grad.data_ptr(), 0 if stats is None else stats.data_ptr(), dtype == torch.float64,
    )  # fmt: skip
    _native.launch("jsd_entropy", logits.device, *args)
    if stats is not None:
        _validate_stats(stats, n_classes, target_dtype)
    return _reduce(loss, reduction), grad


@_jsd_entropy_op.register_fake
def _(logits, target, lambda_js, lambda_ent, reduction, check):
    _check_tensors(logits, target, reduction)
    dtype = compute_dtype(logits.dtype)
    return logits.new_empty(_reduced_shape(logits, reduction), dtype=dtype), logits.new_empty(logits.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # else autograd fills a B×C zero gradient for the unused `grad` output
    ctx.save_for_backward(grad)
    ctx.logits_dtype = logits.dtype


def _graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph/create_graph): the check torch's own donated
    buffers use; True outside a backward and where this torch does not expose it."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is None or keep_graph()


def _uniform_cpu_scale(grad_loss: torch.Tensor) -> float | None:
    """The single value of a CPU grad_loss that is a scalar or a scalar expanded over the batch (the backward
    of a mean or a sum), read without cost (no device to sync); None otherwise."""
    if grad_loss.device.type != "cpu" or grad_loss.numel() == 0:
        return None
    if grad_loss.dim() == 0:
        return grad_loss.item()
    if grad_loss.dim() == 1 and grad_loss.stride(0) == 0:
        return grad_loss[0].item()
    return None


def _backward(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:  # the loss was not used (autograd does not materialise zeros for us)
        return None, None, None, None, None, None
    (grad,) = ctx.saved_tensors
    eager = type(grad) is torch.Tensor  # not a fake/functional tensor of AOTAutograd tracing the backward
    if eager and torch.is_grad_enabled():
        raise RuntimeError(
            "jsd_entropy has no second derivative (its gradient is computed in the forward pass and treated as a "
            "constant); backward with create_graph=True is not supported"
        )
    # The saved gradient is this op's own buffer, already scaled by the reduction: reuse it when the graph is
    # freed after this backward (no second B×C buffer), else leave it intact for the next backward.
    reuse = eager and not _graph_is_kept()
    scale = _uniform_cpu_scale(grad_loss) if eager else None
    if reuse and scale == 1.0:
        grad_logits = grad  # the usual loss.backward() of a mean or sum: nothing to do
    else:
        if grad_loss.dim() == 1:
            grad_loss = grad_loss.unsqueeze(1)
        grad_logits = grad.mul_(grad_loss) if reuse else grad * grad_loss
    return grad_logits.to(ctx.logits_dtype), None, None, None, None, None


_jsd_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def _check_arguments(logits, target, lambda_js, lambda_ent) -> None:
    for name, value in (("logits", logits), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    for name, value in (("lambda_js", lambda_js), ("lambda_ent", lambda_ent)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if target.requires_grad:
        raise ValueError("target requires grad, but jsd_entropy differentiates only logits; pass target.detach()")


def jsd_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_js: float = 0.85,
    lambda_ent: float = 0.15,
    reduction: str = "mean",
    check: bool = True,
) -> torch.Tensor:
    """λ_js·JS(P, Q) + λ_ent·H(P) with P = softmax(logits), Q = target, natural logs (see the module docstring).

    Native CPU/CUDA kernel (loss and gradient in one pass) where built, ``jsd_entropy_reference``'s maths
    elsewhere; a ``torch.library`` custom op, so it works under ``torch.compile(fullgraph=True)``.

    Args:
        logits (Tensor[B, C]): the prediction, before the softmax; float16, bfloat16, float32 or float64
            (16-bit logits are computed in float32). Must be finite. Differentiable.
        target (Tensor[B, C]): probabilities over the same C classes, on logits' device, any float dtype
            (converted to the compute dtype: a copy unless it already matches): >= 0, each row summing to 1
            within ``target_sum_tolerance``; zeros allowed (one-hot labels). Receives no gradient.
        lambda_js (float): weight of JS. Default 0.85. lambda_ent (float): weight of H. Default 0.15.
        reduction (str): "none" → Tensor[B]; "mean" (default; NaN for B = 0) or "sum" over rows → scalar.
            Differentiable once (no create_graph=True).
        check (bool): validate the values (finite logits and target, target >= 0, rows summing to 1) and raise
            a ValueError naming the first bad row. Default True. The statistics come out of the kernel's own
            pass (no extra read of the inputs); the check costs one host sync on a GPU, which check=False skips.

    Returns:
        the loss, float64 for float64 logits and float32 otherwise.
    """
    _check_arguments(logits, target, lambda_js, lambda_ent)
    loss, _ = _jsd_entropy_op(logits, target, float(lambda_js), float(lambda_ent), reduction, bool(check))
    return loss


class JSDEntropyLoss(nn.Module):
    """Module form of ``zfast.jsd_entropy``: ``JSDEntropyLoss(lambda_js=0.85, lambda_ent=0.15,
    reduction="mean", check=True)(logits [B, C], target [B, C])``."""

    def __init__(self, lambda_js: float = 0.85, lambda_ent: float = 0.15, reduction: str = "mean", check: bool = True):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.lambda_js = float(lambda_js)
        self.lambda_ent = float(lambda_ent)
        self.reduction = reduction
        self.check = bool(check)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return jsd_entropy(logits, target, self.lambda_js, self.lambda_ent, self.reduction, self.check)

    def extra_repr(self) -> str:
        return f"lambda_js={self.lambda_js}, lambda_ent={self.lambda_ent}, reduction={self.reduction!r}"
