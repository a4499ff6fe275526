"""The catalogue out (CSV, FITS, Parquet with survey column names and ZWARN) and the astropy/specutils inputs."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch

import zfast
from zfast import flags
from zfast.cli import predict as predict_cli
from zfast.io import CATALOGUE, open_spectra, predict_file
from zfast.predict import deltachi2_min

C_AA = 2.99792458e18  # speed of light in Å/s


@pytest.fixture(scope="module")
def spectra(model):
    """Noisy spectra of the model's library on a finer grid than the model's, with ivar and a few masked pixels."""
    g = np.random.default_rng(3)
    wave = np.linspace(12000.0, 19000.0, 1400)
    centres = model.instrument.wavelength.numpy()
    base = np.stack([np.interp(wave, centres, 1 + 0.3 * np.sin(centres / (300 + 40 * k))) for k in range(9)])
    ivar = np.full_like(base, 400.0)
    flux = base + g.normal(0, 0.05, base.shape)
    ivar[:, g.integers(0, wave.size, 50)] = 0.0
    return wave, flux, ivar


def test_a_specutils_spectrum_in_microns_and_janskys_equals_the_arrays_converted_by_hand(model, spectra):
    specutils = pytest.importorskip("specutils")
    import astropy.units as u
    from astropy.nddata import InverseVariance

    wave, flam, ivar = spectra
    # The same spectra as f_ν in Jy on a µm axis: f_ν = f_λ λ² / c (times 1e23 for Jy), ivar_ν = ivar_λ (c / λ²)² 1e-46.
    to_nu = wave**2 / C_AA * 1e23
    mask = ivar == 0
    spectrum = specutils.Spectrum(flux=flam * to_nu * u.Jy, spectral_axis=wave / 1e4 * u.um,
                                  uncertainty=InverseVariance(np.where(mask, 1.0, ivar) / to_nu**2 / u.Jy**2), mask=mask)  # fmt: skip
    got = zfast.predict(model, spectrum)
    # By hand: Å, f_λ in erg/s/cm²/Å (1 Jy = 1e-23 erg/s/cm²/Hz) and the mask as ivar 0.
    expected = zfast.predict(model, wave, flam * 1e-23 * 1e23, ivar)
    for key in ("z", "z_err", "zprob", "deltachi2", "snr", "valid_fraction"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-8)
    assert torch.equal(got["zwarn"], expected["zwarn"])


def test_an_astropy_table_with_units_and_a_frequency_axis(model, spectra):
    from astropy.table import Table
    import astropy.units as u

    wave, flam, ivar = spectra
    rows = np.broadcast_to(wave / 10, flam.shape)  # a row per spectrum, as FITS tables hold them
    table = Table({"Wavelength": rows * u.nm, "FLUX": flam * u.Unit("erg / (s cm2 AA)"), "ivar": ivar})
    got = zfast.predict(model, table)
    expected = zfast.predict(model, wave, flam, ivar)
    torch.testing.assert_close(got["z"], expected["z"], rtol=0, atol=1e-9)
    # An increasing frequency axis (decreasing wavelengths): flipped into increasing wavelengths, same answer.
    nu = C_AA / wave[::-1]
    spectrum = pytest.importorskip("specutils").Spectrum(flux=flam[:, ::-1] * u.Unit("erg / (s cm2 AA)"), spectral_axis=nu * u.Hz)
    flipped = zfast.predict(model, spectrum)
    torch.testing.assert_close(flipped["z"], zfast.predict(model, wave, flam)["z"], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="no column"):
        zfast.predict(model, Table({"lam": wave}))
    with pytest.raises(TypeError, match="Spectrum or an astropy Table"):
        zfast.predict(model, {"wavelength": wave})


def _npz(tmp_path, spectra, ids):
    wave, flux, ivar = spectra
    path = tmp_path / "in.npz"
    np.savez(path, wavelength=wave, flux=flux, ivar=ivar, id=ids)
    return path


def test_csv_fits_and_parquet_hold_the_same_catalogue(trained, model, spectra, tmp_path):
    pa = pytest.importorskip("pyarrow.parquet")
    fits = pytest.importorskip("astropy.io.fits")
    ids = np.arange(500, 509)
    source = _npz(tmp_path, spectra, ids)
    api = zfast.predict(model, *spectra, pz=True)
    for suffix in (".csv", ".fits", ".parquet"):
        assert predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(source), "--output",
                                 str(tmp_path / f"z{suffix}"), "--pz", "--device", "cpu"]) == 0  # fmt: skip
    with open(tmp_path / "z.csv") as stream:
        rows = list(csv.DictReader(stream))
    table = pa.read_table(tmp_path / "z.parquet")
    with fits.open(tmp_path / "z.fits") as hdul:
        data = hdul["REDSHIFTS"].data
        for column in CATALOGUE:
            expected = api[column.key].numpy()
            np.testing.assert_allclose(np.asarray(data[column.name], dtype=float), expected, rtol=1e-12, atol=0, equal_nan=True)
            np.testing.assert_allclose(np.array(table[column.name].to_pylist(), dtype=float), expected, rtol=1e-12, equal_nan=True)
            if expected.ndim == 1:
                np.testing.assert_allclose([float(r[column.name]) for r in rows], expected, rtol=1e-6, equal_nan=True)
        assert hdul["REDSHIFTS"].header["TCOMM2"].startswith("redshift")
        # The SMALL_DELTA_CHI2 threshold the rows were flagged with (the model's own; none: every row flagged).
        threshold = deltachi2_min(model)
        if math.isfinite(threshold):
            assert hdul["REDSHIFTS"].header["DCHI2MIN"] == threshold
        else:
            assert "DCHI2MIN" not in hdul["REDSHIFTS"].header and (data["ZWARN"] & flags.BIT["SMALL_DELTA_CHI2"]).all()
    assert table["TARGETID"].to_pylist() == ids.tolist()
    assert table.schema.metadata[b"NPIXELS.unit"] == b"pix"
    np.testing.assert_allclose(np.array(table["PZ"].to_pylist()), api["pz"].numpy(), rtol=1e-6)


def test_duplicate_ids_are_kept_and_warned_once(model, spectra, tmp_path):
    ids = np.array([1, 2, 2, 3, 3, 3, 4, 5, 6])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_file(model, _npz(tmp_path, spectra, ids), tmp_path / "z.csv", batch_size=2)
    duplicates = [w for w in caught if "duplicate TARGETID" in str(w.message)]
    assert len(duplicates) == 1 and "2" in str(duplicates[0].message)
    with open(tmp_path / "z.csv") as stream:
        assert [int(r["TARGETID"]) for r in csv.DictReader(stream)] == ids.tolist()


def test_all_masked_spectra_get_nodata_and_the_rest_are_predicted(model, spectra, tmp_path):
    wave, flux, ivar = spectra
    ivar = ivar.copy()
    ivar[[2, 5]] = 0.0
    got = zfast.predict(model, wave, flux, ivar)
    nodata = (got["zwarn"] & flags.BIT["NODATA"]) != 0
    assert nodata.tolist() == [i in (2, 5) for i in range(len(flux))]
    assert torch.isfinite(got["z"][~nodata]).all()


def test_a_file_no_reader_knows_names_every_reader(tmp_path):
    path = tmp_path / "spectra.txt"
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="no reader recognises") as error:
        open_spectra(path)
    for name in ("euclid-sir", "desi", "sdss", "zfast"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="no such reader"):
        open_spectra(path, "redrock")
    with pytest.raises(SystemExit):  # argparse refuses an unknown --format before any work
        predict_cli.main(["--checkpoint", "x.pt", "--input", str(path), "--output", str(tmp_path / "z.csv"), "--format", "nope"])


def test_a_real_desi_file_through_the_cli_fails_with_the_coverage_error_and_writes_nothing(trained, tmp_path, capsys):
    import pathlib

    desi = pathlib.Path(__file__).parent / "data" / "desi" / "coadd-4-80613-thru20210324.fits.gz"
    with pytest.raises(SystemExit) as error:
        predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(desi), "--output", str(tmp_path / "z.csv"), "--device", "cpu"])
    message = str(error.value)
    assert "(desi file)" in message and "3599.6-9824.4" in message and "trained for" in message and "\n" not in message
    assert not list(tmp_path.iterdir())
