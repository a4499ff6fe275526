"""zfast.predict / zfast-predict: real spectra files → redshift tables, with the training pipeline's treatment.

A small model is trained once (paper CNN, 80 bins, built-in library, white noise); the tests check that the
prediction path is exactly the training path for spectra already on the model's pixels, that it is invariant
to what must not matter (flux scale, a finer grid, air wavelengths, f_ν, chunking, file format), that masked
pixels are masked the way training masks them, and that bad input fails clearly and writes nothing.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import zfast
from zfast.checkpoint import EnsembleModel
from zfast.cli import predict as predict_cli
from zfast.cli import train as train_cli
from zfast.data.sets import load_library
from zfast.io import predict_file
from zfast.models import split_outside
from zfast.predict import prepare_spectra
from zfast.training import config as training_config
from zfast.training import evaluation, streams
from zfast import checkpoint, flags
from zfast.calibration import SNR_EDGES
from zfast.bins import redshift_bin_edges


@pytest.fixture(scope="module")
def test_spectra(trained):
    """Raw (un-normalised) noisy test spectra on the model's pixels, with their normalised form and truth."""
    _, c = trained
    library = load_library(c.library)
    instrument = streams.make_instrument(c)
    data = streams.augmented(c, library, instrument, "test")
    g = torch.Generator().manual_seed(5)
    sed = data.sed_indices[torch.randint(0, data.sed_indices.numel(), (70,), generator=g)]
    z = 1.0 + 0.8 * torch.rand(70, generator=g, dtype=torch.float64)
    raw = library.redshift_resample(sed, z, instrument.wave_edges).double()
    flux, ivar = instrument.observe(raw, g)
    return instrument, flux, ivar, z


def test_spectra_on_the_model_grid_get_exactly_the_training_prediction(trained, model, test_spectra):
    _, c = trained
    instrument, flux, ivar, z = test_spectra
    got = zfast.predict(model, instrument.wavelength, flux, ivar)
    normalised, _, _ = zfast.data.normalise(flux.float(), ivar.float())
    expected = evaluation.predict_set(model.network, c, normalised, model.bin_edges)["z"]
    torch.testing.assert_close(got["z"], expected.double(), atol=2e-5, rtol=0)
    assert got["valid_fraction"].eq(1).all() and not got["flag_few_pixels"].any()
    assert (got["z_lo68"] < got["z_hi68"]).all()  # (a multimodal P(z) may put its mode outside the interval)
    assert (got["z_err"] > 0).all()
    # The model learned something: most test redshifts within 0.01(1+z) (80 bins of 0.01; chance is ~2 %).
    assert ((got["z"] - z).abs() / (1 + z) < 0.02).double().mean() > 0.5
    # SNR column: white noise at SNR 3-30, measured per model pixel on the continuum.
    assert got["snr"].min() > 1.5 and got["snr"].max() < 60


def test_pz_carries_the_checkpoints_per_snr_temperature(model, test_spectra):
    from zfast.calibration import calibrated_probs

    instrument, flux, ivar, _ = test_spectra
    temperatures = model.stats.calibration["temperatures"]
    n_bins = len(SNR_EDGES) - 1
    assert temperatures.shape[-1] == n_bins and (temperatures > 0).all() and not torch.equal(temperatures, torch.ones_like(temperatures))
    got = zfast.predict(model, instrument.wavelength, flux, ivar, pz=True)
    normalised, _ = prepare_spectra(model, instrument.wavelength, flux, ivar)[:2]
    with torch.no_grad():
        logits = model.network(normalised)[:, :-1]  # the last output is P(outside) (model.outside)
    expected = calibrated_probs(logits, got["snr"], model.stats.calibration, model.bin_edges).float()
    torch.testing.assert_close(got["pz"], expected, atol=1e-6, rtol=1e-4)
    plain = torch.softmax(logits.double(), dim=1).float()
    assert (got["pz"] - plain).abs().max() > 1e-3  # the temperature changed P(z)


def test_invariant_to_flux_scale_finer_grid_air_fnu_and_chunks(model, test_spectra):
    instrument, flux, ivar, _ = test_spectra
    base = zfast.predict(model, instrument.wavelength, flux, ivar)
    # Flux units: any scale, and f_ν = f_λ λ² / c (scale dropped) read with flux_unit="fnu".
    scaled = zfast.predict(model, instrument.wavelength, 3e-17 * flux, ivar / 9e-34, batch_size=7)
    torch.testing.assert_close(scaled["z"], base["z"], atol=2e-5, rtol=0)
    fnu = zfast.predict(model, instrument.wavelength, flux * instrument.wavelength**2, ivar, flux_unit="fnu")
    torch.testing.assert_close(fnu["z"], base["z"], atol=2e-5, rtol=0)
    # A 3x finer grid whose pixels split the model's exactly: resampling back is exact (flux conservation).
    edges = instrument.wave_edges
    fine_edges = torch.cat([(edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * torch.tensor([0.0, 1 / 3, 2 / 3])).flatten(), edges[-1:]])
    fine_centres = 0.5 * (fine_edges[1:] + fine_edges[:-1])
    fine_flux = flux.repeat_interleave(3, dim=1)
    fine = zfast.predict(model, fine_centres, fine_flux, ivar.repeat_interleave(3, dim=1) / 3)
    torch.testing.assert_close(fine["z"], base["z"], atol=2e-5, rtol=0)
    torch.testing.assert_close(fine["snr"], base["snr"], rtol=1e-6, atol=0)  # variance propagated exactly
    # Air wavelengths: converting the grid to air and back changes it by < 1e-8 relative.
    air = zfast.predict(model, zfast.vacuum_to_air(fine_centres), fine_flux, air=True)
    torch.testing.assert_close(air["z"], base["z"], atol=1e-4, rtol=0)
    # One grid per spectrum ([B, N]) gives the same as the shared grid.
    per_row = zfast.predict(model, fine_centres.expand(5, -1), fine_flux[:5], ivar.repeat_interleave(3, dim=1)[:5])
    torch.testing.assert_close(per_row["z"], base["z"][:5], atol=2e-5, rtol=0)


def test_masked_pixels_match_training_masks(model, test_spectra):
    instrument, flux, ivar, _ = test_spectra
    bad = torch.zeros_like(flux, dtype=torch.bool)
    bad[:, 100:140] = True
    bad[3, :300] = True  # spectrum 3 loses 300 of 512 pixels: too few
    by_nan = zfast.predict(model, instrument.wavelength, flux.masked_fill(bad, math.nan), ivar)
    by_ivar = zfast.predict(model, instrument.wavelength, flux.masked_fill(bad, 1e30), ivar.masked_fill(bad, 0.0))
    for key in ("z", "z_err", "valid_fraction", "ood_score"):
        torch.testing.assert_close(by_nan[key], by_ivar[key], atol=1e-9, rtol=0, equal_nan=True)
    expected_fraction = 1 - bad.double().mean(dim=1)
    torch.testing.assert_close(by_nan["valid_fraction"], expected_fraction)
    assert by_nan["flag_few_pixels"].tolist() == [i == 3 for i in range(flux.shape[0])]
    # The network sees masked pixels as 0 after normalisation, exactly what training's gaps look like.
    prepared, _, _ = prepare_spectra(model, instrument.wavelength, flux.masked_fill(bad, math.nan), ivar)
    assert prepared[:, 100:140].eq(0).all() and prepared[[0, 1, 2, 4], 140:].ne(0).all()


@pytest.fixture(scope="module")
def resnet_model(tmp_path_factory):
    """A small ResNet1D (~15 s on 2 cores): with it, the penultimate features alone did not separate the
    garbage below from galaxies (its features sit near the training mean); the layer statistics do."""
    out = tmp_path_factory.mktemp("resnet")
    train_cli.main(["--preset", "quick", "--model", "resnet1d", "--n-bins", "80", "--steps", "150", "--eval-every", "150",
                    "--n-val", "512", "--n-test", "64", "--batch-size", "64", "--out", str(out)])  # fmt: skip
    return zfast.load_model(out / "best.pt", "cpu")


@pytest.mark.parametrize("which", ["paper-cnn", "resnet1d"])
def test_ood_score_flags_what_the_model_never_saw(request, which, test_spectra):
    model = request.getfixturevalue("model" if which == "paper-cnn" else "resnet_model")
    instrument, flux, ivar, _ = test_spectra
    good = zfast.predict(model, instrument.wavelength, flux, ivar)
    g = torch.Generator().manual_seed(1)
    m = instrument.n_pixels
    garbage = torch.cat([
        torch.randn(10, m, generator=g, dtype=torch.float64),  # pure noise
        torch.linspace(0.0, 1.0, m, dtype=torch.float64).expand(10, m) ** 6 + 0.01 * torch.randn(10, m, generator=g, dtype=torch.float64),
        torch.where(torch.arange(m) % 50 < 25, 1.0, 5.0).double().expand(10, m).clone(),  # a square wave
    ])  # fmt: skip
    odd = zfast.predict(model, instrument.wavelength, garbage)
    assert model.stats.ood.threshold > 0
    assert odd["flag_ood"].double().mean() >= 0.9
    assert good["flag_ood"].double().mean() <= 0.1
    assert odd["ood_score"].median() > 3 * good["ood_score"].median()


def test_galaxies_beyond_the_trained_range_are_flagged(trained, model, test_spectra):
    """The outside output (--outside-prob, default 0.1) flags test-SED galaxies at z the model never trained on,
    where their lines mimic in-range ones; metrics.json records the same rates for its own test spectra."""
    path, c = trained
    instrument, flux, ivar, _ = test_spectra
    inside = zfast.predict(model, instrument.wavelength, flux, ivar)
    assert model.outside and inside["p_outside"].isfinite().all()
    library = load_library(c.library)
    g = torch.Generator().manual_seed(11)
    sed = streams.splits(c, library)["test"][torch.randint(0, 100, (120,), generator=g)]
    z = torch.cat([0.8 + 0.15 * torch.rand(40, generator=g, dtype=torch.float64),  # below the range
                   2.0 + 0.4 * torch.rand(80, generator=g, dtype=torch.float64)])  # above: Hα beyond the band  # fmt: skip
    beyond_flux, beyond_ivar = instrument.observe(library.redshift_resample(sed, z, instrument.wave_edges).double(), g)
    beyond = zfast.predict(model, instrument.wavelength, beyond_flux, beyond_ivar)
    # This 150-step test model separates them only partly (the quick preset's: 1.2 % of in-range test spectra
    # flagged, 60 % below the range, 93 % above): check the ranking (AUC) and the in-range false flags.
    auc = (beyond["p_outside"][:, None] > inside["p_outside"][None, :]).double().mean()
    assert auc > 0.75, auc
    assert inside["flag_z_range"].double().mean() <= 0.1
    torch.testing.assert_close(beyond["flag_z_range"], (beyond["p_outside"] > 0.5) | (beyond["z"] < 1.004) | (beyond["z"] > 1.796))
    record = json.loads((path.parent / "metrics.json").read_text())["outside"]
    assert record["in_range_flagged"] <= 0.1 and record["n_below"] + record["n_above"] >= 256
    assert 0 <= record["below_flagged"] <= 1 and 0 <= record["above_flagged"] <= 1


def _write_inputs(tmp_path, wavelength, flux, ivar, ids):
    np.savez(tmp_path / "in.npz", wavelength=wavelength, flux=flux, ivar=ivar, id=ids)
    np.savez_compressed(tmp_path / "in_compressed.npz", WAVELENGTH=wavelength, FLUX=flux, IVAR=ivar, ID=ids)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "in.h5", "w") as handle:
        for name, value in dict(wavelength=wavelength, flux=flux, ivar=ivar, id=ids).items():
            handle[name] = value
    fits = pytest.importorskip("astropy.io.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(wavelength, name="WAVELENGTH"), fits.ImageHDU(flux.astype(np.float32), name="FLUX"),
                  fits.ImageHDU(ivar, name="IVAR"), fits.ImageHDU(ids, name="ID")]).writeto(tmp_path / "in_images.fits")  # fmt: skip
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="ID", format="K", array=ids),
        fits.Column(name="WAVELENGTH", format=f"{wavelength.size}D", array=np.broadcast_to(wavelength, flux.shape)),
        fits.Column(name="FLUX", format=f"{wavelength.size}D", array=flux),
        fits.Column(name="IVAR", format=f"{wavelength.size}D", array=ivar),
    ])  # fmt: skip
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "in_table.fits")


def test_files_in_every_format_give_the_api_table(model, trained, test_spectra, tmp_path):
    instrument, flux, ivar, _ = test_spectra
    ids = np.arange(1000, 1000 + flux.shape[0])
    wave = instrument.wavelength.numpy()
    _write_inputs(tmp_path, wave, flux.numpy().copy(), ivar.numpy().copy(), ids)  # (ivar is a stride-0 view)
    api = zfast.predict(model, wave, flux.float().double(), ivar, pz=True)  # FITS images hold float32 flux
    api64 = zfast.predict(model, wave, flux, ivar, pz=True)
    for name in ("in.npz", "in_compressed.npz", "in.h5", "in_images.fits", "in_table.fits"):
        out = tmp_path / f"{name}.csv"
        assert predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(tmp_path / name), "--output", str(out),
                               "--pz", "--batch-size", "17", "--device", "cpu"]) == 0  # fmt: skip
        with open(out) as stream:
            rows = list(csv.DictReader(stream))
        assert [int(r["TARGETID"]) for r in rows] == ids.tolist()
        reference = api if name == "in_images.fits" else api64
        np.testing.assert_allclose([float(r["Z"]) for r in rows], reference["z"].numpy(), atol=1e-5)
        np.testing.assert_array_equal([int(r["ZWARN"]) for r in rows], reference["zwarn"].numpy())
        np.testing.assert_array_equal([(int(r["ZWARN"]) & flags.BIT["OOD"]) != 0 for r in rows], reference["flag_ood"].numpy())
        np.testing.assert_allclose([[float(r[f"Z_CAND_{k}"]) for k in (1, 2, 3)] for r in rows], reference["z_cand"].numpy(), atol=1e-5)
        pz = np.array([[float(x) for x in r["PZ"].split()] for r in rows])
        assert pz.shape == (flux.shape[0], 80)
        np.testing.assert_allclose(pz.sum(axis=1), 1.0, atol=1e-3)
    fits = pytest.importorskip("astropy.io.fits")
    out = tmp_path / "z.fits"
    predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in.h5"), "--output", str(out), "--pz", "--device", "cpu"])
    with fits.open(out) as hdul:
        table = hdul["REDSHIFTS"]
        np.testing.assert_allclose(table.data["Z"], api64["z"].numpy(), atol=1e-12)
        assert table.data["TARGETID"].tolist() == ids.tolist()
        np.testing.assert_array_equal(table.data["ZWARN"], api64["zwarn"].numpy())
        np.testing.assert_allclose(table.data["P_CAND"], api64["p_cand"].numpy(), atol=1e-12)
        np.testing.assert_allclose(table.data["DELTACHI2"], api64["deltachi2"].numpy(), atol=1e-9)
        assert table.data["Z_CAND"].shape == (flux.shape[0], 3) and table.columns["NPIXELS"].unit == "pix"
        np.testing.assert_allclose(hdul["PZ"].data, api64["pz"].numpy(), atol=1e-7)
        np.testing.assert_allclose(hdul["PZ_EDGES"].data, model.bin_edges.numpy())
        edges = redshift_bin_edges(table.header["ZMIN"], table.header["ZMAX"], table.header["NBINS"])
        torch.testing.assert_close(edges, model.bin_edges)


def test_bad_inputs_fail_clearly_and_write_nothing(trained, model, tmp_path):
    ckpt = str(trained[0])
    wave = model.instrument.wavelength.numpy()
    flux = np.ones((4, wave.size))

    def run(path, expected):
        out = tmp_path / "z.csv"
        with pytest.raises(SystemExit, match=expected):
            predict_cli.main(["--checkpoint", ckpt, "--input", str(path), "--output", str(out)])
        assert not out.exists() and not any(p.name.startswith(".z.csv") for p in tmp_path.iterdir())

    np.savez(tmp_path / "no_flux.npz", wavelength=wave)
    run(tmp_path / "no_flux.npz", r"missing \['flux'\]")
    np.savez(tmp_path / "shape.npz", wavelength=wave[:-1], flux=flux)
    run(tmp_path / "shape.npz", "does not match flux")
    np.savez(tmp_path / "ivar.npz", wavelength=wave, flux=flux, ivar=np.ones((3, wave.size)))
    run(tmp_path / "ivar.npz", "ivar")
    np.savez(tmp_path / "empty.npz", wavelength=wave, flux=np.ones((0, wave.size)))
    run(tmp_path / "empty.npz", "no spectra")
    np.savez(tmp_path / "optical.npz", wavelength=np.linspace(4000, 9000, 800), flux=np.ones((4, 800)))
    run(tmp_path / "optical.npz", "cover")
    np.savez(tmp_path / "unsorted.npz", wavelength=wave[::-1], flux=flux)
    run(tmp_path / "unsorted.npz", "increasing")
    np.savez(tmp_path / "negative.npz", wavelength=wave, flux=flux, ivar=-np.ones_like(flux))
    run(tmp_path / "negative.npz", "negative")
    run(tmp_path / "absent.npz", "no such input")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable zfast checkpoint"):
        predict_cli.main(["--checkpoint", str(tmp_path / "junk.pt"), "--input", str(tmp_path / "shape.npz"), "--output", str(tmp_path / "z.csv")])
    # A failure in the middle of a file (here: a chunk with negative ivar) leaves no partial table behind.
    ivar = np.ones((40, wave.size))
    ivar[33, 5] = -1
    np.savez(tmp_path / "late.npz", wavelength=wave, flux=np.ones((40, wave.size)), ivar=ivar)
    out = tmp_path / "late.csv"
    with pytest.raises(SystemExit, match="negative"):
        predict_cli.main(["--checkpoint", ckpt, "--input", str(tmp_path / "late.npz"), "--output", str(out), "--batch-size", "8"])
    assert not out.exists() and not any(p.name.startswith(".late.csv") for p in tmp_path.iterdir())
    # An existing output is not overwritten without --overwrite.
    out.write_text("keep")
    with pytest.raises(SystemExit, match="exists"):
        predict_cli.main(["--checkpoint", ckpt, "--input", str(tmp_path / "in.npz"), "--output", str(out)])
    assert out.read_text() == "keep"
    with pytest.raises(ValueError, match="shape"):
        zfast.predict(model, wave, np.ones((2, 3, wave.size)))


def test_regression_checkpoints_give_an_error_from_validation_scatter(tmp_path):
    train_cli.main(["--preset", "quick", "--estimator", "regression", "--model", "paper-cnn", "--steps", "4", "--eval-every", "4",
                "--n-val", "64", "--n-test", "32", "--batch-size", "32", "--outside-prob", "0", "--out", str(tmp_path / "run")])  # fmt: skip
    model = zfast.load_model(tmp_path / "run" / "best.pt", "cpu")
    assert not model.outside and "outside" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    scatter = model.stats.z_scatter
    assert math.isfinite(scatter) and scatter > 0
    wave = model.instrument.wavelength
    got = zfast.predict(model, wave, 1.0 + 0.1 * torch.rand(5, wave.numel(), dtype=torch.float64))
    torch.testing.assert_close(got["z_err"], scatter * (1 + got["z"]))
    torch.testing.assert_close(got["z_hi68"] - got["z_lo68"], 2 * got["z_err"])
    assert torch.isnan(got["p_outside"]).all()  # no outside output: only the range-end rule flags
    torch.testing.assert_close(got["flag_z_range"], (got["z"] < 1.004) | (got["z"] > 1.796), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no P"):
        predict_file(model, "unused.npz", tmp_path / "z.csv", pz=True)


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """A second small model of the same recipe, another seed, trained without the outside output."""
    out = tmp_path_factory.mktemp("run2")
    train_cli.main(["--preset", "quick", "--model", "paper-cnn", "--n-bins", "80", "--steps", "100", "--eval-every", "100",
                "--n-val", "256", "--n-test", "32", "--batch-size", "64", "--lr", "2e-3", "--seed", "7",
                "--outside-prob", "0", "--out", str(out)])  # fmt: skip
    return out / "best.pt"


def test_an_ensemble_averages_its_members_pz(trained, second, model, test_spectra, tmp_path):
    from zfast.bins import pz_summary, refined_mode

    instrument, flux, ivar, _ = test_spectra
    wave = instrument.wavelength
    other = zfast.load_model(second, "cpu")
    members = [zfast.predict(m, wave, flux, ivar, pz=True) for m in (model, other)]
    got = zfast.predict([trained[0], second], wave, flux, ivar, pz=True, device="cpu")
    # P(z): the mean of the members' calibrated P(z), each computed alone.
    mean_pz = 0.5 * (members[0]["pz"].double() + members[1]["pz"].double())
    torch.testing.assert_close(got["pz"].double(), mean_pz, atol=1e-6, rtol=1e-5)
    s = pz_summary(mean_pz, model.bin_edges)
    torch.testing.assert_close(got["z_lo68"], s.lo68, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["z_err"], s.sigma, atol=1e-5, rtol=0)
    # z: the refined mode of the members' mean plain softmax (from the networks' own outputs).
    plain = 0.0
    for m in (model, other):
        normalised = prepare_spectra(m, wave, flux, ivar)[0]
        with torch.no_grad():
            logits = split_outside(m.network(normalised), m.outside)[0]
        plain = plain + 0.5 * torch.softmax(logits.double(), dim=1)
    torch.testing.assert_close(got["z"], refined_mode(plain, model.bin_edges), atol=1e-9, rtol=0)
    assert (got["z"] - members[0]["z"]).abs().max() > 1e-4  # the second member moved some redshifts
    # p_outside: the mean over members that have the output (only the first); flag_ood: a majority (both of two).
    torch.testing.assert_close(got["p_outside"], members[0]["p_outside"])
    assert torch.equal(got["flag_ood"], members[0]["flag_ood"] & members[1]["flag_ood"])
    torch.testing.assert_close(got["ood_score"], 0.5 * (members[0]["ood_score"] + members[1]["ood_score"]))
    # One member alone is that member; the same member twice changes nothing.
    twice = zfast.predict(EnsembleModel([model, model]), wave, flux, ivar, pz=True)
    for key in ("z", "z_err", "z_lo68", "z_hi68", "pz", "p_outside", "ood_score"):
        torch.testing.assert_close(twice[key], members[0][key], atol=1e-9, rtol=1e-6)
    assert torch.equal(twice["flag_ood"], members[0]["flag_ood"])
    # zfast-predict with two checkpoints writes the API's table.
    np.savez(tmp_path / "in.npz", wavelength=wave.numpy(), flux=flux.numpy(), ivar=ivar.numpy().copy())
    out = tmp_path / "z.csv"
    assert predict_cli.main(["--checkpoint", str(trained[0]), str(second), "--input", str(tmp_path / "in.npz"),
                           "--output", str(out), "--device", "cpu"]) == 0  # fmt: skip
    with open(out) as stream:
        rows = list(csv.DictReader(stream))
    np.testing.assert_allclose([float(r["Z"]) for r in rows], got["z"].numpy(), atol=1e-5)


def test_an_ensemble_refuses_members_that_cannot_be_averaged(trained, model, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        EnsembleModel([])
    wider = zfast.load_model(trained[0], "cpu")
    wider.bin_edges = redshift_bin_edges(1.0, 1.8, 40)
    with pytest.raises(ValueError, match="bins differ"):
        EnsembleModel([model, wider])
    train_cli.main(["--preset", "quick", "--estimator", "regression", "--model", "paper-cnn", "--steps", "2", "--eval-every", "2",
                "--n-val", "64", "--n-test", "32", "--batch-size", "32", "--out", str(tmp_path / "reg")])  # fmt: skip
    with pytest.raises(ValueError, match="regression"):
        zfast.load_ensemble([trained[0], tmp_path / "reg" / "best.pt"], "cpu")
    with pytest.raises(SystemExit, match="regression"):
        predict_cli.main(["--checkpoint", str(trained[0]), str(tmp_path / "reg" / "best.pt"), "--input", "x.npz", "--output",
                        str(tmp_path / "z.csv")])  # fmt: skip


def test_an_ensemble_file_calibrates_the_mean_pz(trained, second, model, test_spectra, tmp_path):
    from zfast.calibration import calibrated_probs

    instrument, flux, ivar, _ = test_spectra
    wave = instrument.wavelength
    assert train_cli.main(["--ensemble", str(trained[0]), str(second), "--out", str(tmp_path / "ens"), "--device", "cpu"]) == 0
    ensemble = zfast.load_model(tmp_path / "ens" / "ensemble.pt", "cpu")
    assert isinstance(ensemble, EnsembleModel) and len(ensemble.members) == 2
    temperatures = ensemble.calibration["temperatures"]
    assert temperatures.shape[-1] == len(SNR_EDGES) - 1 and not torch.equal(temperatures, torch.ones_like(temperatures))
    assert "deltachi2_min" in ensemble.calibration  # its own SMALL_DELTA_CHI2 threshold, for its own P(z)
    plain_mix = zfast.predict([trained[0], second], wave, flux, ivar, pz=True, device="cpu")
    got = zfast.predict(ensemble, wave, flux, ivar, pz=True)
    torch.testing.assert_close(got["z"], plain_mix["z"], atol=1e-9, rtol=0)  # a temperature never moves z
    # P(z) = mean plain softmax ^ (1 / T(snr)), renormalised.
    mean_plain = 0.0
    for m in (model, zfast.load_model(second, "cpu")):
        normalised = prepare_spectra(m, wave, flux, ivar)[0]
        with torch.no_grad():
            mean_plain = mean_plain + 0.5 * torch.softmax(split_outside(m.network(normalised), m.outside)[0].double(), dim=1)
    expected = calibrated_probs(torch.log(mean_plain), got["snr"], ensemble.calibration, ensemble.bin_edges)
    torch.testing.assert_close(got["pz"].double(), expected, atol=1e-6, rtol=1e-4)
    # The file holds weights, not paths: it works after the runs are gone, and through zfast-predict.
    np.savez(tmp_path / "in.npz", wavelength=wave.numpy(), flux=flux.numpy(), ivar=ivar.numpy().copy())
    assert predict_cli.main(["--checkpoint", str(tmp_path / "ens" / "ensemble.pt"), "--input", str(tmp_path / "in.npz"),
                           "--output", str(tmp_path / "z.csv"), "--device", "cpu"]) == 0  # fmt: skip
    with open(tmp_path / "z.csv") as stream:
        rows = list(csv.DictReader(stream))
    np.testing.assert_allclose([float(r["Z_HI68"]) for r in rows], got["z_hi68"].numpy(), atol=1e-5)
    with pytest.raises(SystemExit, match="at least two"):
        train_cli.main(["--ensemble", str(trained[0]), "--out", str(tmp_path / "one")])


def test_template_columns_fit_every_spectrum_with_a_library(trained, model, test_spectra, tmp_path):
    """``templates``: each spectrum fitted with every SED of a library, on the same normalised pixels the
    network reads. With the true SEDs among the templates, noiseless spectra come back at their z and SED, and
    noisy ones at χ² ~ 1 per pixel (so the propagated ivar is right); the CLI writes the same columns."""
    _, c = trained
    library = load_library(c.library)
    instrument, flux, ivar, _ = test_spectra
    g = torch.Generator().manual_seed(11)
    sed = torch.randint(0, len(library), (6,), generator=g)
    z6 = 1.05 + 0.7 * torch.rand(6, generator=g, dtype=torch.float64)
    clean = instrument.convolve_lsf(library.redshift_resample(sed, z6, instrument.wave_edges)).double()
    candidates = torch.unique(torch.cat([sed, torch.arange(0, len(library), 25)]))
    got = zfast.predict(model, instrument.wavelength, 3e-17 * clean, templates=(library, candidates))
    assert torch.equal(got["template_sed"].long(), sed)
    assert (got["z_template"] - z6).abs().max() < 2e-5
    # Noisy spectra (white noise, SNR 3-30) with their own SEDs among the templates: reduced χ² ~ 1.
    data = streams.augmented(c, library, streams.make_instrument(c), "test")
    raw_sed = data.sed_indices[torch.randint(0, data.sed_indices.numel(), (40,), generator=g)]
    z40 = 1.0 + 0.8 * torch.rand(40, generator=g, dtype=torch.float64)
    noisy, noisy_ivar = instrument.observe(library.redshift_resample(raw_sed, z40, instrument.wave_edges).double(), g)
    fit = zfast.predict(model, instrument.wavelength, noisy, noisy_ivar, templates=(library, torch.unique(raw_sed)))
    assert 0.8 < float(fit["template_rchi2"].median()) < 1.25
    good = (fit["z_template"] - z40).abs() / (1 + z40) < 0.01
    assert good.double().mean() > 0.9
    # With the true templates the formal error is the posterior's σ: ~68 % of the errors within one z_template_err.
    ratio = ((fit["z_template"] - z40).abs() / fit["z_template_err"])[good]
    assert 0.6 < float(ratio.quantile(0.68)) < 1.6
    # "training": the checkpoint's own library and training split; the CLI writes the three columns.
    api = zfast.predict(model, instrument.wavelength, flux[:9], ivar[:9], templates="training")
    seds = streams.splits(c, library)["train"]
    assert torch.isin(api["template_sed"].long(), seds).all()
    np.savez(tmp_path / "in.npz", wavelength=instrument.wavelength.numpy(), flux=flux[:9].numpy(), ivar=ivar[:9].numpy().copy())
    out = tmp_path / "z.csv"
    assert predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in.npz"), "--output", str(out),
                           "--templates", "training", "--device", "cpu"]) == 0  # fmt: skip
    with open(out) as stream:
        rows = list(csv.DictReader(stream))
    np.testing.assert_allclose([float(r["Z_TEMPLATE"]) for r in rows], api["z_template"].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose([float(r["TEMPLATE_SED"]) for r in rows], api["template_sed"].numpy())
    np.testing.assert_allclose([float(r["DELTACHI2_TEMPLATE"]) for r in rows], api["template_deltachi2"].numpy(), rtol=1e-6)
    with pytest.raises(SystemExit, match="zfast-predict"):
        predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in.npz"), "--output",
                        str(tmp_path / "bad.csv"), "--templates", str(tmp_path / "missing.h5"), "--device", "cpu"])  # fmt: skip
    assert not (tmp_path / "bad.csv").exists()
    # A spectrum with no valid pixel gets NaN template columns (and its flag), not an arbitrary grid point.
    dead = ivar[:3].clone()
    dead[1] = 0
    masked = zfast.predict(model, instrument.wavelength, flux[:3], dead, templates=(library, torch.unique(raw_sed)))
    assert masked["flag_few_pixels"].tolist() == [False, True, False]
    assert masked["z_template"][1].isnan() and masked["template_rchi2"][1].isnan() and masked["template_deltachi2"][1].isnan()
    assert not masked["z_template"][[0, 2]].isnan().any()
    with pytest.raises(TypeError, match="templates must be"):
        zfast.predict(model, instrument.wavelength, flux[:2], ivar[:2], templates=42)
