"""One catalogue of many: ``merge_catalogues`` (``zfast-predict --merge OUT``).

The per-input catalogues, in the run's input order, with one more column, INPUT (the input file's path below the
inputs' common folder), written atomically. The merged file has the per-input catalogues' format: Parquet and
CSV stream (one input in memory at a time), FITS is assembled in memory (astropy) — use Parquet for large runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..files import atomic_path

INPUT_COLUMN = "INPUT"


def merge_catalogues(parts: list, output: Path) -> int:
    """Write the catalogues ``parts`` [(input label, catalogue path)] as one table at ``output`` (its suffix
    must be theirs); returns the rows. ValueError naming the catalogue whose columns differ from the first's."""
    output = Path(output)
    suffix = output.suffix.lower()
    wrong = [str(path) for _, path in parts if Path(path).suffix.lower() != suffix]
    if wrong:
        raise ValueError(f"--merge {output}: the catalogues are {Path(wrong[0]).suffix} files; merge into the same format")
    merge = {".parquet": _merge_parquet, ".csv": _merge_csv, ".fits": _merge_fits}.get(suffix)
    if merge is None:
        raise ValueError(f"--merge {output}: unknown format (use .csv, .fits or .parquet)")
    with atomic_path(output) as temporary:
        return merge(parts, temporary)


def _different(path, first) -> ValueError:
    return ValueError(f"{path}: its columns differ from {first}'s (one model and one set of options per merged catalogue)")


def _merge_parquet(parts: list, target: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, rows, first = None, 0, None
    try:
        for label, path in parts:
            table = pq.read_table(path)
            table = table.append_column(INPUT_COLUMN, pa.array([label] * table.num_rows, pa.string()))
            if writer is None:
                writer, first = pq.ParquetWriter(target, table.schema), path
            elif not table.schema.equals(writer.schema, check_metadata=False):
                raise _different(path, first)
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _csv_field(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def _merge_csv(parts: list, target: Path) -> int:
    rows, header, first = 0, None, None
    with open(target, "w", encoding="utf-8", newline="") as out:
        for label, path in parts:
            field = "," + _csv_field(label) + "\n"
            with open(path, "r", encoding="utf-8", newline="") as handle:
                top = handle.readline().rstrip("\r\n")
                if header is None:
                    header, first = top, path
                    out.write(header + "," + INPUT_COLUMN + "\n")
                elif top != header:
                    raise _different(path, first)
                for line in handle:
                    out.write(line.rstrip("\r\n") + field)
                    rows += 1
    return rows


def _merge_fits(parts: list, target: Path) -> int:
    from astropy.io import fits
    from astropy.table import Table, vstack

    tables, pz, first_header, first = [], [], None, None
    for label, path in parts:
        with fits.open(path, memmap=False) as hdul:
            table = Table(hdul["REDSHIFTS"].data)
            if first_header is None:
                first_header, first, extra = hdul["REDSHIFTS"].header.copy(), path, [h.copy() for h in hdul[2:]]
            elif table.colnames != tables[0].colnames[:-1]:
                raise _different(path, first)
            table[INPUT_COLUMN] = np.array([label] * len(table), dtype=str)
            tables.append(table)
            if "PZ" in hdul:
                pz.append(np.asarray(hdul["PZ"].data))
    merged = fits.table_to_hdu(vstack(tables, join_type="exact"))
    merged.name = "REDSHIFTS"
    for card in first_header.cards:  # the model's description and the columns' meanings, as in each catalogue
        if card.keyword.startswith(("TCOMM", "ZMIN", "ZMAX", "NBINS", "ESTIMATR", "CHECKPT", "DCHI2MIN", "COMMENT")):
            merged.header.append(card)
    hdus = [fits.PrimaryHDU(), merged]
    for hdu in extra:
        if hdu.name == "PZ":
            hdu.data = np.concatenate(pz).astype(np.float32)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(target, overwrite=True)
    return len(merged.data)
