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
    air_to_vacuum(wavelength), vacuum_to_air(wavelength)
                                               Morton (2000) / IAU conversion of wavelengths in Å
    predict(model, wavelength, flux, ivar=None), load_model(checkpoint), load_ensemble(checkpoints)
                                               redshifts of real spectra from a zfast-train checkpoint
    SEDLibrary.default()                       the built-in bagpipes library (no bagpipes needed to load it)

SED libraries are built with ``zfast-sed build`` (zfast.sed_builder; needs the GPL-3 bagpipes, imported only there).
"""

from ._native import native_available
from .bins import PzSummary, pz_summary, redshift_bin_edges, soft_labels, target_to_z, z_to_bin, z_to_target
from .inference import EnsembleModel, RedshiftModel, load_ensemble, load_model, predict
from .data import AugmentedSpectra, Instrument, NoiseModel, SEDLibrary, normalise, split_by_sed
from .ops import JSDEntropyLoss, jsd_entropy, jsd_entropy_reference, pixel_edges, rebin, redshift_resample_reference
from .wavelengths import air_to_vacuum, vacuum_to_air

__version__ = "0.1.0"

__all__ = [
    "AugmentedSpectra",
    "Instrument",
    "JSDEntropyLoss",
    "NoiseModel",
    "PzSummary",
    "EnsembleModel",
    "RedshiftModel",
    "SEDLibrary",
    "air_to_vacuum",
    "jsd_entropy",
    "jsd_entropy_reference",
    "load_ensemble",
    "load_model",
    "native_available",
    "normalise",
    "pixel_edges",
    "predict",
    "pz_summary",
    "rebin",
    "redshift_bin_edges",
    "redshift_resample_reference",
    "soft_labels",
    "split_by_sed",
    "target_to_z",
    "vacuum_to_air",
    "z_to_bin",
    "z_to_target",
    "__version__",
]
