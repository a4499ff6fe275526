"""Result tables out: the columns of ``zfast.predict`` as CSV (streamed row by row) or a FITS binary table.

Writers take the path of the file to fill (``zfast.io.catalogue`` hands them the temporary path of
``zfast.files.atomic_path``, so a table appears under its real name only once complete).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np



def id_text(value) -> str:
    """An id as text: bytes decoded, surrounding blanks removed."""
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    return str(value).strip()


class CSVTable:
    """A CSV of ``columns`` (the first is the id), one row per spectrum, plus "pz" (space-separated) if asked."""

    def __init__(self, path: Path, pz: bool, columns: tuple):
        self.pz, self.columns = pz, columns
        self.stream = open(path, "w", newline="")
        self.writer = csv.writer(self.stream)
        self.writer.writerow(list(columns) + (["pz"] if pz else []))

    def write(self, ids, result: dict) -> None:
        columns = [np.asarray(ids)] + [result[name].numpy() for name in self.columns[1:]]
        pz = result["pz"].numpy() if self.pz else None
        for i in range(len(columns[0])):
            row = [id_text(columns[0][i])]
            for value in columns[1:]:
                v = value[i]
                row.append(int(v) if value.dtype == np.bool_ else f"{v:.7g}")
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


class FITSTable:
    """Collects the columns and writes one binary table REDSHIFTS at the end (the CSV table streams; a FITS table
    of millions of rows with P(z) needs rows x n_bins x 4 bytes of memory). The header records the P(z) bins."""

    def __init__(self, path: Path, pz: bool, columns: tuple):
        try:
            from astropy.io import fits  # noqa: F401
        except ImportError as error:
            raise ImportError("writing FITS needs astropy: pip install 'zfast[io]'") from error
        self.path, self.pz, self.columns = path, pz, columns
        self.parts: list = []

    def write(self, ids, result: dict) -> None:
        self.parts.append((np.asarray(ids), {k: v.numpy() for k, v in result.items()}))

    def finish(self, model) -> None:
        from astropy.io import fits

        ids = np.concatenate([ids for ids, _ in self.parts])
        if ids.dtype.kind in "OU":
            ids = ids.astype(str)
        columns = [fits.Column(name="ID", format=fits_format(ids), array=ids)]
        for name in self.columns[1:]:
            data = np.concatenate([part[name] for _, part in self.parts])
            columns.append(fits.Column(name=name.upper(), format="L" if data.dtype == np.bool_ else "D", array=data))
        if self.pz:
            data = np.concatenate([part["pz"] for _, part in self.parts])
            columns.append(fits.Column(name="PZ", format=f"{data.shape[1]}E", array=data))
        table = fits.BinTableHDU.from_columns(columns, name="REDSHIFTS")
        self._describe(table.header, model)
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(self.path, overwrite=True)

    @staticmethod
    def _describe(header, model) -> None:
        z_lo, z_hi = model.z_range
        header["ZMIN"] = (z_lo, "first P(z) bin edge")
        header["ZMAX"] = (z_hi, "last P(z) bin edge")
        header["NBINS"] = (int(model.bin_edges.numel() - 1), "uniform P(z) bins")
        header["ESTIMATR"] = model.estimator
        header["CHECKPT"] = Path(model.source).name[:68]

    def close(self) -> None:
        self.parts = []


TABLES = {".csv": CSVTable, ".fits": FITSTable}


def open_table(path: Path, suffix: str, pz: bool, columns: tuple):
    """The writer for ``suffix`` (.csv or .fits) filling ``path``."""
    if suffix not in TABLES:
        raise ValueError(f"unknown output format {suffix!r} (use .csv or .fits)")
    return TABLES[suffix](path, pz, columns)


