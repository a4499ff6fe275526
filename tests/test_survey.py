"""Many inputs in one run (zfast.survey, zfast-predict with several inputs): input expansion, one catalogue per
input identical to a one-file run's, the manifest, --resume after damage and after a real kill, failures that do
not stop the others, and the merged catalogue in each format."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zfast.cli import predict as predict_cli
from zfast.io import predict_file
from zfast.survey import Manifest, catalogue_names, expand_inputs, merge_catalogues, predict_files
from zfast.survey.manifest import NAME, sha256_of


def write_inputs(root: Path, model, sizes=(37, 50, 23), seed=0, folders=("a", "a", "b")) -> list:
    """Small npz spectra files on the model's grid, with ids unique across files."""
    g = np.random.default_rng(seed)
    wave = model.instrument.wavelength.double().numpy()
    paths = []
    for k, (n, folder) in enumerate(zip(sizes, folders)):
        base = 1 + 0.3 * np.sin(wave / (250 + 35 * k))[None] * g.uniform(0.5, 1.5, (n, 1))
        flux = base + g.normal(0, 0.05, (n, wave.size))
        (root / folder).mkdir(parents=True, exist_ok=True)
        path = root / folder / f"tile_{k:03d}.npz"
        np.savez(path, wavelength=wave, flux=flux, ivar=np.full_like(flux, 400.0), id=np.arange(n) + 10_000 * k)
        paths.append(path)
    return paths


def entries(folder: Path) -> list:
    lines = (folder / NAME).read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


# --- inputs ---------------------------------------------------------------------------------------------------
def test_inputs_expand_from_files_folders_globs_and_lists_sorted_and_once(tmp_path, monkeypatch):
    for name in ("x/2.fits", "x/1.npz", "x/deep/3.h5", "x/.hidden.npz", "x/notes.md", "x/old.zfast.fits", "y/4.npz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    x = tmp_path / "x"
    assert expand_inputs([x]) == [x / "1.npz", x / "2.fits", x / "deep" / "3.h5"]
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["y/*.npz", "x/*.fits", "y/4.npz"]) == [x / "2.fits", tmp_path / "y" / "4.npz"]
    assert expand_inputs(["x/**/*.h5"]) == [x / "deep" / "3.h5"]
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text("# tiles of night 1\n../y/4.npz\n\n../x/deep  # a folder\n")
    assert expand_inputs([listing]) == [x / "deep" / "3.h5", tmp_path / "y" / "4.npz"]


def test_inputs_that_name_nothing_say_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*nothing.fits: no such file"):
        expand_inputs([tmp_path / "nothing.fits"])
    with pytest.raises(FileNotFoundError, match="no spectra file matches"):
        expand_inputs([str(tmp_path / "*.fits")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no spectra files"):
        expand_inputs([tmp_path / "empty"])
    listing = tmp_path / "l.txt"
    listing.write_text("a.fits\nmissing.fits\n")
    (tmp_path / "a.fits").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"l.txt, line 2"):
        expand_inputs([listing])


def test_catalogue_names_mirror_the_input_folders_and_refuse_collisions(tmp_path):
    inputs = [tmp_path / "n1" / "t.fits.gz", tmp_path / "n2" / "t.fits", tmp_path / "n2" / "u.npz"]
    assert catalogue_names(inputs, ".csv") == [Path("n1/t.zfast.csv"), Path("n2/t.zfast.csv"), Path("n2/u.zfast.csv")]
    assert catalogue_names(inputs[1:2], ".fits") == [Path("t.zfast.fits")]
    with pytest.raises(ValueError, match="would both write the catalogue"):
        catalogue_names([tmp_path / "t.fits", tmp_path / "t.npz"], ".fits")


# --- runs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["csv", "parquet", "fits"])
def test_each_catalogue_is_the_one_file_runs_and_the_merge_holds_every_row_once(trained, model, tmp_path, form):
    if form != "csv":
        pytest.importorskip("pyarrow" if form == "parquet" else "astropy")
    paths = write_inputs(tmp_path / "in", model)
    run = predict_files([trained[0]], [tmp_path / "in"], tmp_path / "out", catalogue_format=form, merge=tmp_path / f"all.{form}",
                        device="cpu", progress=False, pz=form == "fits")  # fmt: skip
    assert (run.n_inputs, run.n_done, run.n_skipped, run.n_failed, run.n_spectra) == (3, 3, 0, 0, 110)
    names = ["a/tile_000", "a/tile_001", "b/tile_002"]
    for path, name in zip(paths, names):
        alone = tmp_path / f"alone_{path.stem}.{form}"
        predict_file(model, path, alone, progress=False, pz=form == "fits")
        assert (tmp_path / "out" / f"{name}.zfast.{form}").read_bytes() == alone.read_bytes(), name
    recorded = entries(tmp_path / "out")
    assert [e["catalogue"] for e in recorded] == [f"{n}.zfast.{form}" for n in names]
    assert [e["n_spectra"] for e in recorded] == [37, 50, 23] and all(e["status"] == "done" for e in recorded)
    assert all(e["sha256"] == sha256_of(tmp_path / "out" / e["catalogue"]) for e in recorded)
    ids, labels = merged_rows(tmp_path / f"all.{form}", form)
    assert ids == list(range(37)) + list(range(10_000, 10_050)) + list(range(20_000, 20_023))
    assert labels == ["a/tile_000.npz"] * 37 + ["a/tile_001.npz"] * 50 + ["b/tile_002.npz"] * 23


def merged_rows(path: Path, form: str) -> tuple:
    if form == "csv":
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        return [int(r["TARGETID"]) for r in rows], [r["INPUT"] for r in rows]
    if form == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table["TARGETID"].to_pylist(), table["INPUT"].to_pylist()
    from astropy.io import fits

    with fits.open(path) as hdul:
        data = hdul["REDSHIFTS"].data
        assert hdul["PZ"].data.shape[0] == len(data) and "ZMIN" in hdul["REDSHIFTS"].header
        return data["TARGETID"].tolist(), [str(v) for v in data["INPUT"]]


def test_resume_redoes_exactly_the_damaged_missing_and_changed_inputs(trained, model, tmp_path):
    paths = write_inputs(tmp_path / "in", model, sizes=(20, 21, 22, 23), folders=("a",) * 4)
    out = tmp_path / "out"
    predict_files([trained[0]], [tmp_path / "in"], out, catalogue_format="csv", device="cpu", progress=False)
    first = {e["input"]: e for e in entries(out)}
    cats = sorted(out.glob("*.zfast.csv"))
    original = {c.name: c.read_bytes() for c in cats}
    cats[0].unlink()  # lost
    cats[1].write_bytes(original[cats[1].name][:100])  # cut short (not by zfast, whose writes are atomic)
    os.utime(paths[2], ns=(time.time_ns(), time.time_ns()))  # the input changed since
    leftover = out / f".{cats[3].name}.k9x2.csv"  # a killed writer's temporary file
    leftover.write_text("half")
    run = predict_files([trained[0]], [tmp_path / "in"], out, catalogue_format="csv", resume=True, device="cpu", progress=False)
    assert (run.n_done, run.n_skipped, run.n_failed) == (3, 1, 0)
    again = entries(out)[4:]
    assert sorted(Path(e["input"]).name for e in again) == ["tile_000.npz", "tile_001.npz", "tile_002.npz"]
    assert {c.name: c.read_bytes() for c in out.glob("*.zfast.csv")} == original
    assert not leftover.exists()
    assert first[str(paths[3])]["sha256"] == sha256_of(cats[3])
    with pytest.raises(FileExistsError, match="--resume to finish it"):
        predict_files([trained[0]], [tmp_path / "in"], out, catalogue_format="csv", device="cpu", progress=False)
    with pytest.raises(ValueError, match="--resume with another options"):
        predict_files([trained[0]], [tmp_path / "in"], out, catalogue_format="csv", resume=True, device="cpu", min_valid=0.8)
    run = predict_files([trained[0]], [tmp_path / "in"], out, catalogue_format="csv", overwrite=True, device="cpu", progress=False)
    assert (run.n_done, run.n_skipped) == (4, 0) and len(entries(out)) == 4


def test_a_bad_file_fails_alone_and_the_exit_status_counts_failures(trained, model, tmp_path, capsys):
    write_inputs(tmp_path / "in", model, sizes=(20, 21), folders=("a", "a"))
    broken = tmp_path / "in" / "a" / "tile_broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    args = ["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--merge", str(tmp_path / "all.csv"), "--device", "cpu"]  # fmt: skip
    assert predict_cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"{broken}: ValueError" in err and "2 inputs done" in err and "1 failed of 3" in err and "--merge not written" in err
    assert not (tmp_path / "all.csv").exists()
    failed = [e for e in entries(tmp_path / "out") if e["status"] == "failed"]
    assert [Path(e["input"]).name for e in failed] == ["tile_broken.npz"] and "not a readable" in failed[0]["error"]
    broken.unlink()
    write_inputs(tmp_path / "fixed", model, sizes=(5,), folders=("a",))
    (tmp_path / "fixed" / "a" / "tile_000.npz").rename(broken)
    assert predict_cli.main(args + ["--resume"]) == 0
    assert "1 inputs done, 2 already complete, 0 failed of 3" in capsys.readouterr().err
    ids, labels = merged_rows(tmp_path / "all.csv", "csv")
    assert len(ids) == 46 and labels.count("tile_broken.npz") == 5


def test_cli_options_are_checked_before_any_work(trained, model, tmp_path, capsys):
    write_inputs(tmp_path / "in", model, sizes=(3, 3), folders=("a", "a"))
    base = ["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in" / "a" / "*.npz"), "--device", "cpu"]
    with pytest.raises(SystemExit, match="2 input files: --output is then a folder"):
        predict_cli.main(base + ["--output", str(tmp_path / "z.csv")])
    with pytest.raises(SystemExit, match="merge into a .fits file"):
        predict_cli.main(base + ["--output", str(tmp_path / "o"), "--catalogue-format", "fits", "--merge", str(tmp_path / "m.csv")])
    with pytest.raises(SystemExit, match="--output .*z.csv: with several inputs"):
        predict_cli.main(base + ["--output", str(tmp_path / "z.csv"), "--resume"])
    with pytest.raises(SystemExit):  # argparse: usage error
        predict_cli.main(base + ["--output", str(tmp_path / "o"), "--workers", "0"])
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_manifest_cut_mid_line_reads_back(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    header = {"kind": "zfast-predict manifest", "model": [], "options": {}}
    manifest = Manifest.open(folder, header)
    manifest.record({"input": "/a.fits", "catalogue": "a.zfast.fits", "status": "done"})
    with open(folder / NAME, "a") as handle:
        handle.write('{"input": "/b.fits", "catalogue": "b.zf')  # the kill came mid-write
    again = Manifest.open(folder, header, resume=True)
    assert list(again.entries) == ["/a.fits"]


def test_merging_catalogues_of_different_columns_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("TARGETID,Z\n1,0.5\n")
    (tmp_path / "b.csv").write_text("TARGETID,Z,ZERR\n2,0.5,0.1\n")
    with pytest.raises(ValueError, match="b.csv: its columns differ"):
        merge_catalogues([("a", tmp_path / "a.csv"), ("b", tmp_path / "b.csv")], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()
    (tmp_path / "c.csv").write_text("TARGETID,Z\n3,0.7\n")
    assert merge_catalogues([("a,1", tmp_path / "a.csv"), ("c", tmp_path / "c.csv")], tmp_path / "m.csv") == 2
    assert (tmp_path / "m.csv").read_text() == 'TARGETID,Z,INPUT\n1,0.5,"a,1"\n3,0.7,c\n'


@pytest.mark.slow
def test_a_killed_run_resumes_with_only_what_was_missing(trained, model, tmp_path):
    """zfast-predict over 6 files, killed (SIGKILL) once 2 catalogues are recorded; --resume does the rest only."""
    write_inputs(tmp_path / "in", model, sizes=(400,) * 6, folders=("a",) * 6)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "zfast.cli.predict", "--checkpoint", str(trained[0]), "--input", str(tmp_path / "in"),
               "--output", str(out), "--catalogue-format", "csv", "--device", "cpu", "--batch-size", "50"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not (out / NAME).exists() or len(entries(out)) < 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = entries(out)
    assert 2 <= len(before) < 6, "the run ended before it could be killed: give it more work"
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = entries(out)[len(before):]
    assert sorted(e["input"] for e in after) == sorted(set(str(p) for p in sorted((tmp_path / "in" / "a").glob("*.npz"))) - {e["input"] for e in before})
    assert f"{len(after)} inputs done, {len(before)} already complete, 0 failed of 6" in result.stderr
    assert not list(out.glob(".*"))  # the killed writer's temporary file was removed


def test_predictions_do_not_depend_on_the_cpu_thread_count(model):
    """What byte-identical catalogues from 1 process and N workers rest on (zfast.devices.serial_linear_layers,
    the row-major OOD precision): every column equal on 1 and 2 threads, short batches included."""
    import torch

    import zfast

    g = np.random.default_rng(4)
    wave = model.instrument.wavelength.double().numpy()
    threads = torch.get_num_threads()
    try:
        for n in (1, 5, 6, 7, 9, 10, 11, 17, 40):
            flux = 1 + 0.1 * g.standard_normal((n, wave.size))
            results = []
            for t in (1, 2):
                torch.set_num_threads(t)
                results.append(zfast.predict(model, wave, flux, np.full_like(flux, 100.0), pz=True))
            for key in results[0]:
                assert torch.equal(results[0][key].nan_to_num(-9.0) if results[0][key].is_floating_point() else results[0][key],
                                   results[1][key].nan_to_num(-9.0) if results[1][key].is_floating_point() else results[1][key]), (n, key)
    finally:
        torch.set_num_threads(threads)
