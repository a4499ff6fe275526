"""The one atomic write: every file zfast produces (checkpoints, libraries, splits, tables, provenance) is
written beside its final name and renamed into place, so a kill, a full disk or an exception never leaves half
a file under the real name — the previous file, if any, stays intact.

    with atomic_path("run/best.pt") as temporary:   # a Path in the same folder (rename stays on one device)
        torch.save(state, temporary)                # any writer that takes a path: h5py, astropy, np.savez ...
    write_text("run/config.json", text)              # the common case

The temporary file gets the permissions of an ordinary file (0666 under the umask, not mkstemp's 0600) and is
fsync'ed before the rename; on any exception it is removed and the exception propagates.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def _usual_permissions(path: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _link_exclusively(temporary: str, path: pathlib.Path) -> None:
    """Move ``temporary`` to ``path`` only if nothing is there: FileExistsError otherwise (a hard link fails on
    an existing name atomically; where links are not supported, an O_EXCL placeholder claims the name)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(f"{path} appeared while it was being written (another run?): left as it is") from None
    except OSError:  # no hard links here (some network and FAT file systems)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise FileExistsError(f"{path} appeared while it was being written (another run?): left as it is") from None
        os.replace(temporary, path)
        return
    os.remove(temporary)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, make_parents: bool = True, exclusive: bool = False) -> Iterator[pathlib.Path]:
    """A temporary path beside ``path`` (a unique name: concurrent writers never share one); on a clean exit it is
    fsync'ed and renamed to ``path``. ``exclusive``: fail with FileExistsError, leaving it untouched, if ``path``
    exists by then (a run that must not overwrite checks at its end too, not only at its start)."""
    path = pathlib.Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        _usual_permissions(temporary)
        yield pathlib.Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        if exclusive:
            _link_exclusively(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(path: PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: PathLike, record, indent: int = 2) -> None:
    """``record`` as JSON (non-ASCII kept, trailing newline) to ``path``, atomically."""
    write_text(path, json.dumps(record, indent=indent, ensure_ascii=False) + "\n")
