"""Where the time goes when zfast-predict reads a large file, and what Dask workers cost (issue 23).

    python benchmarks/studies/throughput.py CHECKPOINT [--n 20000] [--batch-size 1024] [--files 20] [--workers 2]

1. One zfast-layout file of ``--n`` spectra on a Euclid-like grid (11,900-19,000 Å, 13.4 Å pixels: it differs
   from the model's, so every spectrum is resampled), predicted by ``predict_file`` with each stage timed:
   reading, resampling, normalisation, the network's forward pass (with the OOD taps), OOD scores, calibration
   and the P(z) summaries, flags, writing. Beside it the forward-only ceiling: the bare network on the same
   batches, already normalised, and the ratio end-to-end / forward-only (the issue asks >= 0.8).
2. The same spectra as ``--files`` files: ``predict_files`` in this process, and on a local Dask cluster of
   ``--workers`` single-threaded workers (cluster start timed apart, then the run on the warm cluster).
Timings on shared machines are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import zfast
import zfast.io.catalogue as catalogue
from zfast.devices import steady_allocator
from zfast.io import predict_file

predict_module = importlib.import_module("zfast.predict")  # (zfast.predict the attribute is the function)

SIR_GRID = np.arange(11900.0, 19000.0, 13.4)
TIMED = {  # stage -> the names in zfast.predict whose calls it is
    "resampling": ("resample",),
    "normalisation": ("normalise",),
    "network forward (with OOD taps)": ("ood_features",),
    "OOD scores": ("ood_scores",),
    "calibration and P(z) summaries": ("plain_and_calibrated", "pz_summary_and_candidates"),
    "flags": ("zwarn", "z_range_flag", "few_pixels_flag"),
}


def write_spectra(path: Path, n: int, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    wave = SIR_GRID
    shape = 1 + 0.3 * np.sin(wave[None] / g.uniform(200, 600, (n, 1)))
    flux = (shape + g.normal(0, 0.1, (n, wave.size))).astype(np.float64)
    np.savez(path, wavelength=wave, flux=flux, ivar=np.full_like(flux, 100.0), id=np.arange(n))


@contextlib.contextmanager
def stage_timers(totals: dict):
    """Wrap the stages' functions (module TIMED, reading and writing) so their time adds up in ``totals``."""
    originals = []

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start
        return wrapper

    for stage, names in TIMED.items():
        for name in names:
            originals.append((predict_module, name, getattr(predict_module, name)))
            setattr(predict_module, name, timed(stage, getattr(predict_module, name)))
    open_spectra, open_table = catalogue.open_spectra, catalogue.open_table

    def reading(*args, **kwargs):
        source = open_spectra(*args, **kwargs)
        chunks = source.chunks

        def timed_chunks(size):
            iterator = chunks(size)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    totals["reading"] += time.perf_counter() - start
                    return
                totals["reading"] += time.perf_counter() - start
                yield item
        source.chunks = timed_chunks
        return source

    def writing(*args, **kwargs):
        table = open_table(*args, **kwargs)
        table.write, table.finish = timed("writing", table.write), timed("writing", table.finish)
        return table

    originals += [(catalogue, "open_spectra", open_spectra), (catalogue, "open_table", open_table)]
    catalogue.open_spectra, catalogue.open_table = reading, writing
    try:
        yield
    finally:
        for module, name, function in originals:
            setattr(module, name, function)


def forward_only(model, n: int, batch_size: int) -> float:
    """Spectra per second of the bare network on normalised batches (the ceiling of any end-to-end rate)."""
    x = torch.ones(batch_size, model.instrument.n_pixels) + 0.1 * torch.randn(batch_size, model.instrument.n_pixels)
    members = model.members if hasattr(model, "members") else [model]
    with torch.no_grad():
        for m in members:
            m.network(x)  # warm-up
        start, done = time.perf_counter(), 0
        while done < n:
            rows = min(batch_size, n - done)
            for m in members:
                m.network(x[:rows])
            done += rows
    return n / (time.perf_counter() - start)


def single_file(model, folder: Path, n: int, batch_size: int, out_format: str) -> dict:
    source = folder / "spectra.npz"
    write_spectra(source, n)
    totals = defaultdict(float)
    output = folder / f"z.{out_format}"
    predict_file(model, source, output, batch_size=batch_size, progress=False, overwrite=True)  # warm-up (first call costs)
    with stage_timers(totals):
        start = time.perf_counter()
        predict_file(model, source, output, batch_size=batch_size, progress=False, overwrite=True)
        wall = time.perf_counter() - start
    totals["other (reader setup, coverage, ids, torch glue)"] = wall - sum(totals.values())
    return {"n": n, "wall_s": wall, "rate": n / wall, "stages_s": dict(totals)}


def many_files(checkpoint, folder: Path, n: int, files: int, workers: int, batch_size: int) -> dict:
    from zfast.survey import predict_files

    inputs = folder / "tiles"
    inputs.mkdir()
    for k in range(files):
        write_spectra(inputs / f"tile_{k:04d}.npz", n // files, seed=k + 1)
    result = {}
    start = time.perf_counter()
    predict_files([checkpoint], [inputs], folder / "one", catalogue_format="fits", device="cpu", progress=False, batch_size=batch_size)
    result["one_process_rate"] = n / (time.perf_counter() - start)
    import distributed

    start = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    result["cluster_start_s"] = time.perf_counter() - start
    try:
        for label in ("dask_cold_rate", "dask_warm_rate"):  # cold: each worker loads the model; warm: already loaded
            start = time.perf_counter()
            predict_files([checkpoint], [inputs], folder / label, catalogue_format="fits", device="cpu", progress=False,
                          batch_size=batch_size, scheduler=cluster.scheduler_address)  # fmt: skip
            result[label] = n / (time.perf_counter() - start)
    finally:
        cluster.close()
    result["identical"] = all((folder / "one" / p.name).read_bytes() == p.read_bytes() for p in (folder / "dask_warm_rate").glob("*.zfast.fits"))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--format", default="fits", choices=("fits", "csv", "parquet"))
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    steady_allocator()  # as zfast-predict does
    model = zfast.load_model(args.checkpoint, "cpu")
    report = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        report["single_file"] = single_file(model, Path(tmp), args.n, args.batch_size, args.format)
        report["forward_only_rate"] = forward_only(model, args.n, args.batch_size)
        if not args.no_dask:
            report["many_files"] = many_files(args.checkpoint, Path(tmp), args.n, args.files, args.workers, args.batch_size)
    single = report["single_file"]
    print(f"{args.n:,} spectra, batch {args.batch_size}, {report['threads']} threads: end to end {single['rate']:,.0f}/s, "
          f"forward only {report['forward_only_rate']:,.0f}/s (ratio {single['rate'] / report['forward_only_rate']:.2f})")  # fmt: skip
    for stage, seconds in sorted(single["stages_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<48} {seconds:7.3f} s  {100 * seconds / single['wall_s']:5.1f} %")
    if "many_files" in report:
        m = report["many_files"]
        print(f"{args.files} files: one process {m['one_process_rate']:,.0f}/s; Dask {args.workers} workers: cluster start "
              f"{m['cluster_start_s']:.1f} s, cold {m['dask_cold_rate']:,.0f}/s, warm {m['dask_warm_rate']:,.0f}/s "
              f"(warm / one process {m['dask_warm_rate'] / m['one_process_rate']:.2f}); identical catalogues: {m['identical']}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
