"""Data side of zfast: SED libraries, instruments and noise, and the on-the-fly augmentation pipeline."""

from .augment import AugmentedSpectra, Perturbations, load_splits, save_splits, split_by_sed
from .instrument import Instrument, NoiseModel, normalise
from .sed_library import SEDLibrary

__all__ = ["AugmentedSpectra", "Instrument", "NoiseModel", "Perturbations", "SEDLibrary", "load_splits", "normalise", "save_splits", "split_by_sed"]
