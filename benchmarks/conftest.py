"""Options and fixtures shared by the benchmarks: ``--device cpu|cuda`` picks where they run; ``bench_checkpoint``
is the model the prediction benchmarks use."""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device the zfast benchmarks run on (default: cpu); cuda skips the CPU-only providers",
    )


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The torch.device from ``--device``; skips every benchmark if CUDA is asked for but absent."""
    name = request.config.getoption("--device")
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda was requested but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@pytest.fixture(scope="session")
def bench_checkpoint(tmp_path_factory) -> str:
    """``ZFAST_BENCH_CHECKPOINT`` (e.g. runs/quick/best.pt), else a small quick-preset model trained here (150
    steps, ~20 s: its speeds hold, its accuracy does not)."""
    path = os.environ.get("ZFAST_BENCH_CHECKPOINT")
    if path is None:
        from zfast.cli import train as train_cli

        out = tmp_path_factory.mktemp("run")
        train_cli.main(["--preset", "quick", "--steps", "150", "--eval-every", "150", "--n-val", "256", "--n-test", "64",
                        "--out", str(out)])  # fmt: skip
        path = out / "best.pt"
    return str(path)
