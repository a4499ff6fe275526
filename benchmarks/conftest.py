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


@pytest.fixture
def native_or_spec(benchmark, device, monkeypatch):
    """``time(module, provider, run, args, compare, group, n)``: the benchmark of a native CPU op against its torch
    spec. ``module.available`` switches the op; ``run(*args)`` is timed with the op (provider "native") or without
    it ("spec"), after both results were computed and ``compare(native, spec)`` checked them (so a broken op is not
    timed); ``n`` spectra per call give ``extra_info["spectra_per_s"]``."""

    def time(module, provider, run, args, compare, group, n):
        if device.type != "cpu":
            pytest.skip(f"the native op of {module.__name__} is CPU only")
        assert module.available(device), "zfast's native module is not importable: nothing native to time"
        native = run(*args)
        monkeypatch.setattr(module, "available", lambda device: False)
        compare(native, run(*args))
        if provider == "native":
            monkeypatch.undo()
        benchmark.group = group
        benchmark.extra_info.update(provider=provider, threads=torch.get_num_threads())
        benchmark(run, *args)
        if benchmark.stats is not None:
            benchmark.extra_info["spectra_per_s"] = n / benchmark.stats.stats.mean

    return time
