"""zfast.io.fitsindex against astropy (the independent reference) on fresh random FITS files: HDU offsets and
sizes, keyword values and binary-table rows; damaged files refused naming the file; and the Euclid tile read
through it equal to the same tile read through astropy (zfast.io.euclid.AstropyTile)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")

from euclid_fixtures import write_tile  # noqa: E402
from zfast.io.euclid import AstropyTile, SIRTile, open_tile  # noqa: E402
from zfast.io.fitsindex import FitsIndex, FitsStructureError  # noqa: E402


def random_file(path, rng):
    """A primary image, then a random mix of images (any BITPIX, 1-3 axes), empty HDUs, binary tables (with a
    heap: variable-length arrays) and tables whose headers span several blocks; some data blocks begin with
    'XTENSION' to look like a header."""
    primary = fits.PrimaryHDU(rng.normal(size=(3, 5)).astype(">f4") if rng.random() < 0.5 else None)
    primary.header["OBJECT"] = "x' y"
    hdus = [primary]
    for i in range(int(rng.integers(3, 12))):
        kind = rng.integers(0, 4)
        if kind == 0:
            shape = tuple(int(n) for n in rng.integers(1, 40, size=int(rng.integers(1, 4))))
            dtype = rng.choice(["u1", ">i2", ">i4", ">i8", ">f4", ">f8"])
            hdu = fits.ImageHDU((rng.normal(size=shape) * 100).astype(dtype), name=f"IMG{i}")
        elif kind == 1:
            hdu = fits.ImageHDU(name=f"EMPTY{i}")
        elif kind == 2:
            n = int(rng.integers(0, 300))
            cols = [fits.Column(name="A", format="E", unit="nm", array=rng.normal(size=n).astype("f4")),
                    fits.Column(name="b_int", format="J", array=rng.integers(-9, 9, n)),
                    fits.Column(name="C", format="3D", array=rng.normal(size=(n, 3))),
                    fits.Column(name="S", format="5A", array=np.array(["ab", "c'd", "", "x", "yz"] * 60)[:n])]
            if rng.random() < 0.5:
                cols.append(fits.Column(name="V", format="PE()", array=[rng.normal(size=int(k)).astype("f4") for k in rng.integers(0, 5, n)]))
            hdu = fits.BinTableHDU.from_columns(cols, name=f"TAB{i}")
            hdu.header["FSCALE"] = float(rng.normal())
        else:
            data = np.frombuffer((b"XTENSION= 'IMAGE   '" + b" " * 60) * 72, dtype="u1").copy()
            hdu = fits.ImageHDU(data, name=f"DECOY{i}")
            for k in range(int(rng.integers(40, 120))):  # a header over several blocks
                hdu.header[f"KEY{k}"] = k
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


@pytest.mark.parametrize("seed", range(6))
def test_the_index_matches_astropy(tmp_path, generator, seed):
    rng = np.random.default_rng(generator.initial_seed() + seed)
    random_file(tmp_path / "f.fits", rng)
    index = FitsIndex(tmp_path / "f.fits")
    names, scale = index.strings("EXTNAME"), index.floats("FSCALE", -7.0)
    with fits.open(tmp_path / "f.fits") as hdul:
        assert len(index) == len(hdul)
        for i, hdu in enumerate(hdul):
            assert index.data_offset[i] == hdu._data_offset
            assert names[i] == hdu.header.get("EXTNAME", "")
            assert scale[i] == hdu.header.get("FSCALE", -7.0)
            header = index.header(i)
            assert header["BITPIX"] == hdu.header["BITPIX"] and header.get("OBJECT") == hdu.header.get("OBJECT")
            if isinstance(hdu, fits.BinTableHDU):
                layout = index.table_layout(i)
                has_heap = "V" in hdu.columns.names
                assert (layout is None) == has_heap  # heap arrays are not decoded: the caller falls back
                if layout is not None and len(hdu.data):
                    rows = index.rows(i, layout)
                    np.testing.assert_array_equal(layout.values(rows, "A"), hdu.data["A"])
                    np.testing.assert_array_equal(layout.values(rows, "B_INT"), hdu.data["b_int"])
                    np.testing.assert_array_equal(layout.values(rows, "C"), hdu.data["C"])
                    assert [v.rstrip(b" ") for v in layout.values(rows, "S").tolist()] == [s.encode() for s in hdu.data["S"]]
                    assert layout.columns["A"].unit == "nm"
        tables = [i for i, h in enumerate(hdul) if isinstance(h, fits.BinTableHDU)]
        layouts = index.table_layouts(tables)
        for i, layout in zip(tables, layouts):
            assert (layout is None) == ("V" in hdul[i].columns.names)


def test_scaled_and_unsigned_columns(tmp_path, generator):
    n = 37
    unsigned = np.random.default_rng(generator.initial_seed()).integers(0, 2**32 - 1, n, dtype=np.uint32)
    scaled = np.random.default_rng(generator.initial_seed() + 1).normal(size=n)
    stored = np.round(scaled * 100).astype(np.int16)
    cols = [fits.Column(name="U", format="J", bzero=2**31, array=unsigned), fits.Column(name="X", format="I", array=stored)]
    hdu = fits.BinTableHDU.from_columns(cols)
    hdu.header["TSCAL2"], hdu.header["TZERO2"] = 0.01, 5.0
    hdu.writeto(tmp_path / "s.fits")
    index = FitsIndex(tmp_path / "s.fits")
    layout = index.table_layout(1)
    with fits.open(tmp_path / "s.fits") as hdul:
        np.testing.assert_array_equal(layout.values(index.rows(1, layout), "U"), hdul[1].data["U"])
        np.testing.assert_allclose(layout.values(index.rows(1, layout), "X"), hdul[1].data["X"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(hdul[1].data["X"], stored * 0.01 + 5.0)  # the reference did scale


def test_damaged_files_are_refused_naming_the_file(tmp_path, generator):
    random_file(tmp_path / "f.fits", np.random.default_rng(generator.initial_seed()))
    fits.append(tmp_path / "f.fits", np.zeros(2000))  # the last HDU has data over several blocks: "cut" cuts into it
    data = (tmp_path / "f.fits").read_bytes()
    cases = {"empty.fits": b"", "short.fits": data[:1000], "cut.fits": data[: len(data) - 2880],
             "text.fits": b"hello " * 1000, "noend.fits": data[:2880].replace(b"END" + b" " * 77, b"X" * 80)}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FitsStructureError) as error:
            FitsIndex(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("variant", [dict(shuffle=True), dict(missing=(2,), empty=(5,), unit="um", grids_differ=True), dict(unit="nm")])
def test_the_mapped_tile_equals_the_astropy_tile(tmp_path, variant):
    write_tile(tmp_path / "tile.fits", n_obj=17, **variant)
    mapped, reference = open_tile(tmp_path / "tile.fits"), AstropyTile(tmp_path / "tile.fits")
    assert isinstance(mapped, SIRTile) and mapped.n_spectra == reference.n_spectra
    np.testing.assert_array_equal(mapped.wavelength(), reference.wavelength())
    for a, b in zip(mapped.chunks(5), reference.chunks(5)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    mapped.close(), reference.close()


def test_a_gzipped_or_undecoded_tile_is_read_through_astropy(tmp_path):
    write_tile(tmp_path / "tile.fits", n_obj=4)
    (tmp_path / "tile.fits.gz").write_bytes(gzip.compress((tmp_path / "tile.fits").read_bytes()))
    with open_tile(tmp_path / "tile.fits.gz") as reader:
        assert isinstance(reader, AstropyTile) and reader.n_spectra == 4
    with fits.open(tmp_path / "tile.fits") as hdul:  # a logical column: not decoded by fitsindex
        signal = hdul["1_COMBINED1D_SIGNAL"]
        cols = signal.columns + fits.ColDefs([fits.Column(name="FLAG", format="L", array=np.ones(len(signal.data), bool))])
        new = fits.BinTableHDU.from_columns(cols, header=signal.header, name="1_COMBINED1D_SIGNAL")
        hdus = [new if h.name == "1_COMBINED1D_SIGNAL" else h for h in hdul]
        fits.HDUList(hdus).writeto(tmp_path / "logical.fits")
    with open_tile(tmp_path / "logical.fits") as reader:
        assert isinstance(reader, AstropyTile)
        (chunk,) = list(reader.chunks(10))
        assert not chunk.bad.any()
