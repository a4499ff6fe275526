"""The package was built natively and reports what it has."""

import shutil

import numpy as np

import zfast
from zfast import _native


def test_native_cpu_extension_built_and_importable():
    info = zfast.native_available()
    assert info["cpu"], f"the C++ extension did not import: {info['error']}"
    assert info["error"] is None


def test_cuda_compiled_wherever_nvcc_exists():
    info = zfast.native_available()
    if shutil.which("nvcc"):
        assert info["cuda_built"], "nvcc is on PATH but the CUDA kernels were not compiled"
    # Without a usable device, CUDA must report unavailable rather than fail.
    assert info["cuda"] == (info["cuda_built"] and _native._C.cuda_device_count() > 0)


def test_loading_the_extension_leaves_denormals_alone():
    """The kernels are compiled with -ffast-math; the module must not switch the process to flush-to-zero."""
    assert _native._C is not None
    tiny = np.array([1e-310]) * np.array([1.0])
    assert tiny[0] != 0.0
