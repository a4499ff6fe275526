"""Spectra files in: ``wavelength`` [M] (or [N, M], Å), ``flux`` [N, M] and optional ``ivar`` [N, M] and ``id`` [N]
from .npz, .h5/.hdf5 or .fits, read in row chunks so files larger than memory stream.

Names are matched case-insensitively. FITS: the first binary table with a FLUX column gives every column; image
HDUs named WAVELENGTH, FLUX, IVAR, ID fill the rest, and a 2-D primary image is taken as flux. npz members are
parsed row by row from the archive (``NpyMember``: sequential reads, so deflated members stream too; object arrays
are refused, they would run code from the file), HDF5 datasets sliced, FITS memory-mapped.
"""

from __future__ import annotations

import math
import os
import sys
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from .formats import Chunk, Format, is_fits


# What reading a damaged file raises: empty, truncated or not this format (OSError, EOFError, BadZipFile), a
# corrupt deflate stream (zlib.error), a mangled .npy header (ValueError, SyntaxError, tokenize.TokenError), a
# header naming no member (KeyError), data cut short (numpy's TypeError "buffer is too small").
DAMAGED = (OSError, EOFError, ValueError, KeyError, TypeError, SyntaxError, zipfile.BadZipFile, zlib.error, tokenize.TokenError)


def damaged_errors() -> tuple:
    """DAMAGED, plus astropy's VerifyError (a broken FITS card) once astropy is imported (only then can it be raised)."""
    verify = sys.modules.get("astropy.io.fits.verify")
    return DAMAGED + ((verify.VerifyError,) if verify is not None else ())


class SpectraFile:
    """A spectra file (module docstring), opened and checked; ``chunks`` yields its rows (the reader contract of
    ``zfast.io.formats``). Its units are the user's: ``knows_units`` False."""

    format = "zfast"
    knows_units = False

    def __init__(self, path: Union[str, os.PathLike], **options):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such input file")
        suffix = self.path.suffix.lower()
        self._close = lambda: None
        if suffix == ".npz":
            opener = self._open_npz
        elif suffix in (".h5", ".hdf5"):
            opener = self._open_hdf5
        elif suffix in (".fits", ".fit", ".fts") or self.path.name.lower().endswith(".fits.gz"):
            opener = self._open_fits
        else:
            raise ValueError(f"{self.path}: unknown input format (use .npz, .h5/.hdf5 or .fits)")
        try:
            opener()
        except ImportError:
            raise
        except damaged_errors() as error:
            self.close()
            raise self.damaged(error) from error
        self._validate()

    def damaged(self, error: BaseException, where: str = "") -> ValueError:
        """The one-line ValueError naming the file (and ``where`` in it) for an error of ``damaged_errors()``."""
        message = (str(error).strip().splitlines() or [""])[0]
        hint = ", truncated?" if isinstance(error, TypeError) else ""
        return ValueError(f"{self.path}: not a readable {self.path.suffix.lower()} spectra file{where}{hint} "
                          f"({type(error).__name__}: {message})")  # fmt: skip

    # Each opener sets self.columns: name -> an object with .shape and [rows] slicing (or a full array).
    def _open_npz(self):
        import zipfile

        archive = zipfile.ZipFile(self.path)
        self._close = archive.close
        self.columns = {}
        for name in archive.namelist():
            if name.endswith(".npy"):
                self.columns[name[:-4].lower()] = NpyMember(archive, name)

    def _open_hdf5(self):
        try:
            import h5py
        except ImportError as error:
            raise ImportError("reading HDF5 needs h5py: pip install 'zfast[io]'") from error
        handle = h5py.File(self.path, "r")
        self._close = handle.close
        self.columns = {}
        for name in handle:
            # A crafted file could make zfast read any local file as flux: external links, external raw storage
            # and virtual datasets all point outside the file, so they are refused, not followed.
            if isinstance(handle.get(name, getlink=True), h5py.ExternalLink):
                raise ValueError(f"'{name}' is an external link to another file (not followed)")
            item = handle[name]
            if isinstance(item, h5py.Dataset):
                if item.external or item.is_virtual:
                    raise ValueError(f"'{name}' keeps its data in other files (external or virtual dataset; not read)")
                self.columns[name.lower()] = item

    def _open_fits(self):
        try:
            from astropy.io import fits
        except ImportError as error:
            raise ImportError("reading FITS needs astropy: pip install 'zfast[io]'") from error
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(self.path, memmap=True)
            self._close = hdul.close
            self._fits_columns(hdul, fits)
        truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
        if truncated:  # astropy only warns, and memory-maps what is there
            raise ValueError(f"the file is truncated ({truncated[0]})")
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    def _fits_columns(self, hdul, fits):
        self.columns = {}
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU) and hdu.data is not None:
                names = {n.lower(): n for n in hdu.columns.names}
                if "flux" in names and "flux" not in self.columns:
                    for low, name in names.items():
                        self.columns[low] = hdu.data[name]
        for hdu in hdul:
            name = (hdu.name or "").lower()
            if hdu.is_image and hdu.data is not None and name in ("wavelength", "flux", "ivar", "id") and name not in self.columns:
                self.columns[name] = hdu.data
        if "flux" not in self.columns and hdul[0].data is not None and hdul[0].data.ndim == 2:
            self.columns["flux"] = hdul[0].data

    def _validate(self):
        missing = [name for name in ("wavelength", "flux") if name not in self.columns]
        if missing:
            self.close()
            raise ValueError(f"{self.path}: missing {missing}; found {sorted(self.columns) or 'nothing'} "
                             "(need wavelength [M] and flux [N, M]; optional ivar [N, M], id [N])")  # fmt: skip
        for name in ("wavelength", "flux", "ivar"):
            kind = np.dtype(self.columns[name].dtype).kind if name in self.columns else "f"
            if kind not in "fiu":  # complex, bool, strings and objects are not fluxes
                self.close()
                raise ValueError(f"{self.path}: {name} must be real numbers, got {np.dtype(self.columns[name].dtype)}")
        if "id" in self.columns and len(tuple(self.columns["id"].shape)) != 1:
            self.close()
            raise ValueError(f"{self.path}: id must be one value per spectrum [N], got shape {tuple(self.columns['id'].shape)}")
        flux_shape = tuple(self.columns["flux"].shape)
        wave_shape = tuple(self.columns["wavelength"].shape)
        problem = None
        if len(flux_shape) != 2 or flux_shape[0] == 0 or flux_shape[1] < 2:
            problem = f"flux must be [N, M] with N >= 1 spectra and M >= 2 pixels, got {flux_shape}"
        elif wave_shape not in ((flux_shape[1],), flux_shape):
            problem = f"wavelength {wave_shape} does not match flux {flux_shape} (need [M] or [N, M])"
        elif "ivar" in self.columns and tuple(self.columns["ivar"].shape) != flux_shape:
            problem = f"ivar {tuple(self.columns['ivar'].shape)} does not match flux {flux_shape}"
        elif "id" in self.columns and tuple(self.columns["id"].shape)[:1] != flux_shape[:1]:
            problem = f"id {tuple(self.columns['id'].shape)} does not match the {flux_shape[0]} spectra"
        if problem:
            self.close()
            raise ValueError(f"{self.path}: no spectra (empty flux)" if flux_shape[:1] == (0,) else f"{self.path}: {problem}")
        self.n_spectra, self.n_pixels = flux_shape
        self.shared_grid = len(wave_shape) == 1

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wavelength(self) -> np.ndarray:
        """The shared grid [M], or the first spectrum's grid."""
        column = self.columns["wavelength"]
        try:
            return np.asarray(column[:] if self.shared_grid else column[0:1][0], dtype=np.float64)
        except damaged_errors() as error:
            raise self.damaged(error, " (wavelength)") from error

    def chunks(self, size: int) -> Iterator[Chunk]:
        """``Chunk`` s (ids [n], wavelength [M] or [n, M], flux [n, M], ivar [n, M] or None) of consecutive rows."""
        shared = self.wavelength() if self.shared_grid else None
        for start in range(0, self.n_spectra, size):
            stop = min(self.n_spectra, start + size)

            def rows(name):
                return np.asarray(self.columns[name][start:stop])

            try:  # damage found only when the rows are read (a corrupt deflate stream, a cut member)
                ids = rows("id") if "id" in self.columns else np.arange(start, stop)
                wave = shared if shared is not None else rows("wavelength").astype(np.float64)
                ivar = rows("ivar").astype(np.float64) if "ivar" in self.columns else None
                flux = rows("flux").astype(np.float64)
            except damaged_errors() as error:
                raise self.damaged(error, f" (rows {start}-{stop - 1})") from error
            yield Chunk(ids, wave, flux, ivar)


class NpyMember:
    """One array of an .npz read row by row from the archive (sequential reads: deflated members stream too)."""

    def __init__(self, archive, name: str):
        self.archive, self.name = archive, name
        with archive.open(name) as stream:
            self.version = np.lib.format.read_magic(stream)
            self.shape, self.fortran, self.dtype = self._read_header(stream)
            header_bytes = stream.tell()
        if self.dtype.hasobject:
            raise ValueError(f"{name}: object arrays are not read (they would run code from the file)")
        # The header's shape must match the bytes the member holds: a header claiming more (a crafted or cut
        # file) is refused here, before any row is read or any memory is allocated for it.
        claimed = header_bytes + math.prod(self.shape) * self.dtype.itemsize
        stored = archive.getinfo(name).file_size
        if claimed != stored:
            raise ValueError(f"{name}: its header claims shape {self.shape} of {self.dtype} ({claimed:,} bytes) but "
                             f"the archive holds {stored:,} bytes")  # fmt: skip
        self._stream, self._next_row = None, 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0] if self.shape else 1)
        if not self.shape or self.fortran or len(self.shape) == 1 or start < self._next_row:
            if not hasattr(self, "_whole"):
                with self.archive.open(self.name) as stream:
                    self._whole = np.lib.format.read_array(stream, allow_pickle=False)
            return self._whole[rows]
        if self._stream is None:
            self._stream = self.archive.open(self.name)
            np.lib.format.read_magic(self._stream)
            self._read_header(self._stream)
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        if start > self._next_row:
            self._stream.read((start - self._next_row) * row_bytes)
        data = self._stream.read((stop - start) * row_bytes)
        self._next_row = stop
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start,) + tuple(self.shape[1:]))

    def _read_header(self, stream):
        if self.version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)


def _sniff(probe) -> bool:
    name = probe.path.name.lower()
    return name.endswith((".npz", ".h5", ".hdf5")) or is_fits(probe.path)


FORMAT = Format("zfast", "a .npz, .h5/.hdf5 or .fits file with wavelength and flux arrays (docs/predict.md)", _sniff, SpectraFile)
