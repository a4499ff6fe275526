"""Benchmark of the quick preset's training step: its network with the CPU channels-last layers against the same
network built from plain ``nn.Conv1d`` / ``nn.BatchNorm1d``, and the augmentation pipeline with and without the
realism perturbations (``zfast.data.Perturbations``) beside it.

What is measured, at the quick preset's batch (256 in-range + 26 outside-range spectra, NISP, 800 bins + outside):

    step-nhwc    forward + backward + AdamW step of the preset's network (resnet1d-shift on 512 log pixels;
                 its trunk's Conv1dNHWC, BatchNorm1dNHWC), as zfast-train builds it
    step-conv1d  the same network, every layer swapped for the plain torch module (same weights)
    data-none    one batch of zfast-train's training stream, quick preset without its perturbations and SED weights
    data-preset  the quick preset's stream as it is (scattered bad pixels, weak-line SEDs 6x)
    data-all     the preset plus continuum distortion and noise variation

    pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-json=step.json

The target: data-preset <= 5 % of step-nhwc. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` in front runs it as
on a CPU without AVX-512.
"""

import dataclasses

import pytest
import torch

from zfast.bins import redshift_bin_edges
from zfast.data.sets import load_library
from zfast.models import BatchNorm1dNHWC, Conv1dNHWC
from zfast.training.config import PRESETS, TrainConfig
from zfast.training.evaluation import run_network
from zfast.training.loss import training_loss
from zfast.training.streams import augmented, make_instrument, n_outside, outside_stream


def plain_layers(module: torch.nn.Module) -> torch.nn.Module:
    """The network with each channels-last layer replaced by its plain torch parent (same state dict)."""
    for name, child in module.named_children():
        if isinstance(child, Conv1dNHWC):
            plain = torch.nn.Conv1d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                    bias=child.bias is not None)  # fmt: skip
        elif isinstance(child, BatchNorm1dNHWC):
            plain = torch.nn.BatchNorm1d(child.num_features)
        else:
            plain_layers(child)
            continue
        plain.load_state_dict(child.state_dict())
        setattr(module, name, plain)
    return module


def quick_config(**changes) -> TrainConfig:
    values = {**dataclasses.asdict(TrainConfig()), **PRESETS["quick"], **changes}
    return TrainConfig(**values)


@pytest.mark.parametrize("provider", ["step-nhwc", "step-conv1d", "data-none", "data-preset", "data-all"])
def test_train_step(benchmark, device, provider):
    if device.type != "cpu" and provider == "step-conv1d":
        pytest.skip("the channels-last layers are plain Conv1d off the CPU")
    changes = {"data-none": dict(bad_pixel_prob=0.0, weak_line_weight=1.0), "data-all": dict(distortion=0.1, noise_variation=0.3)}
    c = quick_config(**changes.get(provider, {}))
    library = load_library(c.library).to(device)
    instrument = make_instrument(c)
    stream = augmented(c, library, instrument, "train", 0)
    outside = outside_stream(c, library, instrument, "train", n_outside(c), 1)
    if provider.startswith("data"):
        def run():
            return torch.cat([next(stream)[0], next(outside)[0]])
    else:
        torch.manual_seed(0)
        model = run_network(c, device)  # the preset's network as zfast-train builds it (its log grid included)
        if provider == "step-conv1d":
            model = plain_layers(model)
        optimiser = torch.optim.AdamW(model.parameters(), lr=c.lr)
        flux, _, z, _ = next(stream)
        flux = torch.cat([flux, next(outside)[0]])
        edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)

        def run():
            loss = training_loss(c, model(flux).float(), z, edges, 10, n_outside(c))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            return loss

    if device.type == "cuda":
        inner = run

        def run():
            out = inner()
            torch.cuda.synchronize(device)
            return out

    run()
    benchmark.group = "quick preset training step"
    benchmark(run)
    benchmark.extra_info.update(provider=provider, device=str(device), threads=torch.get_num_threads())
