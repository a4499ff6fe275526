"""The redshift catalogue out: the columns of ``zfast.predict`` under survey names, as CSV (streamed row by row),
a FITS binary table (units and descriptions in the header, P(z) in its own HDU) or Parquet (large runs).

``CATALOGUE`` lists every column: its name (redrock's where one means the same), the ``zfast.predict`` key it
comes from, its unit and what it means. Writers take the path of the file to fill (``zfast.io.catalogue`` hands
them the temporary path of ``zfast.files.atomic_path``, so a table appears under its real name only once complete).
Column names before version 0.3 were lowercase (``id``, ``z``, ``z_err``, ...): see CHANGELOG.md.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..predict import deltachi2_min


class Column(NamedTuple):
    name: str  # in the catalogue
    key: str  # in zfast.predict's result
    unit: str  # FITS TUNIT ('' for dimensionless)
    meaning: str  # FITS TCOMM


CATALOGUE = (
    Column("Z", "z", "", "redshift: the mode of P(z) (regression: the network's output)"),
    Column("ZERR", "z_err", "", "standard deviation of P(z)"),
    Column("ZWARN", "zwarn", "", "warning bitmask, 0 = no warning (zfast.flags; docs/catalogue.md)"),
    Column("DELTACHI2", "deltachi2", "", "2 ln(P_CAND[0]/P_CAND[1]): best vs second candidate"),
    Column("ZPROB", "zprob", "", "share of P(z) within +-0.01(1+Z) of Z"),
    Column("Z_CAND", "z_cand", "", "the 3 best redshift candidates (Z first)"),
    Column("P_CAND", "p_cand", "", "P(z) mass within +-0.01(1+z) of each candidate"),
    Column("Z_LO68", "z_lo68", "", "16th percentile of P(z)"),
    Column("Z_HI68", "z_hi68", "", "84th percentile of P(z)"),
    Column("NPIXELS", "npixels", "pix", "valid pixels on the model's grid"),
    Column("VALID_FRACTION", "valid_fraction", "", "share of the model's pixels that are valid"),
    Column("SNR", "snr", "", "median continuum S/N per model pixel"),
    Column("P_OUTSIDE", "p_outside", "", "P(z outside the trained range)"),
    Column("OOD_SCORE", "ood_score", "", "out-of-distribution score (higher: less like training)"),
)
TEMPLATE_CATALOGUE = (
    Column("Z_TEMPLATE", "z_template", "", "redshift of the best template fit"),
    Column("ZERR_TEMPLATE", "z_template_err", "", "its error (Delta chi2 = 1, widened by sqrt(rchi2) > 1)"),
    Column("TEMPLATE_SED", "template_sed", "", "index of the best-fitting SED in the template library"),
    Column("TEMPLATE_RCHI2", "template_rchi2", "", "chi2 per valid pixel of the best template fit"),
    Column("DELTACHI2_TEMPLATE", "template_deltachi2", "", "chi2 of the best fit over 0.01(1+z) away less the template fit's"),
)


def catalogue_columns(templates: bool) -> tuple:
    return CATALOGUE + (TEMPLATE_CATALOGUE if templates else ())


def id_text(value) -> str:
    """An id as text: bytes decoded, surrounding blanks removed."""
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    return str(value).strip()


def _values(result: dict, column: Column) -> np.ndarray:
    value = result[column.key]
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _text(value) -> str:
    if isinstance(value, (np.integer, int, np.bool_)):
        return str(int(value))
    return f"{value:.7g}"


class CSVTable:
    """A CSV of TARGETID and ``columns`` (vector columns as NAME_1, NAME_2, ...), one row per spectrum, plus PZ
    (space-separated probabilities) if asked."""

    def __init__(self, path: Path, pz: bool, columns: tuple):
        self.pz, self.columns = pz, columns
        self.stream = open(path, "w", newline="")
        self.writer = csv.writer(self.stream)
        self.header_written = False

    def write(self, ids, result: dict) -> None:
        values = [_values(result, c) for c in self.columns]
        if not self.header_written:
            names = ["TARGETID"]
            for column, value in zip(self.columns, values):
                names += [column.name] if value.ndim == 1 else [f"{column.name}_{k + 1}" for k in range(value.shape[1])]
            self.writer.writerow(names + (["PZ"] if self.pz else []))
            self.header_written = True
        pz = result["pz"].numpy() if self.pz else None
        ids = np.asarray(ids)
        for i in range(len(ids)):
            row = [id_text(ids[i])]
            for value in values:
                row += [_text(value[i])] if value.ndim == 1 else [_text(v) for v in value[i]]
            if pz is not None:
                row.append(" ".join(f"{p:.4g}" for p in pz[i]))
            self.writer.writerow(row)

    def finish(self, model) -> None:
        self.stream.close()

    def close(self) -> None:
        self.stream.close()


def fits_format(ids: np.ndarray) -> str:
    """The FITS column format of an id array: K (integers), D (floats) or the longest text's width (A)."""
    if ids.dtype.kind in "iu":
        return "K"
    if ids.dtype.kind == "f":
        return "D"
    width = max(1, max((len(id_text(i)) for i in ids), default=1))
    return f"{width}A"


def collected(parts: list, columns: tuple) -> tuple[np.ndarray, dict]:
    """(ids [N], name -> values [N] or [N, k]) of the parts (ids, result) collected by a writer."""
    ids = np.concatenate([np.asarray(ids) for ids, _ in parts])
    if ids.dtype.kind in "OUS":
        ids = np.array([id_text(i) for i in ids])
    data = {c.name: np.concatenate([_values(result, c) for _, result in parts]) for c in columns}
    return ids, data


class FITSTable:
    """Collects the columns and writes the binary table REDSHIFTS at the end (the CSV table streams; a FITS table
    of millions of rows with P(z) needs rows x n_bins x 4 bytes of memory), with TUNIT/TCOMM for each column;
    with ``pz``, P(z) [N, n_bins] as the image HDU PZ and its bin edges [n_bins + 1] as the image HDU PZ_EDGES."""

    def __init__(self, path: Path, pz: bool, columns: tuple):
        try:
            from astropy.io import fits  # noqa: F401
        except ImportError as error:
            raise ImportError("writing FITS needs astropy: pip install 'zfast[io]'") from error
        self.path, self.pz, self.columns = path, pz, columns
        self.parts: list = []

    def write(self, ids, result: dict) -> None:
        self.parts.append((np.asarray(ids), {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in result.items()}))

    def finish(self, model) -> None:
        from astropy.io import fits

        ids, data = collected(self.parts, self.columns)
        columns = [fits.Column(name="TARGETID", format=fits_format(ids), array=ids)]
        for column in self.columns:
            values = data[column.name]
            kind = "K" if values.dtype.kind in "iu" else "L" if values.dtype == np.bool_ else "D"
            shape = "" if values.ndim == 1 else str(values.shape[1])
            columns.append(fits.Column(name=column.name, format=shape + kind, array=values, unit=column.unit or None))
        table = fits.BinTableHDU.from_columns(columns, name="REDSHIFTS")
        table.header.comments["TTYPE1"] = "the input's identifier (OBJ_ID, TARGETID, id)"
        for k, column in enumerate(self.columns, start=2):
            table.header.comments[f"TTYPE{k}"] = column.meaning[:47]
            table.header[f"TCOMM{k}"] = column.meaning[:68]
        describe(table.header, model)
        hdus = [fits.PrimaryHDU(), table]
        if self.pz:
            image = fits.ImageHDU(np.concatenate([part["pz"] for _, part in self.parts]).astype(np.float32), name="PZ")
            describe(image.header, model)
            image.header["COMMENT"] = "P(z) per spectrum (rows as REDSHIFTS); bin edges in HDU PZ_EDGES"
            hdus += [image, fits.ImageHDU(model.bin_edges.double().cpu().numpy(), name="PZ_EDGES")]
        fits.HDUList(hdus).writeto(self.path, overwrite=True)

    def close(self) -> None:
        self.parts = []


def describe(header, model) -> None:
    """The model's z range, bins, checkpoint and SMALL_DELTA_CHI2 threshold, in a FITS header."""
    z_lo, z_hi = model.z_range
    header["ZMIN"] = (z_lo, "first P(z) bin edge")
    header["ZMAX"] = (z_hi, "last P(z) bin edge")
    header["NBINS"] = (int(model.bin_edges.numel() - 1), "P(z) bins")
    header["ESTIMATR"] = model.estimator
    header["CHECKPT"] = Path(model.source).name[:68]
    if model.estimator != "regression":
        threshold = deltachi2_min(model)
        if math.isfinite(threshold):
            header["DCHI2MIN"] = (threshold, "ZWARN SMALL_DELTA_CHI2: DELTACHI2 below this")
        else:
            header["COMMENT"] = "ZWARN SMALL_DELTA_CHI2 on every row: no DELTACHI2 made ZWARN=0 pure enough"


class ParquetTable:
    """Parquet (pyarrow): rows appended per chunk as row groups, so large runs stream; vector columns as lists,
    P(z) as a list column PZ; each column's unit and meaning in the schema metadata."""

    def __init__(self, path: Path, pz: bool, columns: tuple):
        try:
            import pyarrow  # noqa: F401
        except ImportError as error:
            raise ImportError("writing Parquet needs pyarrow: pip install 'zfast[parquet]'") from error
        self.path, self.pz, self.columns = path, pz, columns
        self.writer = None

    def write(self, ids, result: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = np.asarray(ids)
        arrays = {"TARGETID": pa.array([id_text(i) for i in ids] if ids.dtype.kind in "OUS" else ids)}
        for column in self.columns:
            values = _values(result, column)
            arrays[column.name] = pa.array(values) if values.ndim == 1 else pa.array(list(values))
        if self.pz:
            arrays["PZ"] = pa.array(list(result["pz"].numpy()))
        table = pa.table(arrays)
        if self.writer is None:
            meta = {f"{c.name}.unit": c.unit for c in self.columns} | {f"{c.name}.meaning": c.meaning for c in self.columns}
            self.writer = pq.ParquetWriter(self.path, table.schema.with_metadata(meta))
        self.writer.write_table(table.replace_schema_metadata(self.writer.schema.metadata))

    def finish(self, model) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


TABLES = {".csv": CSVTable, ".fits": FITSTable, ".parquet": ParquetTable}


def open_table(path: Path, suffix: str, pz: bool, columns: tuple):
    """The writer for ``suffix`` (.csv, .fits or .parquet) filling ``path`` with ``columns`` (``Column`` s)."""
    if suffix not in TABLES:
        raise ValueError(f"unknown output format {suffix!r} (use .csv, .fits or .parquet)")
    return TABLES[suffix](path, pz, columns)
