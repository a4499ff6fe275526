"""SED library files: npz / HDF5 / FITS round trips, and a clear error for every bad file."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import zfast
from conftest import log_uniform_centres, nisp_edges, random_library

FORMATS = [".npz", ".h5", ".fits"]


def library_with_params(generator):
    library = random_library(generator, n_seds=6)
    return zfast.SEDLibrary(
        library.wavelength,
        library.flux,
        params={
            "age_gyr": torch.rand(6, dtype=torch.float64, generator=generator).numpy() * 3,
            "ew_halpha": np.arange(6, dtype=np.float32) * 10,
            "sfh": np.array(["delayed", "exponential", "burst", "delayed", "constant", "quenched"]),
            "seed": np.arange(6, dtype=np.int64),
        },
    )


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_grid_flux_and_params(tmp_path, generator, suffix):
    library = library_with_params(generator)
    path = tmp_path / f"lib{suffix}"
    library.save(path)
    loaded = zfast.SEDLibrary.load(path)
    assert loaded.n_pixels == library.n_pixels and loaded.n_seds == 6
    assert math.isclose(loaded.dln, library.dln, rel_tol=1e-9) and math.isclose(loaded.ln_edge0, library.ln_edge0, rel_tol=1e-12)
    torch.testing.assert_close(loaded.flux, library.flux.to(torch.float32).double(), rtol=1e-6, atol=0)
    assert sorted(loaded.params) == sorted(library.params)
    for name, column in library.params.items():
        np.testing.assert_array_equal(loaded.params[name], column)
    # The reloaded library puts spectra on the observed grid exactly as the original did (float32 flux).
    z, index = torch.tensor([1.1, 1.5]), torch.tensor([0, 5])
    torch.testing.assert_close(
        loaded.redshift_resample(index, z, nisp_edges()), library.redshift_resample(index, z, nisp_edges()),
        rtol=1e-6, atol=0,
    )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600


def test_float16_needs_normalised_flux(tmp_path, generator):
    library = random_library(generator, n_seds=2)
    library.save(tmp_path / "small.npz", dtype="float16")
    loaded = zfast.SEDLibrary.load(tmp_path / "small.npz")
    torch.testing.assert_close(loaded.flux, library.flux, rtol=1e-3, atol=0)
    # float16 npz files pack the flux losslessly: exactly the float16 values come back.
    with np.load(tmp_path / "small.npz") as data:
        assert "flux_packed" in data.files and "flux" not in data.files
    expected = library.flux.numpy().astype(np.float16)
    assert np.array_equal(loaded.flux.numpy().astype(np.float16).view(np.uint16), expected.view(np.uint16))
    wave = log_uniform_centres(3500.0, 10500.0, 1 / 500)
    bright = zfast.SEDLibrary(wave, torch.full((1, wave.numel()), 1e39, dtype=torch.float64))
    with pytest.raises(ValueError, match="beyond float16's 65504: normalise"):
        bright.save(tmp_path / "bright.npz", dtype="float16")
    assert not (tmp_path / "bright.npz").exists()


def test_params_must_have_one_value_per_sed(generator):
    library = random_library(generator, n_seds=3)
    with pytest.raises(ValueError, match=r"params\['age'\] must hold one value per SED, shape \(3,\)"):
        zfast.SEDLibrary(library.wavelength, library.flux, params={"age": [1.0, 2.0]})
    with pytest.raises(TypeError, match="numbers or strings"):
        zfast.SEDLibrary(library.wavelength, library.flux, params={"blob": np.array([{}, {}, {}])})


def test_to_keeps_params(generator):
    library = library_with_params(generator)
    assert library.to("meta").params is library.params


def write_npz(path, **arrays):
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


GOOD_WAVE = np.exp(np.log(3500.0) + np.arange(100) / 2000)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"flux": np.ones((2, 100))}, r"needs 'wavelength' and 'flux'; found \['flux'\]"),
        ({"wavelength": GOOD_WAVE, "flux": np.ones((2, 99))}, r"flux must be \[S, N\] with N = len\(wavelength\) = 100"),
        ({"wavelength": GOOD_WAVE[None], "flux": np.ones((2, 100))}, "wavelength must be 1-D"),
        ({"wavelength": GOOD_WAVE[::-1].copy(), "flux": np.ones((2, 100))}, "strictly increasing"),
        ({"wavelength": np.r_[GOOD_WAVE[:50], GOOD_WAVE[49:99]], "flux": np.ones((2, 100))}, "strictly increasing"),
        ({"wavelength": GOOD_WAVE, "flux": np.r_[np.ones((1, 100)), np.full((1, 100), np.nan)]}, r"non-finite.*\[1\]"),
        ({"wavelength": GOOD_WAVE, "flux": np.r_[np.zeros((1, 100)), np.ones((1, 100))]}, r"all-zero SEDs, rows \[0\]"),
        ({"wavelength": GOOD_WAVE, "flux": np.ones((2, 100)), "param_x": np.ones(3)}, r"params\['x'\] must hold one"),
    ],
)
def test_bad_npz_files_raise_errors_naming_the_file(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    write_npz(path, **arrays)
    with pytest.raises((ValueError, TypeError), match=match) as caught:
        zfast.SEDLibrary.load(path)
    assert str(path) in str(caught.value)


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such SED library file"):
        zfast.SEDLibrary.load(tmp_path / "missing.npz")
    (tmp_path / "lib.txt").write_text("3500 1.0")
    with pytest.raises(ValueError, match="unknown library format '.txt'"):
        zfast.SEDLibrary.load(tmp_path / "lib.txt")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable npz SED library"):
        zfast.SEDLibrary.load(tmp_path / "garbage.npz")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable hdf5 SED library"):
        zfast.SEDLibrary.load(tmp_path / "garbage.h5")


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    write_npz(path, wavelength=GOOD_WAVE, flux=np.ones((1, 100)), param_obj=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="not a readable npz SED library"):
        zfast.SEDLibrary.load(path)


def test_hdf5_and_fits_missing_arrays(tmp_path):
    import h5py
    from astropy.io import fits

    with h5py.File(tmp_path / "no_flux.h5", "w") as file:
        file.create_dataset("wavelength", data=GOOD_WAVE)
    with pytest.raises(ValueError, match=r"needs 'wavelength' and 'flux'; found \['wavelength'\]"):
        zfast.SEDLibrary.load(tmp_path / "no_flux.h5")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(GOOD_WAVE, name="WAVE")]).writeto(tmp_path / "no_flux.fits")
    with pytest.raises(ValueError, match="image HDUs named WAVELENGTH and FLUX; found"):
        zfast.SEDLibrary.load(tmp_path / "no_flux.fits")


def test_check_coverage_says_which_z_the_library_serves(generator):
    library = random_library(generator, n_seds=1, lo=5000.0, hi=9000.0)
    library.check_coverage(nisp_edges(), (1.15, 1.35))
    with pytest.raises(ValueError, match=r"too short for 1 <= z <= 1.8 .* it can serve 1.1\d* <= z <= 1.4\d*"):
        library.check_coverage(nisp_edges(), (1.0, 1.8))
