"""Files in and out: spectra files (``SpectraFile``), result tables (CSV, FITS) and ``predict_file``."""

from .catalogue import predict_file
from .spectra import NpyMember, SpectraFile
from .tables import CSVTable, FITSTable, open_table

__all__ = ["CSVTable", "FITSTable", "NpyMember", "SpectraFile", "open_table", "predict_file"]
