"""Which reader reads a spectra file: chosen from the file's content, or forced by name (``--format``).

The readers (``FORMATS``, most specific first) all follow the contract of ``zfast.io.formats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import desi, euclid, sdss, spectra
from .formats import Probe


def _formats() -> tuple:
    """FORMATS, most specific first (the zfast layout last: it is what is left)."""
    return (euclid.FORMAT, euclid.SINGLE_FORMAT, euclid.VOTABLE_FORMAT, desi.FORMAT, sdss.FORMAT, spectra.FORMAT)


def format_names() -> tuple:
    return tuple(f.name for f in _formats())


def open_spectra(path, format: Optional[str] = None, **options):
    """The reader of ``path``: ``format`` by name, or the first of ``FORMATS`` whose ``sniff`` accepts the file.
    ValueError (naming the file, every reader and what it looks for) when none does. ``options`` go to the
    reader's opener (readers ignore the options they do not have)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file")
    formats = _formats()
    if format not in (None, "auto"):
        chosen = [f for f in formats if f.name == format]
        if not chosen:
            raise ValueError(f"--format {format!r}: no such reader (one of auto, {', '.join(f.name for f in formats)})")
        return chosen[0].open(path, **options)
    probe = Probe(path)
    for candidate in formats:
        if _sniffs(candidate, probe):
            return candidate.open(path, **options)
    listed = "; ".join(f"{f.name}: {f.looks_for}" for f in formats)
    raise ValueError(f"{path}: no reader recognises this file ({listed})")


def _sniffs(candidate, probe) -> bool:
    """``candidate.sniff(probe)``; a file that cannot even be sniffed (a broken FITS card, ...) is not its format:
    the zfast reader, last, names what is wrong with it."""
    try:
        return bool(candidate.sniff(probe))
    except Exception:  # noqa: BLE001 - sniffing never decides an error; reading does
        return False

