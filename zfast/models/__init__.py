"""Networks that read a normalised spectrum [B, M] and predict z: the paper's CNN and a residual 1D CNN.

Both end in a linear head whose width depends on the estimator (``head_size``): 1 output for regression (a
scaled z, see ``zfast.z_to_target``), k logits for classification or a distribution over k redshift bins.

One module per network (``paper_cnn``, ``resnet``, ``log_grid_resnet``, ``shift_resnet``), their shared layers in
``layers``, and the names, heads and ``build_model`` / ``split_outside`` in ``registry``; all re-exported here.
"""

from __future__ import annotations

from .layers import BatchNorm1dNHWC, Conv1dNHWC, ResidualBlock1D, fold_batchnorm
from .log_grid_resnet import LogGridResNet1D
from .paper_cnn import PaperCNN
from .registry import ESTIMATORS, MODELS, NEEDS_GRID, build_model, head_size, split_outside
from .resnet import ResNet1D, resnet1d_wide
from .shift_resnet import ShiftResNet1D

__all__ = ["ESTIMATORS", "MODELS", "LogGridResNet1D", "PaperCNN", "ResNet1D", "ShiftResNet1D", "build_model", "fold_batchnorm", "head_size", "split_outside"]
