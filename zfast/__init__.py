"""zfast: spectroscopic redshifts of galaxies with 1D CNNs, and the native kernels that feed and train them.

Public API:
    rebin(flux, wave_in, wave_out, fill=nan)   flux-conserving resampling (spectres convention)
    SEDLibrary(wavelength, flux)               rest-frame SEDs; .redshift_resample(sed_index, z, wave_edges)
    native_available()                         which native kernels were built / are usable
"""

from ._native import native_available
from .data import SEDLibrary
from .ops import pixel_edges, rebin, redshift_resample_reference

__version__ = "0.1.0"

__all__ = ["SEDLibrary", "native_available", "pixel_edges", "rebin", "redshift_resample_reference", "__version__"]
