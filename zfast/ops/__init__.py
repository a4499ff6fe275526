"""zfast ops: pure-PyTorch references (also the fallback) and their ``torch.library`` custom-op wrappers."""

from .jsd_entropy import JSDEntropyLoss, jsd_entropy, jsd_entropy_reference
from .rebin import pixel_edges, rebin
from .redshift_resample import redshift_resample, redshift_resample_reference

__all__ = [
    "JSDEntropyLoss",
    "jsd_entropy",
    "jsd_entropy_reference",
    "pixel_edges",
    "rebin",
    "redshift_resample",
    "redshift_resample_reference",
]
