"""The DESI reader (zfast.io.desi) on real DESI coadd files and on hand-made ones whose answer is known.

The real files (tests/data/desi/LICENSE) are checked against an independent computation here: each camera read
with astropy, and the ivar-weighted combination done pixel by pixel by wavelength matching, not by offsets.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

from zfast.data.instrument import Instrument
from zfast.io import desi
from zfast.io.formats import Probe
from zfast.io.readers import open_spectra
from zfast.predict import check_coverage

DATA = Path(__file__).parent / "data" / "desi"
HEALPIX = DATA / "coadd-sv3-dark-26065.fits.gz"  # 5 spectra, 3 with every pixel at ivar 0, one with masked pixels
TILE = DATA / "coadd-4-80613-thru20210324.fits.gz"  # 1 spectrum; redrock Z = 0.36874 (redrock-4-80613-...)
REAL = [HEALPIX, TILE]


def expected(path: Path) -> tuple:
    """(ids [N], wavelength [M], flux [N, M], ivar [N, M]) computed straight from the file with astropy."""
    with fits.open(path) as hdul:
        ids = np.asarray(hdul["FIBERMAP"].data["TARGETID"])
        cameras = [h.name[:-11] for h in hdul if h.name.endswith("_WAVELENGTH")]
        parts = {c: [np.asarray(hdul[f"{c}_{p}"].data, dtype=np.float64) for p in ("WAVELENGTH", "FLUX", "IVAR", "MASK")]
                 for c in cameras}  # fmt: skip
    keys = np.unique(np.concatenate([np.round(w / 0.8).astype(np.int64) for w, *_ in parts.values()]))
    numerator = np.zeros((len(ids), len(keys)))
    weight = np.zeros((len(ids), len(keys)))
    for wave, flux, ivar, mask in parts.values():
        column = np.searchsorted(keys, np.round(wave / 0.8).astype(np.int64))
        for i in range(len(ids)):
            for j, k in enumerate(column):
                if mask[i, j] == 0 and ivar[i, j] > 0 and np.isfinite(flux[i, j]):
                    numerator[i, k] += ivar[i, j] * flux[i, j]
                    weight[i, k] += ivar[i, j]
    with np.errstate(invalid="ignore"):
        flux = np.where(weight > 0, numerator / weight, np.nan)
    return ids, keys * 0.8, flux, weight


def read_all(path: Path, size: int):
    with open_spectra(path) as reader:
        chunks = list(reader.chunks(size))
    return (np.concatenate([c.ids for c in chunks]), chunks[0].wavelength, np.concatenate([c.flux for c in chunks]),
            np.concatenate([c.ivar for c in chunks]), np.concatenate([c.bad for c in chunks]))  # fmt: skip


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_file_matches_astropy(path):
    ids, wave, flux, ivar = expected(path)
    with open_spectra(path) as reader:
        assert (reader.format, reader.knows_units, reader.n_spectra) == ("desi", True, len(ids))
        np.testing.assert_allclose(reader.wavelength(), wave, rtol=0, atol=1e-6)
    got_ids, got_wave, got_flux, got_ivar, bad = read_all(path, 2)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got_wave, wave, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(got_flux), np.isnan(flux))
    np.testing.assert_allclose(got_flux, flux, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got_ivar, ivar, rtol=1e-12)
    np.testing.assert_array_equal(bad, ~(ivar > 0).any(axis=1))
    assert got_flux.dtype == got_ivar.dtype == np.float64


def test_real_file_rows():
    """The healpix file: sky fibres (negative TARGETID) fully at ivar 0 are bad; the masked pixels are NaN."""
    ids, _, flux, ivar, bad = read_all(HEALPIX, 5)
    np.testing.assert_array_equal(bad, [True, True, False, True, False])
    assert np.isnan(flux[bad]).all() and (ivar[bad] == 0).all()
    assert 0 < np.isnan(flux[2]).sum() < 100 and not np.isnan(flux[4]).any()


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_chunk_sizes_give_the_same_rows(size):
    reference = read_all(HEALPIX, 5)
    for got, want in zip(read_all(HEALPIX, size), reference):
        np.testing.assert_array_equal(got, want)


def test_mask_is_honoured(tmp_path):
    """Pixels with a MASK bit but good ivar are left out of the weighting (the real files zero their ivar too)."""
    path = tmp_path / "coadd.fits"
    with gzip.open(TILE) as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    with fits.open(path, mode="update") as hdul:
        hdul["B_MASK"].data[0, 100:110] = 1  # B only: NaN
        hdul["R_MASK"].data[0, :20] = 1  # R's start, inside the B/R overlap: B's value alone
    _, wave, flux, ivar, _ = read_all(path, 1)
    _, want_wave, want_flux, want_ivar = expected(path)
    np.testing.assert_allclose(flux, want_flux, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ivar, want_ivar, rtol=1e-12)
    with fits.open(path) as hdul:
        b_wave, b_flux, b_ivar = (np.asarray(hdul[f"B_{p}"].data, dtype=np.float64) for p in ("WAVELENGTH", "FLUX", "IVAR"))
        r_start = hdul["R_WAVELENGTH"].data[0]
    assert np.isnan(flux[0, 100:110]).all() and (ivar[0, 100:110] == 0).all()
    overlap = np.flatnonzero(np.isclose(b_wave, r_start))[0]
    np.testing.assert_allclose(flux[0, overlap:overlap + 20], b_flux[0, overlap:overlap + 20], rtol=1e-6)
    np.testing.assert_allclose(ivar[0, overlap:overlap + 20], b_ivar[0, overlap:overlap + 20], rtol=1e-6)


def write_cameras(path: Path, cameras: dict, ids=(11, 22), wave_unit: str = "Angstrom") -> Path:
    """A DESI-layout file: ``cameras`` maps a prefix to (wavelength [M], flux [N, M], ivar [N, M], mask [N, M])."""
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=np.asarray(ids))], name="FIBERMAP")]
    for cam, (wave, flux, ivar, mask) in cameras.items():
        hdus.append(fits.ImageHDU(np.asarray(wave, np.float64), name=f"{cam}_WAVELENGTH"))
        hdus[-1].header["BUNIT"] = wave_unit
        hdus += [fits.ImageHDU(np.asarray(flux, np.float32), name=f"{cam}_FLUX"),
                 fits.ImageHDU(np.asarray(ivar, np.float32), name=f"{cam}_IVAR"),
                 fits.ImageHDU(np.asarray(mask, np.int32), name=f"{cam}_MASK")]  # fmt: skip
    fits.HDUList(hdus).writeto(path)
    return path


def camera(first: int, n: int, value: float, weight: float, rows: int = 2, step: float = 0.8):
    wave = (first + np.arange(n)) * step
    return wave, np.full((rows, n), value), np.full((rows, n), weight), np.zeros((rows, n))


@pytest.mark.parametrize("order", ["BR", "RB"])
def test_overlap_is_inverse_variance_weighted(tmp_path, order):
    """Flux 1 (ivar 1) on pixels 0-9 and flux 3 (ivar 3) on pixels 6-14: 2.5 with ivar 4 where both are (the
    cameras in either order in the file)."""
    cameras = {"B": camera(4500, 10, 1.0, 1.0), "R": camera(4506, 9, 3.0, 3.0)}
    path = write_cameras(tmp_path / "two.fits", {cam: cameras[cam] for cam in order})
    with open_spectra(path, air=True, flux_unit="whatever") as reader:  # unknown options are ignored
        assert reader.format == "desi"
        np.testing.assert_allclose(reader.wavelength(), (4500 + np.arange(15)) * 0.8, rtol=0, atol=1e-9)
        (chunk,) = reader.chunks(10)
    want_flux = np.r_[[1.0] * 6, [2.5] * 4, [3.0] * 5]
    want_ivar = np.r_[[1.0] * 6, [4.0] * 4, [3.0] * 5]
    np.testing.assert_allclose(chunk.flux, np.tile(want_flux, (2, 1)), rtol=1e-12)
    np.testing.assert_allclose(chunk.ivar, np.tile(want_ivar, (2, 1)), rtol=1e-12)
    np.testing.assert_array_equal(chunk.ids, [11, 22])
    np.testing.assert_array_equal(chunk.bad, [False, False])


def test_gap_masks_and_bad_rows(tmp_path):
    """A gap between cameras is NaN/0; masked, zero-ivar and NaN pixels drop out; a row with nothing is bad."""
    b, r = camera(100, 4, 2.0, 1.0), camera(106, 4, 4.0, 1.0)
    b[3][0, 1] = 8  # mask bit
    b[2][0, 2] = 0.0  # ivar 0
    r[1][0, 0] = np.nan
    b[2][1], r[2][1] = 0.0, -1.0  # row 1: nothing usable
    path = write_cameras(tmp_path / "gap.fits", {"B": b, "R": r})
    (chunk,) = open_spectra(path).chunks(5)
    want = np.array([2.0, np.nan, np.nan, 2.0, np.nan, np.nan, np.nan, 4.0, 4.0, 4.0])
    np.testing.assert_allclose(chunk.flux[0], want, equal_nan=True)
    np.testing.assert_array_equal(chunk.ivar[0], np.where(np.isnan(want), 0.0, 1.0))
    assert np.isnan(chunk.flux[1]).all() and (chunk.ivar[1] == 0).all()
    np.testing.assert_array_equal(chunk.bad, [False, True])


def test_single_brz_camera_and_units(tmp_path):
    wave, flux, ivar, mask = camera(4500, 5, 7.0, 2.0)
    path = write_cameras(tmp_path / "brz.fits", {"BRZ": (wave / 10.0, flux, ivar, mask)}, wave_unit="nm")
    with open_spectra(path) as reader:
        np.testing.assert_allclose(reader.wavelength(), wave, rtol=1e-12)
        np.testing.assert_allclose(next(reader.chunks(1)).flux, 7.0)


@pytest.mark.parametrize("r_camera", [camera(7212, 9, 3, 3, step=0.5), camera(4506.5, 9, 3, 3)], ids=["step", "phase"])
def test_misaligned_cameras_are_refused(tmp_path, r_camera):
    path = write_cameras(tmp_path / "shifted.fits", {"B": camera(4500, 10, 1, 1), "R": r_camera})
    with pytest.raises(ValueError, match=r"shifted\.fits: camera R's wavelengths are not on camera B's 0\.8000 Å grid"):
        open_spectra(path)


def test_missing_hdus_and_columns(tmp_path):
    good = camera(4500, 10, 1.0, 1.0)
    path = write_cameras(tmp_path / "noivar.fits", {"B": good})
    with fits.open(path) as hdul:
        del hdul["B_IVAR"]
        hdul.writeto(tmp_path / "noivar2.fits")
    with pytest.raises(ValueError, match=r"noivar2\.fits: no HDU B_IVAR"):
        desi.FORMAT.open(tmp_path / "noivar2.fits")
    with fits.open(path) as hdul:
        hdul["FIBERMAP"] = fits.BinTableHDU.from_columns([fits.Column("FIBER", "J", array=np.asarray([1, 2]))], name="FIBERMAP")
        hdul.writeto(tmp_path / "noid.fits")
    with pytest.raises(ValueError, match=r"noid\.fits: HDU FIBERMAP has no column TARGETID"):
        desi.FORMAT.open(tmp_path / "noid.fits")
    with pytest.raises(ValueError, match=r"rows\.fits: HDU B_FLUX has shape \(3, 10\)"):
        desi.FORMAT.open(write_cameras(tmp_path / "rows.fits", {"B": good[:1] + camera(4500, 10, 1, 1, rows=3)[1:]}))


def test_truncated_file_is_one_line_error(tmp_path):
    path = tmp_path / "cut.fits"
    raw = gzip.decompress(TILE.read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as caught:
        desi.FORMAT.open(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_sniffing(tmp_path):
    assert desi.FORMAT.sniff(Probe(TILE))
    own = tmp_path / "own.fits"  # zfast's own layout: unprefixed image HDUs
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(5.0), name="WAVELENGTH"),
                  fits.ImageHDU(np.ones((2, 5)), name="FLUX"), fits.ImageHDU(np.ones((2, 5)), name="IVAR")]).writeto(own)  # fmt: skip
    assert open_spectra(own).format == "zfast"
    sir = write_cameras(tmp_path / "sir.fits", {"B": camera(4500, 10, 1, 1)})
    with fits.open(sir, mode="update") as hdul:
        hdul[0].header["FITS_DEF"] = "sir.combinedSpectra"
    assert not desi.FORMAT.sniff(Probe(sir))
    assert not desi.FORMAT.sniff(Probe(DATA / "redrock-4-80613-thru20210324.fits.gz"))  # FIBERMAP, no cameras


def test_nisp_model_cannot_predict_desi_wavelengths():
    """DESI covers 3600-9824 Å, the NISP red grism 12060-18920 Å: the coverage check refuses (check_coverage reads
    only ``model.instrument``, so a stand-in with the NISP instrument is the model here)."""
    model = SimpleNamespace(instrument=Instrument.preset("euclid-nisp-red"))
    with open_spectra(TILE) as reader:
        with pytest.raises(ValueError, match=r"cover 3599\.6-9824\.4 Å, only 0 % of the model's pixels"):
            check_coverage(model, reader.wavelength())
