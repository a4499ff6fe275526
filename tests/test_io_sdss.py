"""The SDSS reader (zfast.io.sdss) on spec-lite files built from the SDSS data model (tests/sdss_fixtures.py),
checked against the columns read here with astropy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from sdss_fixtures import spec_lite_arrays, write_spec_lite

from zfast.data.instrument import Instrument
from zfast.io import sdss
from zfast.io.formats import Probe
from zfast.io.readers import open_spectra
from zfast.predict import check_coverage


@pytest.fixture
def spec_file(tmp_path):
    return write_spec_lite(tmp_path / "spec-0266-51630-0004.fits")


def test_arrays_match_astropy(spec_file):
    coadd = fits.getdata(spec_file, "COADD")
    wave = 10.0 ** coadd["loglam"].astype(np.float64)
    good = (coadd["and_mask"] == 0) & (coadd["ivar"] > 0) & np.isfinite(coadd["flux"])
    with open_spectra(spec_file, air=True) as reader:  # unknown options are ignored
        assert (reader.format, reader.knows_units, reader.n_spectra) == ("sdss", True, 1)
        np.testing.assert_allclose(reader.wavelength(), wave, rtol=1e-15)
        (chunk,) = reader.chunks(64)
    np.testing.assert_allclose(chunk.wavelength, wave, rtol=1e-15)
    assert chunk.flux.shape == chunk.ivar.shape == (1, len(wave)) and chunk.flux.dtype == np.float64
    np.testing.assert_array_equal(chunk.flux[0], np.where(good, coadd["flux"].astype(np.float64), np.nan))
    np.testing.assert_array_equal(chunk.ivar[0], np.where(good, coadd["ivar"].astype(np.float64), 0.0))
    np.testing.assert_array_equal(chunk.bad, [False])


def test_masks(spec_file):
    (chunk,) = sdss.FORMAT.open(spec_file).chunks(1)
    bad_pixels = [3, 10, 11, 12, 50, 51]  # and_mask, ivar 0, ivar < 0, flux NaN, and_mask (fixture)
    assert sorted(np.flatnonzero(np.isnan(chunk.flux[0]))) == bad_pixels
    assert sorted(np.flatnonzero(chunk.ivar[0] == 0)) == bad_pixels
    assert np.isfinite(chunk.flux[0, [7, 8]]).all()  # or_mask alone leaves the pixel usable


def test_every_pixel_bad(tmp_path):
    arrays = spec_lite_arrays()
    arrays["and_mask"][:] = 1
    (chunk,) = open_spectra(write_spec_lite(tmp_path / "spec-bad.fits", arrays)).chunks(1)
    assert np.isnan(chunk.flux).all() and (chunk.ivar == 0).all()
    np.testing.assert_array_equal(chunk.bad, [True])


@pytest.mark.parametrize("specobj, want", [
    ({"SPECOBJID": ("19A", "299490346961430528"), "TARGETID": ("K", 5)}, 299490346961430528),
    ({"SPECOBJID": ("K", 12345)}, 12345),
    ({"SPECOBJID": ("20A", "18446744073709551615")}, np.uint64(2**64 - 1)),
    ({"TARGETID": ("K", 77)}, 77),
    ({"PLATE": ("J", 266), "MJD": ("J", 51630), "FIBERID": ("J", 4)}, "0266-51630-0004"),
])  # fmt: skip
def test_ids(tmp_path, specobj, want):
    (chunk,) = open_spectra(write_spec_lite(tmp_path / "spec-id.fits", specobj=specobj)).chunks(1)
    assert chunk.ids.shape == (1,) and chunk.ids[0] == want


def test_sniffing(spec_file, tmp_path):
    assert sdss.FORMAT.sniff(Probe(spec_file))
    own = tmp_path / "own.fits"  # zfast's own layout: a table with wavelength and flux columns
    fits.BinTableHDU.from_columns([fits.Column("wavelength", "5D", array=np.ones((2, 5))),
                                   fits.Column("flux", "5D", array=np.ones((2, 5)))]).writeto(own)  # fmt: skip
    assert not sdss.FORMAT.sniff(Probe(own)) and open_spectra(own).format == "zfast"
    with fits.open(spec_file) as hdul:
        hdul[0].header["FITS_DEF"] = "sir.combinedSpectra"
        hdul.writeto(tmp_path / "sir.fits")
    assert not sdss.FORMAT.sniff(Probe(tmp_path / "sir.fits"))


def test_missing_loglam_names_file_hdu_and_column(tmp_path):
    path = write_spec_lite(tmp_path / "spec-nologlam.fits", drop=("loglam",))
    with pytest.raises(ValueError, match=r"spec-nologlam\.fits: HDU COADD has no column loglam"):
        open_spectra(path)


def test_missing_hdu(spec_file, tmp_path):
    with fits.open(spec_file) as hdul:
        del hdul["SPECOBJ"]
        hdul.writeto(tmp_path / "spec-noobj.fits")
    with pytest.raises(ValueError, match=r"spec-noobj\.fits: no HDU SPECOBJ or SPALL"):
        sdss.FORMAT.open(tmp_path / "spec-noobj.fits")


def test_truncated_file_is_one_line_error(spec_file, tmp_path):
    path = tmp_path / "spec-cut.fits"
    raw = spec_file.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as caught:
        sdss.FORMAT.open(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_nisp_model_cannot_predict_sdss_wavelengths(spec_file):
    model = SimpleNamespace(instrument=Instrument.preset("euclid-nisp-red"))
    with pytest.raises(ValueError, match=r"only 0 % of the model's pixels"):
        check_coverage(model, open_spectra(spec_file).wavelength())
