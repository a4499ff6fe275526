"""Files in and out: spectra files (``zfast.io.readers.open_spectra``: zfast's layout, Euclid SIR, DESI, SDSS),
the catalogue (CSV, FITS, Parquet) and ``predict_file``."""

from .catalogue import predict_file
from .formats import Chunk
from .readers import format_names, open_spectra
from .spectra import NpyMember, SpectraFile
from .tables import CATALOGUE, CSVTable, FITSTable, ParquetTable, open_table

__all__ = ["CATALOGUE", "CSVTable", "Chunk", "FITSTable", "NpyMember", "ParquetTable", "SpectraFile", "format_names",
           "open_spectra", "open_table", "predict_file"]
