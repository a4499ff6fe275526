"""The SED-library builder (``zfast-sed build``): recipe, synthesis with bagpipes, provenance.

bagpipes (Carnall et al. 2018) is GPL-3 and zfast BSD-3: bagpipes is an optional extra, imported only inside
``zfast.sed.synthesis`` by the processes that build a library, never when ``zfast`` or ``zfast.sed`` is imported.
"""

from .builder import build, provenance_path
from .recipe import DLN, SFH_TYPES, WAVE_MAX, WAVE_MIN, BuildConfig, Recipe, age_of_universe_gyr, bagpipes_components, draw_parameters, rest_wavelength_grid
from .synthesis import bagpipes_version, synthesise

__all__ = ["DLN", "SFH_TYPES", "WAVE_MAX", "WAVE_MIN", "BuildConfig", "Recipe", "age_of_universe_gyr", "bagpipes_components",
           "bagpipes_version", "build", "draw_parameters", "provenance_path", "rest_wavelength_grid", "synthesise"]
