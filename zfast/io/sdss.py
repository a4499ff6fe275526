"""Placeholder: the sdss reader is being written (issue 21)."""

from .formats import Format

FORMAT = Format("sdss", "(not yet)", lambda probe: False, None)
