"""The built-in SED library: installed with the package, loads with numpy alone, and is what it says it is."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

import zfast
from conftest import nisp_edges
from zfast.data import lines as ew_lines
from zfast.sed import recipe as sed_recipe

DATA = pathlib.Path(zfast.__file__).resolve().parent / "data"
LIBRARY_FILE = DATA / "default_library.npz"
PROVENANCE_FILE = DATA / "default_library.provenance.json"
COMMON_PARAMS = ("sfh_type", "age_gyr", "metallicity_zsun", "av", "eta", "logu", "veldisp_kms", "ssfr_per_yr",
                 "mass_weighted_age_gyr", "median_luminosity", "halpha_flux", "ew_halpha")  # fmt: skip
RECIPE_PARAMS = ("tau_gyr", "age_min_gyr", "tmax_gyr", "fwhm_gyr", "burst_age_gyr", "burst_fraction")


@pytest.fixture(scope="module")
def library():
    return zfast.SEDLibrary.default()


@pytest.fixture(scope="module")
def provenance():
    return json.loads(PROVENANCE_FILE.read_text(encoding="utf-8"))


def test_files_are_installed_and_small():
    assert LIBRARY_FILE.is_file() and PROVENANCE_FILE.is_file(), f"not installed in {DATA}"
    assert LIBRARY_FILE.stat().st_size <= 2 * 1000**2  # the repository takes no file over 2 MB


def test_loads_with_numpy_alone(tmp_path):
    """No h5py, astropy or bagpipes: an npz read with numpy (in a fresh interpreter that has them blocked)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('h5py', 'astropy', 'bagpipes'): raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import zfast\n"
        "print(zfast.SEDLibrary.default().n_seds)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1000"


def test_shape_grid_and_coverage(library):
    assert (library.n_seds, library.n_pixels) == (1000, 2217)
    assert library.dln == pytest.approx(1 / 2000, rel=1e-9)
    np.testing.assert_allclose(library.wavelength.numpy(), sed_recipe.rest_wavelength_grid(), rtol=1e-12)
    library.check_coverage(12060 + 13.4 * torch.arange(513, dtype=torch.float64), (1.0, 1.8))


def test_normalised_and_finite(library):
    flux = library.flux
    assert torch.isfinite(flux).all() and (flux > 0).all()
    # Each SED was divided by its median, then stored as float16 (relative rounding 2^-11).
    torch.testing.assert_close(flux.median(dim=1).values, torch.ones(library.n_seds, dtype=torch.float64), rtol=0, atol=2e-3)


def test_params_present_for_every_sed(library):
    params = library.params
    for name in COMMON_PARAMS + RECIPE_PARAMS:
        assert name in params, f"params lack {name!r}"
        assert params[name].shape == (library.n_seds,)
    for name in COMMON_PARAMS[1:]:
        assert np.isfinite(params[name]).all(), f"params[{name!r}] has non-finite values"
    assert set(params["sfh_type"]) == set(sed_recipe.SFH_TYPES)
    # Recipe parameters apply to some SFH types only (NaN elsewhere), and always where they apply.
    for kind in ("delayed", "exponential", "post_starburst"):
        assert np.isfinite(params["tau_gyr"][params["sfh_type"] == kind]).all()
    for kind in ("burst", "post_starburst"):
        assert np.isfinite(params["burst_age_gyr"][params["sfh_type"] == kind]).all()
    assert np.isfinite(params["tmax_gyr"][params["sfh_type"] == "lognormal"]).all()
    assert np.isfinite(params["age_min_gyr"][params["sfh_type"] == "quenched"]).all()


def test_weak_line_fraction_at_least_30_percent(library):
    weak = library.params["ew_halpha"] < ew_lines.WEAK_LINE_EW
    assert weak.mean() >= 0.30
    # and not only from the passive families: dusty and old star-forming galaxies contribute too
    star_forming = np.isin(library.params["sfh_type"], ["delayed", "exponential", "constant", "lognormal"])
    assert weak[star_forming].sum() > 50


def test_stored_ew_matches_the_stored_spectra(library):
    """ew_halpha was measured on the float64 spectra; the float16 ones give it back to rounding."""
    measured = ew_lines.halpha_equivalent_width(library.wavelength.numpy(), library.flux.numpy())
    np.testing.assert_allclose(measured, library.params["ew_halpha"], rtol=2e-3, atol=0.1)


def test_halpha_sits_at_its_vacuum_wavelength(library):
    """Flux-weighted centroid of Hα in the median strong-line SED: 6564.61 Å (vacuum), not 6562.80 (air)."""
    wave = library.wavelength.numpy()
    strong = library.params["ew_halpha"] > 100
    assert strong.sum() > 100
    median = np.median(library.flux.numpy()[strong], axis=0)
    bands = ((wave > 6470) & (wave < 6520)) | ((wave > 6610) & (wave < 6660))
    residual = median - np.polyval(np.polyfit(wave[bands], median[bands], 1), wave)
    near = np.abs(wave - 6564.6) < 8.0  # ±2.4 pixels: Hα only ([NII] is 15 and 21 Å away)
    centroid = np.sum(wave[near] * residual[near]) / np.sum(residual[near])
    assert abs(centroid - ew_lines.HALPHA_VACUUM) < 0.3, centroid  # tighter than the ±1.5 Å asked for


def test_halpha_lands_at_its_observed_wavelength_on_nisp(library):
    """Redshifted onto the NISP grid, the strongest Hα lands in the pixel holding 6564.61·(1+z)."""
    index = int(np.argmax(library.params["ew_halpha"]))
    edges = nisp_edges()
    for z in (1.05, 1.3, 1.75):
        spectrum = library.redshift_resample(torch.tensor([index]), torch.tensor([z], dtype=torch.float64), edges)[0]
        assert torch.isfinite(spectrum).all()
        expected = int(torch.searchsorted(edges, torch.tensor(ew_lines.HALPHA_VACUUM * (1 + z), dtype=torch.float64))) - 1
        assert int(torch.argmax(spectrum)) == expected


def test_provenance_records_how_it_was_made(library, provenance):
    assert provenance["command"].startswith("zfast-sed build ")
    assert "--seed" in provenance["command"] and provenance["seed"] == provenance["config"]["seed"]
    assert provenance["n_seds"] == library.n_seds
    assert provenance["bagpipes_version"].count(".") >= 1
    assert provenance["date_utc"][:2] == "20"
    types, counts = np.unique(library.params["sfh_type"], return_counts=True)
    assert provenance["counts_per_sfh_type"] == {str(t): int(c) for t, c in zip(types, counts)}
    weak = np.mean(library.params["ew_halpha"] < ew_lines.WEAK_LINE_EW)
    assert provenance["weak_line_fraction"] == pytest.approx(weak)
    assert provenance["file_bytes"] == LIBRARY_FILE.stat().st_size
    assert "vacuum" in provenance["rest_grid"]["wavelength"]


def test_default_parameters_reproduce_from_the_recorded_seed(library, provenance):
    """The parameter draws are a pure function of (n, seed, recipe): redrawing them needs no bagpipes."""
    config = provenance["config"]
    recipe = sed_recipe.Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["recipe"].items()})
    drawn = sed_recipe.draw_parameters(config["n"], config["seed"], recipe, config["z_max"])
    for name, column in drawn.items():
        if np.issubdtype(np.asarray(column).dtype, np.floating):
            # Same draws; the derived columns (e.g. ages from log-ages) may differ in the last bit between numpy/libm
            # builds (measured: 4.4e-16 on numpy 2.4.6): far below anything a draw could change.
            np.testing.assert_allclose(library.params[name], column, rtol=1e-14, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(library.params[name], column, err_msg=name)
