"""Euclid SIR reader (zfast/io/euclid.py) on files built from the published data model (tests/euclid_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("astropy")

from euclid_fixtures import write_single, write_tile, write_votable  # noqa: E402
from zfast.io import open_spectra, predict_file  # noqa: E402


def rows(reader, size):
    parts = list(reader.chunks(size))
    ids = np.concatenate([p.ids for p in parts])
    waves = [np.broadcast_to(p.wavelength, p.flux.shape) for p in parts]
    return ids, waves, [p.flux for p in parts], [p.ivar for p in parts], np.concatenate([p.bad for p in parts])


def expected(truth, bad_bits=1 | ~63):
    good = ((truth["mask"] & bad_bits) == 0) & (truth["var"] > 0)
    return np.where(good, truth["flux"], np.nan), np.where(good, 1 / np.where(good, truth["var"], 1), 0.0)


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_the_tile_reads_the_combined_spectra_with_the_mask_rule(tmp_path, size):
    truths = write_tile(tmp_path / "tile.fits", n_obj=23, shuffle=True)
    with open_spectra(tmp_path / "tile.fits") as reader:
        assert reader.format == "euclid-sir" and reader.n_spectra == 23 and reader.knows_units
        ids, waves, fluxes, ivars, bad = rows(reader, size)
    flux, ivar = np.concatenate(fluxes), np.concatenate(ivars)
    assert ids.tolist() == [t["obj_id"] for t in truths] and not bad.any()
    for i, truth in enumerate(truths):
        f, v = expected(truth)
        np.testing.assert_allclose(flux[i], f, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ivar[i], v, rtol=1e-6)
        low_snr_only = (truth["mask"] == 2) & (truth["var"] > 0)
        assert (ivar[i][low_snr_only] > 0).all() and low_snr_only.any()  # LOW_SNR kept
        assert not (ivar[i][(truth["mask"] & 1) == 1] > 0).any()
    np.testing.assert_allclose(np.concatenate(waves)[0], truths[0]["wave"], rtol=1e-7)


def test_custom_bad_bits_missing_and_empty_objects_and_units(tmp_path):
    truths = write_tile(tmp_path / "tile.fits", n_obj=9, missing=(2,), empty=(5,), unit="um", grids_differ=True)
    with open_spectra(tmp_path / "tile.fits", sir_bad_bits=1) as reader:  # only NOT_USE: ABS_FLUX kept
        ids, waves, fluxes, ivars, bad = rows(reader, 4)
    assert bad.tolist() == [i in (2, 5) for i in range(9)]
    assert ids.tolist() == [t["obj_id"] for t in truths]  # ids from META even for the bad rows
    flat_flux = [row for f in fluxes for row in f]
    flat_ivar = [row for v in ivars for row in v]
    flat_wave = [row for w in waves for row in w]
    for i, truth in enumerate(truths):
        if i in (2, 5):
            assert np.isnan(flat_flux[i]).all() and not flat_ivar[i].any()
            continue
        f, v = expected(truth, bad_bits=1)
        m = len(f)
        np.testing.assert_allclose(flat_wave[i][:m], truth["wave"], rtol=1e-6)  # µm converted to Å
        np.testing.assert_allclose(flat_flux[i][:m], f, rtol=1e-6, equal_nan=True)
        assert not flat_ivar[i][m:].any()  # padding past a shorter grid is masked


def test_a_missing_column_names_the_hdu_and_column_and_a_truncated_file_one_line(tmp_path):
    write_tile(tmp_path / "tile.fits", n_obj=3, drop_column="VAR")
    with pytest.raises(ValueError, match=r"HDU 1_COMBINED1D_SIGNAL has no column VAR"):
        with open_spectra(tmp_path / "tile.fits") as reader:
            list(reader.chunks(10))
    write_tile(tmp_path / "good.fits", n_obj=3)
    data = (tmp_path / "good.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        open_spectra(tmp_path / "cut.fits", "euclid-sir")
    assert "cut.fits" in str(error.value) and "\n" not in str(error.value)


def test_the_single_object_table(tmp_path):
    truth = write_single(tmp_path / "one.fits")
    with open_spectra(tmp_path / "one.fits") as reader:
        assert reader.format == "euclid-sir-single"
        (chunk,) = list(reader.chunks(5))
    f, v = expected(truth)
    assert chunk.ids.tolist() == [42]
    np.testing.assert_allclose(chunk.flux[0], f, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(chunk.ivar[0], v, rtol=1e-6)


def test_the_single_object_votable(tmp_path):
    truth = write_votable(tmp_path / "one.xml", unit="um")
    with open_spectra(tmp_path / "one.xml") as reader:
        assert reader.format == "euclid-sir-votable" and reader.knows_units
        (chunk,) = list(reader.chunks(5))
    f, v = expected(truth)
    assert chunk.ids.tolist() == [43]
    np.testing.assert_allclose(chunk.wavelength, truth["wave"], rtol=1e-6)  # µm in the FIELD's unit, Å out
    np.testing.assert_allclose(chunk.flux[0], f, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(chunk.ivar[0], v, rtol=1e-6)
    (tmp_path / "broken.xml").write_text('<?xml version="1.0"?><VOTABLE><RESOURCE><TABLE><FIELD name="WAVELENGTH" '
                                         'datatype="float"/><FIELD name="SIGNAL"/><FIELD name="MASK"/><FIELD name="VAR"/>')
    with pytest.raises(ValueError) as error:
        open_spectra(tmp_path / "broken.xml")
    assert "broken.xml" in str(error.value) and "\n" not in str(error.value)


def test_a_tile_predicts_as_the_same_spectra_in_zfasts_own_layout(model, tmp_path):
    import csv

    write_tile(tmp_path / "tile.fits", n_obj=40, missing=(3,))
    with open_spectra(tmp_path / "tile.fits") as reader:
        (chunk,) = list(reader.chunks(100))
    np.savez(tmp_path / "same.npz", wavelength=chunk.wavelength, flux=chunk.flux, ivar=chunk.ivar, id=chunk.ids)
    predict_file(model, tmp_path / "tile.fits", tmp_path / "tile.csv", batch_size=16)
    predict_file(model, tmp_path / "same.npz", tmp_path / "same.csv", batch_size=16)
    with open(tmp_path / "tile.csv") as a, open(tmp_path / "same.csv") as b:
        tile, same = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["TARGETID"] for r in tile] == [r["TARGETID"] for r in same]
    assert [r["Z"] for r in tile] == [r["Z"] for r in same]
    assert int(tile[3]["ZWARN"]) & 512 and all(not int(r["ZWARN"]) & 512 for i, r in enumerate(tile) if i != 3)
