"""The defects of the hostile-input audit (issue "Reliability"), each kept fixed by a test that failed before."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import zfast
from zfast import checkpoint, files
from zfast.calibration import SNR_EDGES
from zfast.cli import predict as predict_cli
from zfast.cli import train as train_cli
from zfast.io import predict_file
from zfast.training import loop
from zfast.training.config import TrainConfig

TINY = ["--steps", "4", "--eval-every", "2", "--n-val", "64", "--n-test", "64", "--batch-size", "16",
        "--n-bins", "40", "--model", "paper-cnn", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An untrained paper-CNN checkpoint with a per-SNR calibration: enough to test what prediction does with
    its inputs (invariances, files, errors), in a second."""
    torch.manual_seed(0)
    config = dataclasses.asdict(TrainConfig(model="paper-cnn", n_bins=80))
    network, _ = checkpoint.build_network(config)
    n_snr = len(SNR_EDGES) - 1
    temperatures = torch.linspace(0.5, 2.0, n_snr, dtype=torch.float64)[None]
    calibration = {"snr_edges": torch.tensor(SNR_EDGES, dtype=torch.float64), "temperatures": temperatures,
                   "peak_edges": torch.tensor([0.0, float("inf")], dtype=torch.float64)}  # fmt: skip
    path = tmp_path_factory.mktemp("untrained") / "best.pt"
    checkpoint.save(path, checkpoint.RunCheckpoint(config, network.state_dict(), stats=checkpoint.PredictStats(calibration=calibration)))
    return path


@pytest.fixture(scope="module")
def spectra(untrained):
    model = zfast.load_model(untrained, "cpu")
    lib = zfast.SEDLibrary.default()
    g = torch.Generator().manual_seed(3)
    n = 24
    z = 1.0 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    clean = lib.redshift_resample(torch.randint(0, len(lib), (n,), generator=g), z, model.instrument.wave_edges).double()
    sigma = clean.median(dim=1, keepdim=True).values / torch.linspace(3.0, 30.0, n, dtype=torch.float64)[:, None]
    flux = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    return model, model.instrument.wavelength, flux, 1.0 / sigma.square().expand_as(flux).clone()


# --- 1 and 10: --resume writes into the folder it resumes, and refuses other settings --------------------------
def test_resume_writes_into_the_folder_given_not_the_one_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_cli.main([*TINY, "--out", "orig"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "orig").iterdir() if p.is_file()}
    shutil.copytree(tmp_path / "orig", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative out stored in the checkpoint must not resolve here either
    assert train_cli.main(["--resume", str(tmp_path / "moved")]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "orig").iterdir() if p.is_file()} == before
    assert list(elsewhere.iterdir()) == []
    assert '"out": "' + str(tmp_path / "moved") + '"' in (tmp_path / "moved" / "config.json").read_text()


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--resume", str(tmp_path), "--steps", "400", "--lr", "0.1"])
    assert stop.value.code == 2 and "drop --steps, --lr" in capsys.readouterr().err


# --- 9: resume leaves metrics.csv as an uninterrupted run writes it ---------------------------------------------
class Crash(BaseException):
    """A kill at a chosen point (not an Exception, so nothing on the way catches it)."""


def test_resume_after_a_stop_between_validations_writes_the_same_metrics(tmp_path, monkeypatch):
    """Stopped at step 2 of a 3-step validation interval: the first row after the resume averages all 3 steps."""
    args = [*TINY, "--steps", "6", "--eval-every", "3"]
    train_cli.main([*args, "--out", str(tmp_path / "straight")])
    original = loop.training_loss

    def loss_then_stop(c, output, z, edges, step, n_beyond=0):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(c, output, z, edges, step, n_beyond)

    monkeypatch.setattr(loop, "training_loss", loss_then_stop)
    train_cli.main([*args, "--out", str(tmp_path / "stopped")])
    assert checkpoint.read(tmp_path / "stopped" / "last.pt").step == 2
    monkeypatch.setattr(loop, "training_loss", original)
    train_cli.main(["--resume", str(tmp_path / "stopped")])
    straight = (tmp_path / "straight" / "metrics.csv").read_text()
    assert (tmp_path / "stopped" / "metrics.csv").read_text() == straight and straight.count("\n") == 3


def test_resume_after_a_kill_between_the_row_and_the_checkpoint_writes_each_row_once(tmp_path, monkeypatch):
    args = [*TINY, "--steps", "6", "--eval-every", "2"]
    train_cli.main([*args, "--out", str(tmp_path / "straight")])
    original = loop.save_as

    def save_then_crash(s, *names):
        if s.step == 4:  # the row of step 4 is in metrics.csv; its checkpoint is never written
            with open(s.out / "metrics.csv", "a") as stream:
                stream.write("6,0.1,0.2")  # and a half-written line, as a kill mid-append leaves
            raise Crash
        original(s, *names)

    monkeypatch.setattr(loop, "save_as", save_then_crash)
    with pytest.raises(Crash):
        train_cli.main([*args, "--out", str(tmp_path / "killed")])
    assert checkpoint.read(tmp_path / "killed" / "last.pt").step == 2
    monkeypatch.setattr(loop, "save_as", original)
    train_cli.main(["--resume", str(tmp_path / "killed")])
    straight = (tmp_path / "straight" / "metrics.csv").read_text()
    assert (tmp_path / "killed" / "metrics.csv").read_text() == straight and straight.count("\n") == 4


# --- 11: every setting checked for type and range before any work ---------------------------------------------
@pytest.mark.parametrize("setting, message", [
    (dict(outside_prob=-0.1), r"outside_prob must be in \[0, 1\)"), (dict(outside_prob=float("nan")), "outside_prob must be a finite"),
    (dict(outside_weight=-5.0), "outside_weight"), (dict(schedule_fraction=-1.0), "schedule_fraction"),
    (dict(compile="yes"), "compile must be bool"), (dict(steps=2.7), "steps must be int"), (dict(steps="abc"), "steps must be int"),
    (dict(min_line_snr=1e9), "min_line_snr"), (dict(snr_min=30.0, snr_max=3.0), "snr_min <= snr_max"),
])  # fmt: skip
def test_nonsense_settings_are_refused_by_name(setting, message):
    from zfast.training.config import check_config

    with pytest.raises(ValueError, match=message):
        check_config(TrainConfig(**setting))


def test_toml_types_and_abbreviations_are_checked(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('compile = "yes"\n')
    with pytest.raises(SystemExit, match="compile must be bool"):
        train_cli.main(["--config", str(config), "--out", str(tmp_path / "x")])
    config.write_text("steps = [\n")
    with pytest.raises(SystemExit, match=r"run\.toml: not valid TOML"):
        train_cli.main(["--config", str(config), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["--ste", "2", "--out", str(tmp_path / "x")])  # no prefix matching: --ste is not --steps
    assert stop.value.code == 2
    assert not (tmp_path / "x").exists()


# --- 2 and 4: f_ν input and input without ivar give the f_λ answer, whatever the units ---------------------------
def test_fnu_input_gives_the_flam_answer(spectra):
    model, wave, flux, ivar = spectra
    flam = zfast.predict(model, wave, flux, ivar)
    lam2 = wave.square()
    fnu = zfast.predict(model, wave, 3e7 * flux * lam2, ivar / (3e7 * lam2).square(), flux_unit="fnu")
    for key in ("z", "z_err", "z_lo68", "z_hi68", "snr"):
        torch.testing.assert_close(fnu[key], flam[key], rtol=1e-6, atol=1e-9)


def test_without_ivar_the_answer_does_not_depend_on_the_flux_units(spectra):
    model, wave, flux, ivar = spectra
    given = zfast.predict(model, wave, flux, ivar)
    one, thousand = zfast.predict(model, wave, flux), zfast.predict(model, wave, 1e3 * flux)
    tiny = zfast.predict(model, wave, 1e-290 * flux)
    huge = zfast.predict(model, wave, 1e300 * flux)
    for other in (thousand, tiny, huge):
        for key in ("z", "z_err", "snr"):
            torch.testing.assert_close(other[key], one[key], rtol=1e-6, atol=1e-9)
    # The estimated noise is the true one within ~20 % (white noise, SNR 3-30; at high SNR the spectrum's own
    # structure adds to the neighbour differences, so the estimate errs towards more noise): snr follows it.
    ratio = one["snr"] / given["snr"]
    assert bool(((ratio > 0.75) & (ratio < 1.2)).all()), ratio
    assert bool(torch.isfinite(huge["snr"]).all())


# --- 3 and 8: outputs are written under unique temporary names and never clobber a file that appeared ----------
def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path):
    target = tmp_path / "z.csv"
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with files.atomic_path(target, exclusive=True) as temporary:
            temporary.write_text("mine")
            target.write_text("theirs")  # another run finished first
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]
    names = set()
    for _ in range(2):
        with files.atomic_path(tmp_path / "a.csv") as temporary:
            names.add(temporary.name)
            temporary.write_text("x")
    assert len(names) == 2  # unique temporary names: concurrent writers never share one


def test_failures_leave_no_temporary_file(tmp_path):
    with pytest.raises(OSError, match="No space left"):
        with files.atomic_path(tmp_path / "best.pt") as temporary:
            temporary.write_bytes(b"x" * 1000)
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_to_zfast_predict_leaves_nothing_behind(untrained, tmp_path):
    wave = zfast.load_model(untrained, "cpu").instrument.wavelength.numpy()
    np.savez(tmp_path / "in.npz", wavelength=wave, flux=np.random.default_rng(0).random((6000, wave.size)) + 1.0)
    code = f"import sys; from zfast.cli import predict; sys.exit(predict.main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "--checkpoint", str(untrained), "--input", str(tmp_path / "in.npz"),
                                "--output", str(tmp_path / "z.csv"), "--batch-size", "64", "--device", "cpu"],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".z.csv") for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "terminated; nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


# --- 7 and 13: clean one-line errors naming the file or option ------------------------------------------------
def test_cli_errors_are_one_line_naming_the_culprit(untrained, tmp_path, capsys):
    wave = zfast.load_model(untrained, "cpu").instrument.wavelength.numpy()
    np.savez(tmp_path / "ok.npz", wavelength=wave, flux=np.ones((3, wave.size)))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "notzip.npz").write_bytes(b"this is not a zip archive at all")
    good = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "folder.csv").mkdir()

    def fails(args, expected, code=None):
        base = ["--checkpoint", str(untrained), "--device", "cpu"]
        with pytest.raises(SystemExit, match=expected) as stop:
            predict_cli.main(base + args)
        if code is not None:
            assert stop.value.code == code

    for name in ("empty.npz", "notzip.npz", "truncated.npz"):
        fails(["--input", str(tmp_path / name), "--output", str(tmp_path / "z.csv")], name)
    fails(["--input", str(tmp_path / "ok.npz"), "--output", str(tmp_path / "folder.csv"), "--overwrite"], "is a folder")
    fails(["--input", str(tmp_path / "ok.npz"), "--output", str(tmp_path / "missing" / "z.csv")], "does not exist")
    for device in ("bogus", "cuda:7"):
        with pytest.raises(SystemExit, match=f"device '{device}'"):
            predict_cli.main(["--checkpoint", str(untrained), "--input", str(tmp_path / "ok.npz"), "--output",
                              str(tmp_path / "z.csv"), "--device", device])  # fmt: skip
    fails(["--input", str(tmp_path / "ok.npz"), "--output", str(tmp_path / "z.csv"), "--batch-size", "0"], "2", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.npz", "folder.csv", "notzip.npz", "ok.npz", "truncated.npz"]


def test_disk_full_during_training_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    def full_disk_save(payload, path):
        with open(path, "wb") as stream:
            stream.write(b"x" * 100_000)  # part of the checkpoint reached the disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk_save)
    with pytest.raises(SystemExit) as stop:
        train_cli.main([*TINY, "--out", str(tmp_path / "run")])
    assert "No space left on device" in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".") or p.suffix == ".pt"]


def test_truncated_fits_and_hdf5_pointing_outside_are_refused_naming_the_file(untrained, tmp_path):
    fits = pytest.importorskip("astropy.io.fits")
    h5py = pytest.importorskip("h5py")
    wave = zfast.load_model(untrained, "cpu").instrument.wavelength.numpy()
    flux = np.random.default_rng(1).random((50, wave.size)) + 1.0
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(wave, name="WAVELENGTH"), fits.ImageHDU(flux, name="FLUX")]).writeto(tmp_path / "ok.fits")
    whole = (tmp_path / "ok.fits").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 3000):
        (tmp_path / "cut.fits").write_bytes(whole[:cut])
        with pytest.raises(ValueError, match="cut.fits: .*truncated"):
            predict_file(zfast.load_model(untrained, "cpu"), tmp_path / "cut.fits", tmp_path / "z.csv")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(flux.tobytes())  # any local file a crafted HDF5 file could point at
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["flux"] = flux
    with h5py.File(tmp_path / "external.h5", "w") as handle:
        handle["wavelength"] = wave
        handle.create_dataset("flux", shape=flux.shape, dtype="f8", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    with h5py.File(tmp_path / "link.h5", "w") as handle:
        handle["wavelength"] = wave
        handle["flux"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/flux")
    for name, message in (("external.h5", "other files"), ("link.h5", "external link")):
        with pytest.raises(ValueError, match=f"{name}: .*{message}"):
            predict_file(zfast.load_model(untrained, "cpu"), tmp_path / name, tmp_path / "z.csv")
    assert not (tmp_path / "z.csv").exists()


def test_scalar_hdf5_flux_and_a_header_claiming_a_huge_shape_are_refused(untrained, tmp_path):
    import io
    import zipfile

    h5py = pytest.importorskip("h5py")
    wave = zfast.load_model(untrained, "cpu").instrument.wavelength.numpy()
    with h5py.File(tmp_path / "scalar.h5", "w") as handle:
        handle["wavelength"], handle["flux"] = wave, 3.0
    raw = io.BytesIO()
    np.save(raw, np.ones((3, wave.size)))
    raw = raw.getvalue()
    header_length = int.from_bytes(raw[8:10], "little")
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, {wave.size}), }}"
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("flux.npy", raw[:10] + (header.ljust(header_length - 1) + "\n").encode() + raw[10 + header_length:])
        wave_bytes = io.BytesIO()
        np.save(wave_bytes, wave)
        archive.writestr("wavelength.npy", wave_bytes.getvalue())
    for name, message in (("scalar.h5", r"flux must be \[N, M\].*got \(\)"), ("huge.npz", "header claims shape")):
        with pytest.raises(SystemExit, match=f"{name}: .*{message}"):
            predict_cli.main(["--checkpoint", str(untrained), "--input", str(tmp_path / name), "--output",
                              str(tmp_path / "z.csv"), "--device", "cpu"])  # fmt: skip


# --- 14: sizes checked before allocating -----------------------------------------------------------------------
def test_impossible_sizes_fail_at_once_before_allocating():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wave = torch.linspace(1000.0, 20000.0, 300, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"dln = 1e-11.*needs .* GB"):
        zfast.SEDLibrary(wave, torch.rand(2, 300, dtype=torch.float64) + 0.1, dln=1e-11)
    library = zfast.SEDLibrary.default()
    batch = 10**11  # broadcast inputs: nothing may be copied before the output's size is checked
    with pytest.raises(ValueError, match=r"output \[100000000000, 299\] float32 needs"):
        library.redshift_resample(torch.zeros(1, dtype=torch.int64).expand(batch),
                                  torch.ones(1, dtype=torch.float64).expand(batch), torch.linspace(12000.0, 19000.0, 300))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KB: well under 1 GB


# --- 5 and 13: damaged checkpoints are refused, naming the file -----------------------------------------------
def test_damaged_checkpoints_are_refused(untrained, tmp_path):
    data = bytearray(untrained.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped\.pt: damaged \(CRC mismatch"):
        zfast.load_model(tmp_path / "flipped.pt", "cpu")
    record = checkpoint.read(untrained)
    cases = {
        "huge": lambda r: next(iter(r.model.values())).view(-1)[:64].fill_(1e30),
        "nan": lambda r: next(iter(r.model.values())).view(-1)[:1].fill_(float("nan")),
        "no_estimator": lambda r: r.config.pop("estimator"),
        "string_bins": lambda r: r.config.update(n_bins="80"),
    }
    messages = {"huge": "reaches 1e\\+30", "nan": "not finite", "no_estimator": "has no 'estimator'", "string_bins": "'n_bins' is '80'"}
    for name, damage in cases.items():
        broken = checkpoint.read(untrained)
        damage(broken)
        checkpoint.save(tmp_path / f"{name}.pt", broken)
        with pytest.raises(ValueError, match=rf"{name}\.pt: .*{messages[name]}"):
            zfast.load_model(tmp_path / f"{name}.pt", "cpu")
    assert record.step == 0  # the fixture itself untouched


# --- 12: input files get the API's dtype checks -----------------------------------------------------------------
def test_input_files_with_wrong_dtypes_are_refused(untrained, tmp_path):
    model = zfast.load_model(untrained, "cpu")
    wave = model.instrument.wavelength.numpy()
    flux = np.ones((3, wave.size))
    for name, arrays, message in [
        ("complex", dict(wavelength=wave, flux=flux + 1j), "flux must be real numbers, got complex"),
        ("bool", dict(wavelength=wave, flux=flux > 0), "flux must be real numbers, got bool"),
        ("strings", dict(wavelength=wave, flux=flux.astype(str)), "flux must be real numbers"),
        ("id2d", dict(wavelength=wave, flux=flux, id=np.arange(6).reshape(3, 2)), r"id must be one value per spectrum"),
    ]:
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ValueError, match=rf"{name}\.npz: {message}"):
            predict_file(model, tmp_path / f"{name}.npz", tmp_path / "z.csv")
    assert not (tmp_path / "z.csv").exists()


# --- 15: rebin of fluxes near the float64 limit ----------------------------------------------------------------
def test_rebin_of_huge_finite_flux_stays_finite_and_exact(generator):
    wave_in = torch.linspace(1000.0, 2000.0, 97, dtype=torch.float64)
    wave_out = torch.linspace(1100.0, 1900.0, 31, dtype=torch.float64)
    flux = torch.rand(4, 97, generator=generator, dtype=torch.float64) + 0.1
    plain = zfast.rebin(flux, wave_in, wave_out)
    for factor in (2.0**1000, 1e306, 1.7e308 / 1.1):
        big = zfast.rebin(flux * factor, wave_in, wave_out)
        assert bool(torch.isfinite(big).all()), factor
        torch.testing.assert_close(big / factor, plain, rtol=1e-12, atol=0)
    assert torch.equal(zfast.rebin(flux * 2.0**600, wave_in, wave_out), plain * 2.0**600)  # powers of two: exact
