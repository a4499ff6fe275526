"""Data side of zfast: SED libraries (and, later, instruments, noise and the augmentation pipeline)."""

from .sed_library import SEDLibrary

__all__ = ["SEDLibrary"]
