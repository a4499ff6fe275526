"""zfast-predict's rate on a file end to end against the bare network on the same batches, and over many files in
one process against a 2-worker Dask cluster (issue 23: end to end >= 0.8 of forward only; Dask >= 0.9 of one
process). Spectra/s in ``extra_info``.

    ZFAST_BENCH_CHECKPOINT=runs/quick/best.pt pytest benchmarks/bench_survey.py --benchmark-only

8,192 spectra on a Euclid-like 13.4 Å grid (resampled onto the model's pixels), batch 1,024, FITS catalogues; the
many-file cases split them into 8 files. Without ``ZFAST_BENCH_CHECKPOINT`` a small model is trained first (150
steps, ~20 s). The stage-by-stage profile is ``studies/throughput.py`` (docs/survey.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import zfast
from zfast.devices import steady_allocator
from zfast.io import predict_file
from zfast.survey import predict_files

sys.path.insert(0, str(Path(__file__).parent / "studies"))
from throughput import forward_only, write_spectra  # noqa: E402

N_SPECTRA, BATCH, FILES = 8192, 1024, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, device, bench_checkpoint):
    steady_allocator()  # as zfast-predict does
    path = bench_checkpoint
    folder = tmp_path_factory.mktemp("spectra")
    write_spectra(folder / "one.npz", N_SPECTRA)
    (folder / "tiles").mkdir()
    for k in range(FILES):
        write_spectra(folder / "tiles" / f"tile_{k}.npz", N_SPECTRA // FILES, seed=k + 1)
    return str(path), zfast.load_model(path, device), folder


def test_forward_only(benchmark, setup):
    _, model, _ = setup
    rate = benchmark.pedantic(lambda: forward_only(model, N_SPECTRA, BATCH), rounds=1, iterations=1)
    benchmark.extra_info["spectra_per_s"] = rate


def test_end_to_end_one_file(benchmark, setup):
    _, model, folder = setup
    run = lambda: predict_file(model, folder / "one.npz", folder / "z.fits", batch_size=BATCH, progress=False, overwrite=True)  # noqa: E731
    run()  # warm-up
    assert benchmark.pedantic(run, rounds=1, iterations=1) == N_SPECTRA
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["spectra_per_s"] = N_SPECTRA / benchmark.stats.stats.mean


@pytest.mark.parametrize("engine", ["one-process", "dask-2-workers"])
def test_many_files(benchmark, setup, engine, tmp_path):
    checkpoint, model, folder = setup
    if engine == "one-process":
        options = {}
    else:
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        options = {"scheduler": cluster.scheduler_address}
        predict_files([checkpoint], [folder / "tiles"], tmp_path / "warm", device=str(model.device), progress=False, **options)
    try:
        run = benchmark.pedantic(lambda: predict_files([checkpoint], [folder / "tiles"], tmp_path / "out", device=str(model.device),
                                                       progress=False, batch_size=BATCH, **options), rounds=1, iterations=1)  # fmt: skip
    finally:
        if options:
            cluster.close()
    assert run.n_done == FILES and run.n_failed == 0
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["spectra_per_s"] = N_SPECTRA / benchmark.stats.stats.mean
