"""zfast: spectroscopic redshifts of galaxies with 1D CNNs, and the native kernels that feed and train them.

Public API:
    rebin(flux, wave_in, wave_out, fill=nan)   flux-conserving resampling (spectres convention)
    SEDLibrary(wavelength, flux)               rest-frame SEDs; .redshift_resample(sed_index, z, wave_edges)
    native_available()                         which native kernels were built / are usable
    redshift_bin_edges, z_to_bin, z_to_target, target_to_z, soft_labels, pz_summary
                                               one definition of the redshift bins for all estimators
"""

from ._native import native_available
from .bins import PzSummary, pz_summary, redshift_bin_edges, soft_labels, target_to_z, z_to_bin, z_to_target
from .data import SEDLibrary
from .ops import pixel_edges, rebin, redshift_resample_reference

__version__ = "0.1.0"

__all__ = [
    "PzSummary",
    "SEDLibrary",
    "native_available",
    "pixel_edges",
    "pz_summary",
    "rebin",
    "redshift_bin_edges",
    "redshift_resample_reference",
    "soft_labels",
    "target_to_z",
    "z_to_bin",
    "z_to_target",
    "__version__",
]
