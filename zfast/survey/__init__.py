"""Survey-scale prediction: many spectra files in, one catalogue per file, a manifest and a merged catalogue out,
in this process or on Dask (``predict_files``; docs/survey.md)."""

from .inputs import catalogue_names, expand_inputs
from .manifest import Manifest
from .merge import merge_catalogues
from .run import SurveyRun, predict_files

__all__ = ["Manifest", "SurveyRun", "catalogue_names", "expand_inputs", "merge_catalogues", "predict_files"]
