"""Euclid SIR combined-spectra files written from the archive's published data model (no real file could be had
here): a per-tile file with <k>_META, <k>_COMBINED1D_SIGNAL and per-dither DITH1D HDUs, and a single-object table."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

MSK_FLAGS = {"NOT_USE": 1, "LOW_SNR": 2, "BAD_PIX": 4, "ZERO_ORD": 8, "CONTAM": 16, "OUTSIDE": 32, "ABS_FLUX": 64}


def signal_table(rng, n_pix=531, wmin=11900.0, step=13.4, unit="Angstrom", name="0_COMBINED1D_SIGNAL", drop=None):
    """(HDU, truth): one combined spectrum with ~10 % NOT_USE, ~10 % ABS_FLUX and ~5 % LOW_SNR pixels scattered."""
    wave = wmin + step * np.arange(n_pix)
    fscale = 1e-17
    signal = (1 + 0.3 * np.sin(wave / 400.0) + rng.normal(0, 0.05, n_pix)).astype(np.float32)
    var = np.full(n_pix, 0.05**2, np.float32)
    mask = np.zeros(n_pix, np.int32)
    u = rng.random(n_pix)
    mask[u < 0.1] |= 1
    mask[(u >= 0.1) & (u < 0.2)] |= 64 | 2 * rng.integers(0, 2)
    mask[(u >= 0.2) & (u < 0.25)] |= 2
    var[rng.random(n_pix) < 0.01] = -1.0  # negative variances: masked, not a crash
    scale = {"Angstrom": 1.0, "um": 1e-4, "nm": 0.1}.get(unit, 1.0)
    columns = [fits.Column(name="WAVELENGTH", format="E", unit=unit, array=(wave * scale).astype(np.float32)),
               fits.Column(name="SIGNAL", format="E", array=signal), fits.Column(name="MASK", format="J", array=mask),
               fits.Column(name="QUALITY", format="E", array=np.ones(n_pix, np.float32)),
               fits.Column(name="VAR", format="E", array=var), fits.Column(name="NDITH", format="I", array=np.full(n_pix, 4, np.int16))]
    columns = [c for c in columns if c.name != drop]
    hdu = fits.BinTableHDU.from_columns(columns, name=name)
    for key, value in dict(FSCALE=fscale, LSF_SIG=1.1, WMIN=wmin, BINWIDTH=step, BINCOUNT=n_pix).items():
        hdu.header[key] = value
    truth = dict(wave=wave.astype(np.float32).astype(np.float64) if unit == "Angstrom" else (wave * scale).astype(np.float32) / scale,
                 flux=signal.astype(np.float64) * fscale, var=var.astype(np.float64) * fscale**2, mask=mask)
    return hdu, truth


def write_tile(path, n_obj=30, seed=0, missing=(), empty=(), shuffle=False, grids_differ=False, unit="Angstrom", drop_column=None):
    """A tile of ``n_obj`` objects; ``missing``/``empty``: indices whose signal HDU is absent / has no rows. Returns
    the truth per object (obj_id, and wave/flux/var/mask or None)."""
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    primary.header["FITS_DEF"] = "sir.combinedSpectra"
    primary.header["TILE_ID"] = 102018211
    primary.header["N_OBJ"] = n_obj
    for name, bit in MSK_FLAGS.items():
        primary.header[f"MSK_FLAG_{name}"[:8] if len(f"MSK_FLAG_{name}") <= 8 else f"HIERARCH MSK_FLAG_{name}"] = bit
    hdus, truths = [], []
    for k in range(n_obj):
        obj_id = 2_000_000_000_000 + 17 * k
        meta = fits.BinTableHDU.from_columns([fits.Column(name="OBJ_ID", format="K", array=[obj_id]),
                                              fits.Column(name="RA_OBJ", format="D", array=[150.0 + k * 1e-3]),
                                              fits.Column(name="DEC_OBJ", format="D", array=[2.0]),
                                              fits.Column(name="N_DITH", format="I", array=[4])], name=f"{k}_META")  # fmt: skip
        n_pix = 531 - (k % 3) * 7 if grids_differ else 531
        signal, truth = signal_table(rng, n_pix=n_pix, unit=unit, name=f"{k}_COMBINED1D_SIGNAL", drop=drop_column if k == 1 else None)
        dithers = []
        for ptg in (1001, 1002):  # not the combined spectrum: a reader that takes these is caught
            dither, _ = signal_table(rng, name=f"{k}_DITH1D_{ptg}_SIGNAL")
            dither.data["SIGNAL"] *= 50
            dithers += [dither, fits.BinTableHDU.from_columns(dither.columns, name=f"{k}_DITH1D_{ptg}_CONTAMINANTS")]
        group = [meta]
        if k in empty:
            group.append(fits.BinTableHDU.from_columns([fits.Column(name=c.name, format=c.format, unit=c.unit, array=c.array[:0]) for c in signal.columns],
                                                        name=f"{k}_COMBINED1D_SIGNAL"))  # fmt: skip
        elif k not in missing:
            group.append(signal)
        hdus.append(group + dithers)
        truths.append(dict(obj_id=obj_id, **(truth if k not in missing and k not in empty else dict(wave=None))))
    order = rng.permutation(n_obj) if shuffle else range(n_obj)
    flat = [h for k in order for h in (hdus[k][::-1] if shuffle else hdus[k])]
    fits.HDUList([primary] + flat).writeto(path, overwrite=True)
    return truths


def write_single(path, seed=0, obj_id=42):
    rng = np.random.default_rng(seed)
    hdu, truth = signal_table(rng, name="COMBINED1D_SIGNAL")
    hdu.header["OBJ_ID"] = obj_id
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return dict(obj_id=obj_id, **truth)


def write_votable(path, seed=0, obj_id=43, unit="um"):
    """The single-object spectrum as a VOTable: the signal table's columns as FIELDs, FSCALE and OBJ_ID as PARAMs."""
    from astropy.io.votable.tree import Param, VOTableFile
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    hdu, truth = signal_table(rng, name="COMBINED1D_SIGNAL", unit=unit)
    table = Table({c.name: np.asarray(hdu.data[c.name]) for c in hdu.columns})
    table["WAVELENGTH"].unit = unit
    votable = VOTableFile.from_table(table)
    resource_table = votable.get_first_table()
    resource_table.params.extend([Param(votable, name="FSCALE", datatype="double", value=hdu.header["FSCALE"]),
                                  Param(votable, name="OBJ_ID", datatype="long", value=obj_id)])
    votable.to_xml(str(path))
    return truth
