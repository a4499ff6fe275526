"""Shared helpers for the tests: random SED libraries and observed grids built from integer indices."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

import zfast

_NATIVE = zfast.native_available()
if not _NATIVE["cpu"]:
    # Every native-vs-reference test would fail one by one with the same cause: say it once.
    pytest.exit(
        f"zfast's native module did not import ({_NATIVE['error']}); zfast was imported from "
        f"{os.path.dirname(zfast.__file__)}. Install the package (pip install .) and run the `pytest` script from "
        f"the repository root: `python -m pytest` puts the repository first on sys.path and imports the "
        f"uncompiled source tree.",
        returncode=4,
    )

requires_cuda = pytest.mark.skipif(not _NATIVE["cuda"], reason="needs a CUDA GPU and the CUDA build")


def log_uniform_centres(lo: float, hi: float, dln: float) -> torch.Tensor:
    """Pixel centres from lo (first centre) up to hi on a log-uniform grid, built from an integer index."""
    n = int(math.floor(math.log(hi / lo) / dln)) + 1
    return torch.exp(math.log(lo) + torch.arange(n, dtype=torch.float64) * dln)


def random_library(generator: torch.Generator, n_seds: int = 7, lo: float = 3500.0, hi: float = 10500.0,
                   dln: float = 1 / 2000) -> zfast.SEDLibrary:
    """Positive random SEDs with a few sharp spikes (lines), so neighbouring pixels differ strongly."""
    wave = log_uniform_centres(lo, hi, dln)
    flux = torch.rand(n_seds, wave.numel(), dtype=torch.float64, generator=generator) + 0.05
    spikes = torch.randint(0, wave.numel(), (n_seds, 20), generator=generator)
    flux.scatter_add_(1, spikes, 50.0 * torch.rand(n_seds, 20, dtype=torch.float64, generator=generator))
    return zfast.SEDLibrary(wave, flux)


def nisp_edges() -> torch.Tensor:
    """Euclid NISP red grism: 12060-18920 Å in 512 bins of 13.4 Å."""
    return 12060.0 + 13.4 * torch.arange(513, dtype=torch.float64)


def random_edges(generator: torch.Generator, lo: float, hi: float, n_bins: int) -> torch.Tensor:
    """n_bins + 1 strictly increasing edges from lo to hi with random (non-uniform) widths."""
    widths = 0.3 + torch.rand(n_bins, dtype=torch.float64, generator=generator)
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(widths, 0)])
    return lo + (hi - lo) * edges / edges[-1]


@pytest.fixture
def generator(request) -> torch.Generator:
    """A freshly seeded generator: new random inputs every run; the seed is shown when a test fails
    (set ZFAST_TEST_SEED to replay it)."""
    seed = int(os.environ.get("ZFAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
    request.node.add_report_section("call", "seed", f"ZFAST_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small paper-cnn run (80 bins, 150 steps, ~15 s) shared by every test module that needs a checkpoint."""
    from zfast import checkpoint
    from zfast.cli import train as train_cli
    from zfast.training import config as training_config

    out = tmp_path_factory.mktemp("run")
    train_cli.main(["--preset", "quick", "--model", "paper-cnn", "--n-bins", "80", "--steps", "150", "--eval-every", "150",
                "--n-val", "512", "--n-test", "64", "--batch-size", "64", "--lr", "2e-3", "--out", str(out)])  # fmt: skip
    config = training_config.config_from_dict(checkpoint.read(out / "best.pt").config)
    return out / "best.pt", config


@pytest.fixture(scope="session")
def model(trained):
    import zfast

    return zfast.load_model(trained[0], "cpu")
