"""zfast: spectroscopic redshifts of galaxies with 1D CNNs, and the native kernels that feed and train them.

The public API (everything else lives in its module: zfast.bins, zfast.checkpoint, zfast.data, zfast.flags, ...):

    predict(model, wavelength, flux, ivar=None)   redshifts of real spectra from a zfast-train checkpoint
    load_model(checkpoint), load_ensemble(paths)  a trained model (or several as one)
    SEDLibrary(wavelength, flux)                  rest-frame SEDs; .default(), .load(path), .redshift_resample(...)
    Instrument, NoiseModel, AugmentedSpectra      observed pixels, noise, the on-the-fly training stream
    redshift_resample(...)                        the SED-redshift-resample kernel (custom op)
    rebin(flux, wave_in, wave_out, fill=nan)      flux-conserving resampling (spectres' convention)
    jsd_entropy(logits, target, ...), JSDEntropyLoss   the fused JS + entropy loss
    redshift_bin_edges, soft_labels, pz_summary   the redshift bins of every estimator, labels, P(z) summaries
    air_to_vacuum, vacuum_to_air                  Morton (2000) / IAU wavelength conversion, Å
    native_available()                            which native kernels were built / are usable

SED libraries are built with ``zfast-sed build`` (zfast.sed; needs the GPL-3 bagpipes, imported only there).
"""

from ._native import native_available
from .bins import pz_summary, redshift_bin_edges, soft_labels
from .checkpoint import load_ensemble, load_model
from .data import AugmentedSpectra, Instrument, NoiseModel, SEDLibrary
from .ops import JSDEntropyLoss, jsd_entropy, rebin, redshift_resample
from .predict import predict
from .wavelengths import air_to_vacuum, vacuum_to_air

__version__ = "0.1.0"

__all__ = [
    "AugmentedSpectra",
    "Instrument",
    "JSDEntropyLoss",
    "NoiseModel",
    "SEDLibrary",
    "air_to_vacuum",
    "jsd_entropy",
    "load_ensemble",
    "load_model",
    "native_available",
    "predict",
    "pz_summary",
    "rebin",
    "redshift_bin_edges",
    "redshift_resample",
    "soft_labels",
    "vacuum_to_air",
    "__version__",
]
