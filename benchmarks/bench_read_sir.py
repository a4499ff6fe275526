"""Reading a 1,000-object Euclid SIR tile (zfast.io.euclid: mapped by zfast.io.fitsindex, and through astropy)
against the same spectra from a plain .npz
(zfast.io.spectra): spectra/s of each, all chunks of 1,024.

    pytest benchmarks/bench_read_sir.py --benchmark-only
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("astropy")
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from euclid_fixtures import write_tile  # noqa: E402
from zfast.io import open_spectra  # noqa: E402

N_OBJ = 1000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sir")
    write_tile(folder / "tile.fits", n_obj=N_OBJ)
    with open_spectra(folder / "tile.fits") as reader:
        (chunk,) = list(reader.chunks(N_OBJ))
    np.savez(folder / "same.npz", wavelength=chunk.wavelength, flux=chunk.flux, ivar=chunk.ivar, id=chunk.ids)
    return folder


def read_all(path):
    with open_spectra(path) as reader:
        return sum(len(chunk.ids) for chunk in reader.chunks(1024))


@pytest.mark.parametrize("name", ["tile.fits", "same.npz"])
def test_read_rate(benchmark, files, name):
    n = benchmark.pedantic(read_all, args=(files / name,), rounds=3, iterations=1)
    assert n == N_OBJ
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["spectra_per_s"] = N_OBJ / benchmark.stats.stats.mean


def test_read_rate_through_astropy(benchmark, files):
    """The same tile through astropy (zfast.io.euclid.AstropyTile, the fallback for gzipped tiles): ~1 ms an HDU."""
    from zfast.io.euclid import AstropyTile

    def read():
        with AstropyTile(files / "tile.fits") as reader:
            return sum(len(chunk.ids) for chunk in reader.chunks(1024))

    assert benchmark.pedantic(read, rounds=1, iterations=1) == N_OBJ
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["spectra_per_s"] = N_OBJ / benchmark.stats.stats.mean
