"""zfast: spectroscopic redshifts of galaxies with 1D CNNs, and the native kernels that feed and train them.

Public API:
    rebin(flux, wave_in, wave_out, fill=nan)   flux-conserving resampling (spectres convention)
    SEDLibrary(wavelength, flux)               rest-frame SEDs; .redshift_resample(sed_index, z, wave_edges)
    jsd_entropy(logits, target, lambda_js=0.85, lambda_ent=0.15, reduction="mean")
                                               JS + entropy loss of softmax(logits) against target (fused kernel)
    JSDEntropyLoss(...)                        its nn.Module form
    native_available()                         which native kernels were built / are usable
    redshift_bin_edges, z_to_bin, z_to_target, target_to_z, soft_labels, pz_summary
                                               one definition of the redshift bins for all estimators
"""

from ._native import native_available
from .bins import PzSummary, pz_summary, redshift_bin_edges, soft_labels, target_to_z, z_to_bin, z_to_target
from .data import AugmentedSpectra, Instrument, NoiseModel, SEDLibrary, normalise, split_by_sed
from .ops import JSDEntropyLoss, jsd_entropy, jsd_entropy_reference, pixel_edges, rebin, redshift_resample_reference

__version__ = "0.1.0"

__all__ = [
    "AugmentedSpectra",
    "Instrument",
    "JSDEntropyLoss",
    "NoiseModel",
    "PzSummary",
    "SEDLibrary",
    "jsd_entropy",
    "jsd_entropy_reference",
    "native_available",
    "normalise",
    "pixel_edges",
    "pz_summary",
    "rebin",
    "redshift_bin_edges",
    "redshift_resample_reference",
    "soft_labels",
    "split_by_sed",
    "target_to_z",
    "z_to_bin",
    "z_to_target",
    "__version__",
]
