"""The SED library builder: licence boundary, parameter draws, EW(Hα), CLI — and, where bagpipes is installed,
spectra checked against bagpipes' own output."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import zfast
from conftest import nisp_edges
from zfast.cli import sed as sed_cli
from zfast.data import lines as ew_lines
from zfast.sed import builder as sed_build
from zfast.sed import recipe as sed_recipe
from zfast.sed import synthesis


# --- licence boundary (no bagpipes needed) ---------------------------------------------------------------------
def test_importing_zfast_and_the_cli_never_imports_bagpipes(tmp_path):
    """bagpipes is GPL-3: importing zfast, the CLI module, or asking the CLI for help must not even look for it.

    A meta-path finder records every attempt, so the test means the same with or without bagpipes installed."""
    code = (
        "import sys\n"
        "tried = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'bagpipes': tried.append(name)\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import zfast, zfast.sed, zfast.cli.sed, zfast.data, zfast.wavelengths\n"
        "zfast.SEDLibrary.default()\n"
        "zfast.sed.draw_parameters(20, 0)\n"
        "try:\n"
        "    zfast.cli.sed.main(['build', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'bagpipes')\n"
        "print('RESULT', tried, loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RESULT [] []" in result.stdout


def test_python_dash_m_runs_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "zfast.cli.sed", "build", "--help"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--seed" in result.stdout and "--out" in result.stdout


def test_cli_rejects_bad_arguments_before_importing_bagpipes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sed_cli.main(["build", "--n", "10"])  # no --out
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--n must be >= 1"):
        sed_cli.main(["build", "--n", "0", "--out", str(tmp_path / "lib.h5")])
    with pytest.raises(SystemExit, match="wave_min < wave_max"):
        sed_cli.main(["build", "--n", "5", "--wave-min", "9000", "--wave-max", "8000", "--out", str(tmp_path / "x.h5")])
    assert list(tmp_path.iterdir()) == []


def test_without_bagpipes_the_build_says_how_to_get_it(tmp_path):
    """Where bagpipes is missing (blocked here), ``build`` raises one clear ImportError, before any worker starts."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'bagpipes': raise ModuleNotFoundError('blocked', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import zfast.sed\n"
        "try:\n"
        "    zfast.sed.build(zfast.sed.BuildConfig(n=4, seed=0, out='lib.h5', workers=2))\n"
        "except ImportError as error:\n"
        "    print('RESULT', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RESULT building SED libraries needs bagpipes (GPL-3), an optional extra: pip install 'zfast[sed]'" in result.stdout
    assert list(tmp_path.iterdir()) == []


# --- the rest grid and the parameter draws (no bagpipes needed) ------------------------------------------------
def test_rest_grid_serves_nisp_for_1_to_1p8():
    wave = sed_recipe.rest_wavelength_grid()
    assert wave[0] == pytest.approx(3500.0, rel=1e-12) and wave[-1] <= 10600.0 < wave[-1] * math.exp(1 / 2000)
    np.testing.assert_allclose(np.diff(np.log(wave)), 1 / 2000, rtol=1e-9)
    library = zfast.SEDLibrary(wave, np.ones((1, len(wave))))
    library.check_coverage(nisp_edges(), (1.0, 1.8))


def test_age_of_universe_matches_astropy():
    from astropy.cosmology import FlatLambdaCDM

    cosmology = FlatLambdaCDM(H0=70.0, Om0=0.3)
    for z in (0.0, 1.0, 1.8, 4.0):
        assert sed_recipe.age_of_universe_gyr(z) == pytest.approx(cosmology.age(z).value, abs=1e-4)


def test_draws_are_deterministic_and_counted_exactly():
    first = sed_recipe.draw_parameters(1000, 7)
    again = sed_recipe.draw_parameters(1000, 7)
    other = sed_recipe.draw_parameters(1000, 8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["av"], other["av"])
    weights = sed_recipe.Recipe().sfh_weights
    types, counts = np.unique(first["sfh_type"], return_counts=True)
    assert dict(zip(types, counts)) == {k: round(1000 * w / sum(weights.values())) for k, w in weights.items()}
    small = sed_recipe.draw_parameters(3, 0)  # largest remainder: exactly n, whatever the rounding
    assert len(small["sfh_type"]) == 3


def test_draws_respect_the_recipe():
    recipe = sed_recipe.Recipe()
    p = sed_recipe.draw_parameters(4000, 1, recipe, z_max=1.8)
    kind = p["sfh_type"]
    assert set(kind) == set(sed_recipe.SFH_TYPES)
    for name, bounds in (("metallicity_zsun", recipe.metallicity_zsun), ("eta", recipe.eta), ("logu", recipe.logu),
                         ("veldisp_kms", recipe.veldisp_kms)):  # fmt: skip
        assert bounds[0] <= p[name].min() and p[name].max() <= bounds[1], name
    assert 0.0 <= p["av"].min() and p["av"].max() <= recipe.av_dusty[1]
    assert np.mean(p["av"] > 2.0) == pytest.approx(recipe.dusty_fraction, abs=0.03)
    quenched = kind == "quenched"
    assert (p["age_min_gyr"][quenched] <= p["age_gyr"][quenched] / 2).all()
    psb = kind == "post_starburst"
    assert (p["burst_age_gyr"][psb] < p["age_gyr"][psb]).all()
    assert np.isnan(p["tau_gyr"][kind == "burst"]).all() and np.isnan(p["tmax_gyr"][kind != "lognormal"]).all()


def test_ages_are_capped_by_the_age_of_the_universe_at_z_max():
    t_universe = sed_recipe.age_of_universe_gyr(4.0)  # 1.5 Gyr: below the recipe's 3 Gyr
    p = sed_recipe.draw_parameters(2000, 2, z_max=4.0)
    assert np.nanmax(p["age_gyr"]) <= t_universe + 1e-12
    assert np.nanmax(p["age_gyr"]) > 0.8 * t_universe  # the cap binds, not an empty range


def test_bagpipes_components_for_every_sfh_type():
    p = sed_recipe.draw_parameters(200, 3)
    seen = set()
    for b in range(200):
        row = {name: column[b] for name, column in p.items()}
        components = sed_recipe.bagpipes_components(row, 1.8)
        assert components["redshift"] == 1.8 and components["dust"]["type"] == "Calzetti"
        masses = [c["massformed"] for c in components.values() if isinstance(c, dict) and "massformed" in c]
        assert math.log10(sum(10**m for m in masses)) == pytest.approx(10.0)
        seen.add(row["sfh_type"])
    assert seen == set(sed_recipe.SFH_TYPES)
    with pytest.raises(ValueError, match="unknown sfh_type 'starburst'"):
        sed_recipe.bagpipes_components(dict(row, sfh_type="starburst"), 1.8)
    with pytest.raises(ValueError, match="unknown SFH types"):
        sed_recipe.draw_parameters(5, 0, sed_recipe.Recipe(sfh_weights={"starburst": 1.0}))


# --- EW(Hα+[NII]) (no bagpipes needed) -----------------------------------------------------------------------
def gaussian_pixel_means(edges, centre, sigma, flux):
    """Mean over each pixel of a Gaussian line of integrated ``flux``."""
    cdf = torch.special.ndtr((torch.from_numpy(edges) - centre) / sigma).numpy()
    return flux * np.diff(cdf) / np.diff(edges)


@pytest.mark.parametrize("sigma", [1.0, 3.0, 5.5])
def test_ew_of_known_lines_on_a_sloped_continuum(sigma):
    wave = sed_recipe.rest_wavelength_grid()
    edges = np.exp(np.log(wave[0]) - 1 / 4000 + np.arange(len(wave) + 1) / 2000)
    continuum = 2.0 + 1e-4 * (wave - 6564.61)
    lines = sum(gaussian_pixel_means(edges, centre, sigma, ew * (2.0 + 1e-4 * (centre - 6564.61)))
                for centre, ew in ((6564.61, 100.0), (6585.27, 30.0), (6549.86, 10.0)))  # fmt: skip
    ew = ew_lines.halpha_equivalent_width(wave, np.stack([continuum + lines, 3.0 * (continuum + lines), continuum]))
    # The window holds the lines to 2.7σ at σ = 5.5 Å (250 km/s): [NII] 6585 then loses 0.4 % of its 30 Å.
    np.testing.assert_allclose(ew, [140.0, 140.0, 0.0], rtol=1e-3, atol=1e-9)
    absorption = continuum - gaussian_pixel_means(edges, 6564.61, 15.0, 4.0 * 2.0)
    assert -4.0 < ew_lines.halpha_equivalent_width(wave, absorption) < -3.0  # broad wings reach the bands


def test_ew_needs_the_bands():
    wave = np.linspace(6500.0, 6700.0, 100)
    with pytest.raises(ValueError, match="needs 6470-6660 Å"):
        ew_lines.halpha_equivalent_width(wave, np.ones(100))
    with pytest.raises(ValueError, match="N = len"):
        ew_lines.halpha_equivalent_width(sed_recipe.rest_wavelength_grid(), np.ones((2, 10)))
    wave = sed_recipe.rest_wavelength_grid()
    assert math.isnan(ew_lines.halpha_equivalent_width(wave, -np.ones(len(wave))))


# --- with bagpipes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthesiser():
    pytest.importorskip("bagpipes")
    return synthesis.Synthesiser(1.8, sed_recipe.WAVE_MIN, sed_recipe.WAVE_MAX)


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthesiser):
    """A 14-SED library (every SFH type) built by the CLI in this process, its provenance, and its path."""
    out = tmp_path_factory.mktemp("built") / "lib.h5"
    assert sed_cli.main(["build", "--n", "14", "--seed", "3", "--workers", "1", "--out", str(out), "--quiet"]) == 0
    provenance = json.loads(sed_build.provenance_path(out).read_text(encoding="utf-8"))
    return zfast.SEDLibrary.load(out), provenance, out


def stock_bagpipes_rest_spectrum(synthesiser, row):
    """bagpipes' own spectrum (lines in single pixels, spectres) of ``row`` on the air wavelengths of the library
    grid, as rest-frame L_λ per vacuum Å; the model uses the same internal grid as the builder's."""
    import warnings

    bagpipes = synthesiser.bagpipes
    components = sed_recipe.bagpipes_components(row, synthesiser.z_model)
    with warnings.catch_warnings():  # spectres warns that the 2-point spec_wavs used to set the grid is odd
        warnings.simplefilter("ignore", RuntimeWarning)
        model = bagpipes.model_galaxy(components, spec_wavs=synthesiser.spec_wavs)
    air = zfast.vacuum_to_air(synthesiser.wavelength)
    model.spec_wavs = air * (1 + synthesiser.z_model)
    model.update(components)
    rest_per_air_angstrom = model.spectrum[:, 1] * model.lum_flux * (1 + synthesiser.z_model)
    return rest_per_air_angstrom * np.gradient(air) / np.gradient(synthesiser.wavelength)


ROWS = {
    "passive": dict(sfh_type="burst", burst_age_gyr=2.0, metallicity_zsun=1.0, av=0.5, eta=2.0, logu=-3.0, veldisp_kms=120.0),
    "star_forming": dict(sfh_type="delayed", age_gyr=1.0, tau_gyr=0.5, metallicity_zsun=0.7, av=0.6, eta=1.5, logu=-2.5,
                         veldisp_kms=180.0),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ROWS))
def test_spectrum_matches_bagpipes_own(synthesiser, name):
    """Continuum: bagpipes' stock path (per-spectrum spectres onto air wavelengths) to 1e-4 (pixel-edge
    conventions differ at that level); lines: the same integrated Hα+[NII] flux, now at vacuum wavelengths."""
    row = ROWS[name]
    ours, derived = synthesiser.spectra({k: np.array([v]) for k, v in row.items()})
    ours = ours[0]
    stock = stock_bagpipes_rest_spectrum(synthesiser, row)
    wave = synthesiser.wavelength
    far_from_lines = np.ones(len(wave), dtype=bool)
    for line in zfast.air_to_vacuum(np.asarray(synthesiser.bagpipes.config.line_wavs, dtype=np.float64)):
        far_from_lines &= np.abs(wave - line) > 30.0
    np.testing.assert_allclose(ours[far_from_lines], stock[far_from_lines], rtol=1e-4)
    window = (wave > 6530) & (wave < 6600)
    width = np.diff(synthesis.geometric_edges(wave))
    assert np.sum((ours * width)[window]) == pytest.approx(np.sum((stock * width)[window]), rel=1e-3)
    if name == "star_forming":
        assert derived["halpha_luminosity"][0] > 0
        # bagpipes drops Hα into the air pixel nearest 6562.80; ours is a Gaussian at 6564.61 (vacuum).
        continuum = np.median(ours[(wave > 6610) & (wave < 6660)])
        near = np.abs(wave - 6564.61) < 8.0
        excess = ours[near] - continuum
        assert np.sum(wave[near] * excess) / np.sum(excess) == pytest.approx(6564.61, abs=0.1)
    else:
        assert derived["halpha_luminosity"][0] == 0.0


def test_built_library(built):
    library, provenance, out = built
    assert (library.n_seds, library.n_pixels) == (14, 2217)
    library.check_coverage(nisp_edges(), (1.0, 1.8))
    assert set(library.params["sfh_type"]) == set(sed_recipe.SFH_TYPES)
    drawn = sed_recipe.draw_parameters(14, 3)
    for name, column in drawn.items():
        np.testing.assert_array_equal(library.params[name], column, err_msg=name)
    flux = library.flux
    torch.testing.assert_close(flux.median(dim=1).values, torch.ones(14, dtype=torch.float64), rtol=0, atol=1e-6)
    ew = library.params["ew_halpha"]
    np.testing.assert_allclose(ew_lines.halpha_equivalent_width(library.wavelength.numpy(), flux.numpy()), ew,
                               rtol=1e-4, atol=1e-3)  # fmt: skip
    weak_types = np.isin(library.params["sfh_type"], ["quenched"])
    assert (ew[weak_types] < ew_lines.WEAK_LINE_EW).all()
    assert (ew[library.params["sfh_type"] == "constant"] > ew_lines.WEAK_LINE_EW).any()
    assert provenance["command"] == f"zfast-sed build --n 14 --seed 3 --workers 1 --out {out} --quiet"
    assert provenance["bagpipes_version"] == synthesis.bagpipes_version() != "not installed"
    assert provenance["counts_per_sfh_type"] == {k: int(v) for k, v in zip(*np.unique(drawn["sfh_type"], return_counts=True))}
    assert provenance["weak_line_fraction"] == pytest.approx(np.mean(ew < 20.0))


def test_builds_are_reproducible_and_npz_is_compressed(built, tmp_path):
    import zipfile

    import h5py

    _, _, first = built
    out = tmp_path / "again.npz"
    sed_cli.main(["build", "--n", "14", "--seed", "3", "--workers", "1", "--out", str(out), "--quiet"])
    with h5py.File(first, "r") as stored, np.load(out) as again:
        np.testing.assert_array_equal(again["flux"], stored["flux"][()])
    with zipfile.ZipFile(out) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.npz", "again.provenance.json"]
    sed_cli.main(["build", "--n", "14", "--seed", "3", "--workers", "1", "--dtype", "float16", "--out",
                      str(tmp_path / "half.npz"), "--quiet"])  # fmt: skip
    half = zfast.SEDLibrary.load(tmp_path / "half.npz")
    torch.testing.assert_close(half.flux, zfast.SEDLibrary.load(out).flux, rtol=1e-3, atol=0)


@pytest.mark.slow
def test_spawned_workers_give_the_same_library(built, tmp_path):
    """Two "spawn" worker processes (~20 s: each imports bagpipes and builds its models) produce exactly the
    library made in-process: the parameters are drawn up front, so the split over workers does not matter."""
    library, _, _ = built
    out = tmp_path / "workers.h5"
    sed_cli.main(["build", "--n", "14", "--seed", "3", "--workers", "2", "--chunk-size", "4", "--out", str(out), "--quiet"])
    torch.testing.assert_close(zfast.SEDLibrary.load(out).flux, library.flux, rtol=0, atol=0)
