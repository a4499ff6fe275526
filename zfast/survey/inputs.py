"""What ``zfast-predict --input`` names, as a sorted list of spectra files, and the catalogue each one gets.

An input argument is a spectra file, a folder (the spectra files in it and its subfolders), a glob pattern (``tiles/*.fits``,
``**`` recursive), or a text file listing one of those per line (``.txt``, ``.lst``, ``.list``; blank lines and
``#`` comments skipped, relative paths taken from the list's folder). The expanded files are sorted by path and
repeats dropped, so the same arguments give the same run whatever order they were typed in.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

LIST_SUFFIXES = (".txt", ".lst", ".list")
# What the readers open (zfast.io.readers); only these are taken from a folder or a glob.
SPECTRA_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".npz", ".h5", ".hdf5", ".xml", ".vot", ".votable")
CATALOGUE_TAG = ".zfast"  # tile_0001.fits -> tile_0001.zfast.fits: the catalogue of that file


def is_spectra_file(path: Path) -> bool:
    """A file a folder or a glob contributes: a spectra suffix, not hidden (a writer's temporary file) and not a
    zfast catalogue (an output folder inside the input folder is not read back as input)."""
    name = path.name.lower()
    if name.startswith(".") or any(name.endswith(CATALOGUE_TAG + s) for s in (".fits", ".csv", ".parquet")):
        return False
    return name.endswith(SPECTRA_SUFFIXES) and path.is_file()


def spectra_stem(name: str) -> str:
    """``name`` without its spectra suffix (``a.fits.gz`` -> ``a``)."""
    lowered = name.lower()
    for suffix in sorted(SPECTRA_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _has_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand_one(spec: str, base: Path, origin: str) -> list:
    """The spectra files ``spec`` names (a file, a folder or a glob; relative to ``base``); ``origin`` says where
    ``spec`` came from in errors."""
    path = Path(spec) if Path(spec).is_absolute() else base / spec
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if is_spectra_file(p))
        if not found:
            raise FileNotFoundError(f"{origin}: the folder {path} holds no spectra files ({', '.join(SPECTRA_SUFFIXES)})")
        return found
    if path.is_file():
        return [path]
    if _has_pattern(spec):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if is_spectra_file(Path(p)))
        if not found:
            raise FileNotFoundError(f"{origin}: no spectra file matches {spec!r}")
        return found
    raise FileNotFoundError(f"{origin}: {path}: no such file, folder or pattern")


def _listed(list_path: Path) -> list:
    """The spectra files a list file names (one file, folder or glob per line)."""
    found = []
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"--input {list_path}: not a text list of paths ({error})") from error
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            found += _expand_one(entry, list_path.parent, f"--input {list_path}, line {number}")
    if not found:
        raise ValueError(f"--input {list_path}: the list names no files")
    return found


def expand_inputs(specs: Iterable) -> list:
    """The spectra files ``specs`` name (module docstring), as absolute Paths, sorted, each once.
    FileNotFoundError naming the argument (and the list file's line) for one that names nothing."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    found = []
    for spec in specs:
        spec = os.fspath(spec)
        path = Path(spec)
        if path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
            found += _listed(path)
        else:
            found += _expand_one(spec, Path.cwd(), f"--input {spec}")
    unique = {os.path.realpath(p): Path(os.path.abspath(p)) for p in found}
    if not unique:
        raise ValueError("--input: no input files given")
    return sorted(unique.values())


def catalogue_names(inputs: list, suffix: str) -> list:
    """The catalogue name of each input (relative to the output folder): its path below the inputs' common folder,
    with its spectra suffix replaced by ``.zfast`` + ``suffix``. ValueError when two inputs would share one
    (``a.fits`` and ``a.npz`` in one folder)."""
    parents = [os.path.dirname(p) for p in inputs]
    common = Path(os.path.commonpath(parents)) if len(parents) > 1 else Path(parents[0])
    names, owners = [], {}
    for path in inputs:
        relative = Path(path).relative_to(common)
        name = relative.with_name(spectra_stem(relative.name) + CATALOGUE_TAG + suffix)
        if name in owners:
            raise ValueError(f"--input: {owners[name]} and {path} would both write the catalogue {name} (rename one)")
        owners[name] = path
        names.append(name)
    return names
