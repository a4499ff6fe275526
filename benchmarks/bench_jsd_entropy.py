"""Benchmark of ``zfast.jsd_entropy`` (forward + backward) against eager PyTorch and torch.compile.

What is measured: one training-step's worth of the loss, ``loss = provider(logits, target)`` (mean over rows)
followed by ``torch.autograd.grad(loss, logits)``, for float32 logits [B, C] ~ 3·N(0, 1), B ∈ {256, 4096},
C ∈ {80, 800} (the redshift-bin counts of the paper: 0.01 and 0.001 in z), and two kinds of float32 target:
"box" soft labels (1-7 equal bins, the paper's labels; mostly zeros, where the native CPU kernel skips its two
logs) and "dense" ones (softmax of 2·N(0, 1): every Q_c > 0, the kernel's slowest case). Every provider gets
the same inputs:

    native          zfast.jsd_entropy(logits, target): the fused kernel (loss and gradient in one pass per
                    row, backward scales the saved gradient), default value checks
    native-nocheck  the same with check=False, so the difference from native is the validation cost
    torch           zfast.ops.jsd_entropy_reference, eager (log_softmax, autograd backward): the package's own
                    reference, not a copy
    torch.compile   torch.compile of that reference (compiled and warmed up before timing)

Peak extra memory: the most memory allocated at once during one forward + backward beyond what existed
before it (the inputs), the returned gradient included. On a GPU torch.cuda.max_memory_allocated. On the CPU
torch has no allocator statistics, so it is measured with torch.profiler(profile_memory=True): its
allocation/free events (every tensor goes through c10's CPU allocator, torch.compile's buffers included) are
sorted by time and the running sum's maximum taken. Per-thread scratch rows of the native kernel (C values per
thread, std::vector) are not tensors and not counted. It is reported in bytes and in units of one B×C float32
buffer (the gradient itself is one).

Not part of the default test run (pytest collects tests/ only). From the repository root, with zfast
installed (run the ``pytest`` script, not ``python -m pytest``, which would import the uncompiled source tree):

    pytest benchmarks/bench_jsd_entropy.py --benchmark-only --benchmark-json=jsd_results.json
    python benchmarks/report_jsd_entropy.py jsd_results.json

On a GPU add ``--device cuda``: every timed call ends with torch.cuda.synchronize(). Torch's default thread
count is kept (set OMP_NUM_THREADS to change it); extra_info records it with the provider, B, C, device,
rows_per_s and the peak extra memory. The output of every provider is checked against the float64 reference
after its warm-up call.
"""

from __future__ import annotations

import functools

import pytest
import torch

import zfast
from zfast.ops.jsd_entropy import jsd_entropy_reference

SEED = 0
BATCH_SIZES = (256, 4096)
N_CLASSES = (80, 800)
PROVIDERS = ("native", "native-nocheck", "torch", "torch.compile")
LOGIT_SCALE = 3.0
MAX_BOX_WIDTH = 7
TARGET_KINDS = ("box", "dense")
DENSE_TARGET_SCALE = 2.0
# Every provider computes in float32: its loss and gradient must match the float64 reference to this
# relative precision (of the loss, and of the largest gradient element).
AGREEMENT_RTOL = 1e-5


def random_inputs(batch_size: int, n_classes: int, target_kind: str, device: torch.device):
    """(logits float32 [B, C], target float32 [B, C] of ``target_kind`` "box" or "dense"), fixed seed."""
    generator = torch.Generator().manual_seed(SEED)
    logits = LOGIT_SCALE * torch.randn(batch_size, n_classes, generator=generator)
    if target_kind == "dense":
        target = torch.softmax(DENSE_TARGET_SCALE * torch.randn(batch_size, n_classes, generator=generator), dim=1)
    else:
        width = torch.randint(1, MAX_BOX_WIDTH + 1, (batch_size,), generator=generator)
        start = (torch.rand(batch_size, generator=generator) * (n_classes - width + 1)).long()
        classes = torch.arange(n_classes)
        inside = (classes >= start[:, None]) & (classes < (start + width)[:, None])
        target = inside / width[:, None].to(torch.float32)
    return logits.to(device), target.to(device)


@functools.cache
def compiled_reference():
    return torch.compile(jsd_entropy_reference, dynamic=False)


def loss_function(provider: str):
    if provider == "native":
        return zfast.jsd_entropy
    if provider == "native-nocheck":
        return functools.partial(zfast.jsd_entropy, check=False)
    if provider == "torch":
        return jsd_entropy_reference
    if provider == "torch.compile":
        return compiled_reference()
    raise ValueError(f"unknown provider {provider!r}")


def make_step(provider: str, logits: torch.Tensor, target: torch.Tensor, device: torch.device):
    """A no-argument callable: (loss, dloss/dlogits) of ``provider``, synchronised on a GPU."""
    function = loss_function(provider)

    def step():
        loss = function(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss, grad

    return step


def cpu_peak_extra_bytes(step) -> int | None:
    """Peak of (allocated - freed) bytes during ``step()`` from torch.profiler's memory events; None when this
    torch does not expose them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # private API: absent or renamed in some torch versions
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def peak_extra_bytes(step, device: torch.device) -> int | None:
    if device.type != "cuda":
        return cpu_peak_extra_bytes(step)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    return torch.cuda.max_memory_allocated(device) - before


def assert_agrees_with_float64_reference(loss, grad, logits, target):
    x = logits.detach().double().requires_grad_()
    expected_loss = jsd_entropy_reference(x, target.double())
    (expected_grad,) = torch.autograd.grad(expected_loss, x)
    torch.testing.assert_close(loss.double(), expected_loss.detach(), rtol=AGREEMENT_RTOL, atol=0.0)
    scale = expected_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), expected_grad, rtol=0.0, atol=AGREEMENT_RTOL * scale)


def describe_device(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


@pytest.mark.parametrize("target_kind", TARGET_KINDS)
@pytest.mark.parametrize("n_classes", N_CLASSES)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_jsd_entropy(benchmark, device, provider, batch_size, n_classes, target_kind):
    native = zfast.native_available()
    if provider.startswith("native") and not native[device.type]:
        pytest.fail(
            f"zfast's native {device.type} kernel is not available (import error: {native['error']}), so "
            f"'native' would time the PyTorch fallback. Was zfast imported from the source tree instead of the "
            f"installed package (python -m pytest puts the repository root first on sys.path)?"
        )
    logits, target = random_inputs(batch_size, n_classes, target_kind, device)
    logits.requires_grad_()
    step = make_step(provider, logits, target, device)

    loss, grad = step()  # warm-up (and torch.compile's compilation)
    assert_agrees_with_float64_reference(loss, grad, logits, target)
    del loss, grad
    peak = peak_extra_bytes(step, device)

    benchmark.group = f"B={batch_size} C={n_classes} target={target_kind}"
    benchmark(step)
    buffer_bytes = 4 * batch_size * n_classes
    benchmark.extra_info.update(
        provider=provider,
        batch_size=batch_size,
        n_classes=n_classes,
        target_kind=target_kind,
        device=describe_device(device),
        threads=torch.get_num_threads(),
        peak_extra_bytes=peak,
        peak_extra_buffers=None if peak is None else peak / buffer_bytes,
        memory_method="torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events",
    )
    if benchmark.stats is not None:  # None under --benchmark-disable, where nothing is timed
        benchmark.extra_info["rows_per_s"] = batch_size / benchmark.stats.stats.mean
