"""Options and fixtures shared by the benchmarks: ``--device cpu|cuda`` picks where they run."""

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
