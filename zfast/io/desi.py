"""Placeholder: the desi reader is being written (issue 21)."""

from .formats import Format

FORMAT = Format("desi", "(not yet)", lambda probe: False, None)
