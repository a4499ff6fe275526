"""Placeholder: the euclid reader is being written (issue 21)."""

from .formats import Format

FORMAT = Format("euclid", "(not yet)", lambda probe: False, None)
SINGLE_FORMAT = Format("euclid-sir-single", "(not yet)", lambda probe: False, None)
