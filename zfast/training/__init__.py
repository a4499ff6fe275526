"""Training: the configuration (``TrainConfig``, presets, seeds), the streams a run draws, the losses, the loop
(``run``: DDP, checkpoints, resume), the evaluation at its end, and ensembles of finished runs."""

from .config import PRESETS, SEEDS, TrainConfig, check_config, config_from_dict, resolve_config
from .ensemble import build_ensemble
from .evaluation import evaluate, finish, fit_predict_stats, plots_on_demand, predict_set
from .loop import run
from .streams import augmented, calibration_set, make_instrument, splits

__all__ = ["PRESETS", "SEEDS", "TrainConfig", "augmented", "build_ensemble", "calibration_set", "check_config",
           "config_from_dict", "evaluate", "finish", "fit_predict_stats", "make_instrument", "plots_on_demand",
           "predict_set", "resolve_config", "run", "splits"]
