"""The run's record beside its catalogues: ``manifest.jsonl`` in the output folder.

JSON Lines, appended and fsync'ed as each input finishes (a run over 30,000 tile files appends 30,000 short lines;
rewriting one JSON document per file would write gigabytes). The first line is the header: the zfast version,
each checkpoint's name and SHA-256, and the options that change the catalogues. Every other line is one input's
outcome: ``status`` "done" (with the catalogue's name, rows, flagged rows, bytes and SHA-256, and the input's
size and modification time) or "failed" (with the error). The last line for an input wins; a line cut short by a
kill is ignored, so a killed run's manifest always reads back.

``--resume`` trusts an input as complete only when its last line is "done", the input file has the same size
and modification time, and the catalogue on disk has the recorded size and SHA-256; anything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from ..files import write_text

NAME = "manifest.jsonl"
KIND = "zfast-predict manifest"
VERSION = 1


def sha256_of(path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(block), b""):
            digest.update(piece)
    return digest.hexdigest()


def input_stamp(path) -> dict:
    """What says an input file has not changed since its catalogue was written: its size and modification time."""
    status = os.stat(path)
    return {"input_bytes": status.st_size, "input_mtime_ns": status.st_mtime_ns}


def catalogue_stamp(path) -> dict:
    return {"bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def _read_lines(path: Path) -> list:
    records = []
    with open(path, "r", encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line a kill cut short
    return records


class Manifest:
    """The manifest of an output folder; ``open`` it, ``complete`` asks whether an input may be skipped,
    ``record`` appends an input's outcome."""

    def __init__(self, path: Path, header: dict, entries: dict):
        self.path, self.header, self.entries = path, header, entries

    @classmethod
    def open(cls, folder: Path, header: dict, resume: bool = False, overwrite: bool = False) -> "Manifest":
        """The folder's manifest: read back with ``resume`` (ValueError when it was written for another model or
        other options), started afresh with ``overwrite`` or when there is none; FileExistsError otherwise."""
        path = Path(folder) / NAME
        if path.exists() and resume:
            records = _read_lines(path)
            if not records or records[0].get("kind") != KIND:
                raise ValueError(f"{path}: not a zfast-predict manifest (cannot --resume from it)")
            _check_same_run(path, records[0], header)
            entries = {r["input"]: r for r in records[1:] if isinstance(r, dict) and "input" in r}
            return cls(path, records[0], entries)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: a run wrote this folder (--resume to finish it, --overwrite to redo it)")
        write_text(path, json.dumps(header, ensure_ascii=False) + "\n")
        return cls(path, header, {})

    def complete(self, input_path, catalogue: Path) -> bool:
        """True when ``input_path`` is done (module docstring): its catalogue may be kept as it is."""
        entry = self.entries.get(str(input_path))
        if entry is None or entry.get("status") != "done" or not catalogue.is_file() or not Path(input_path).is_file():
            return False
        if {k: entry.get(k) for k in ("input_bytes", "input_mtime_ns")} != input_stamp(input_path):
            return False
        return entry.get("bytes") == os.path.getsize(catalogue) and entry.get("sha256") == sha256_of(catalogue)

    def record(self, entry: dict) -> None:
        """Append ``entry`` (one input's outcome) and make it durable before returning."""
        self.entries[entry["input"]] = entry
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _check_same_run(path: Path, found: dict, wanted: dict) -> None:
    differing = [key for key in ("model", "options") if found.get(key) != wanted.get(key)]
    if differing:
        detail = "; ".join(f"{key}: was {found.get(key)}, now {wanted.get(key)}" for key in differing)
        raise ValueError(f"{path}: --resume with another {' and '.join(differing)} than the run that wrote it ({detail}); "
                         "use a new --output folder or --overwrite")  # fmt: skip


def model_identity(checkpoints) -> list:
    """Each checkpoint's file name and SHA-256: the model a manifest's catalogues came from."""
    return [{"name": Path(c).name, "sha256": sha256_of(c)} for c in checkpoints]


def header(checkpoints, options: dict, version: Optional[str] = None) -> dict:
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as package_version

        try:
            version = package_version("zfast")
        except PackageNotFoundError:
            version = "unknown"
    return {"kind": KIND, "version": VERSION, "zfast": version, "model": model_identity(checkpoints), "options": options}
