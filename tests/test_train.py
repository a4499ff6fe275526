"""zfast-train end to end on tiny settings: files of a run, resume equals an uninterrupted run, estimators."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

import zfast
from zfast import checkpoint
from zfast.cli import train as train_cli
from zfast.data.sets import load_library
from zfast.models import build_model
from zfast.training import config as training_config
from zfast.training import loop, loss, streams

TINY = ["--steps", "6", "--eval-every", "3", "--n-val", "64", "--n-test", "96", "--batch-size", "32",
        "--n-bins", "80", "--device", "cpu"]  # fmt: skip


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(training_config.TrainConfig):
        assert "--" + field.name.replace("_", "-") in text


def test_log_pixels_sets_the_log_grid_and_survives_the_checkpoint(tmp_path):
    """--log-pixels N: the shift network reads an N-pixel log grid in training and again when loaded, with the
    same outputs; without it, the instrument's finest sampling (more pixels than the instrument's 512)."""
    out = tmp_path / "run"
    assert train_cli.main(["--preset", "quick", *TINY, "--log-pixels", "300", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["log_pixels"] == 300
    model = zfast.load_model(out / "best.pt", "cpu")
    assert tuple(model.network.resample.shape) == (model.instrument.n_pixels, 300)
    again = zfast.load_model(out / "best.pt", "cpu")
    x = torch.randn(3, model.instrument.n_pixels)
    with torch.no_grad():
        torch.testing.assert_close(model.network.eval()(x), again.network.eval()(x))
    default = build_model("resnet1d-shift", 512, "classification", 80, wave_edges=model.instrument.wave_edges,
                                       z_range=(1.0, 1.8))  # fmt: skip
    assert default.resample.shape[1] > 512 and training_config.TrainConfig().log_pixels == 0
    assert training_config.resolve_config("quick").log_pixels == 512
    # Models without a log grid ignore it: the preset with another network builds that network as it reads.
    assert not hasattr(build_model("resnet1d", 512, "classification", 80, n_log=512), "resample")


def test_a_run_writes_its_folder(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--preset", "quick", *TINY, "--out", str(out)]) == 0
    for name in ("config.json", "splits.json", "last.pt", "best.pt", "metrics.csv", "metrics.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 6 and config["model"] == "resnet1d-shift"
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,train_loss") and [r.split(",")[0] for r in rows[1:]] == ["3", "6"]
    results = json.loads((out / "metrics.json").read_text())["test"]
    assert results["all"]["n"] == 96 and {"sigma_nmad", "outlier_01", "coverage68"} <= set(results["all"])
    assert {"ew<20", "ew>=20"} <= set(results)
    names = sorted(["z_true_vs_pred.png", "dz_histogram.png", "learning_curves.png", "pz_examples.png", "pit_histogram.png"])
    assert sorted(p.name for p in (out / "plots").iterdir()) == names
    # On demand: plots and test metrics redrawn from the run folder alone, identical metrics.
    for p in (out / "plots").iterdir():
        p.unlink()
    (out / "metrics.json").unlink()
    assert train_cli.main(["--plots", str(out)]) == 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == names
    assert json.loads((out / "metrics.json").read_text())["test"] == results
    # The P(z) temperatures were fitted to a calibration set of its own size (8 x n_val, at least 1024).
    assert int(checkpoint.read(out / "best.pt").stats.calibration["calibration_n"]) == 1024


def test_weak_line_weight_draws_weak_line_seds_more_often():
    library = load_library("default")
    c = training_config.TrainConfig(weak_line_weight=4.0, batch_size=4000)
    weak = torch.as_tensor(library.params["ew_halpha"]) < 20.0
    drawn = next(streams.augmented(c, library, streams.make_instrument(c), "train", seed=3))[3]
    uniform = next(streams.augmented(training_config.TrainConfig(batch_size=4000), library, streams.make_instrument(c), "train", seed=3))[3]
    share, base = weak[drawn].double().mean().item(), weak[uniform].double().mean().item()
    assert abs(share - 4 * base / (4 * base + 1 - base)) < 0.04 and share > base + 0.2
    val = streams.augmented(c, library, streams.make_instrument(c), "val").sed_weights
    assert val is None  # validation and test sets stay uniform


def test_calibration_set_size():
    size = [streams.calibration_size(training_config.TrainConfig(n_val=n, n_calibration=k)) for n, k in
            [(64, 0), (256, 0), (1024, 0), (2048, 0), (2048, 500)]]  # fmt: skip
    assert size == [1024, 2048, 8192, 8192, 500]


@pytest.mark.parametrize("extra", [[], ["--ema", "0.9"]])
def test_resume_continues_as_if_never_stopped(tmp_path, monkeypatch, extra):
    straight = tmp_path / "straight"
    train_cli.main([*TINY, *extra, "--out", str(straight)])
    stopped = tmp_path / "stopped"
    original = loss.training_loss

    def loss_then_stop(c, output, z, edges, step, n_beyond=0):
        if step == 2:  # the third step: ask to stop, as a scheduler's SIGTERM would
            os.kill(os.getpid(), signal.SIGTERM)
        return original(c, output, z, edges, step, n_beyond)

    monkeypatch.setattr(loop, "training_loss", loss_then_stop)
    train_cli.main([*TINY, *extra, "--out", str(stopped)])
    assert torch.load(stopped / "last.pt", weights_only=True)["step"] == 3
    assert not (stopped / "metrics.json").exists()
    monkeypatch.setattr(loop, "training_loss", original)
    train_cli.main(["--resume", str(stopped)])
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(stopped / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert (stopped / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    if extra:  # the checkpoint's model is the average, the trained weights resume beside it
        trained = a["resume"]["trained_model"]
        for name, tensor in trained.items():
            assert torch.equal(tensor, b["resume"]["trained_model"][name]), name
        assert any(not torch.equal(t, a["model"][k]) for k, t in trained.items() if t.is_floating_point())
        with pytest.raises(ValueError, match="with --ema"):
            loop.restore(loop.start(training_config.config_from_dict({**a["config"], "ema": 0.0, "out": str(tmp_path / "x")}),
                                    torch.device("cpu"), 0, 1), checkpoint.read(straight / "last.pt"))  # fmt: skip


def test_weight_average_follows_its_recurrence(generator):
    """WeightAverage against the recurrence written out in float64: a <- a + (1 - d_n)(p - a), d_n = min(decay,
    (1 + n) / (10 + n)), over updates of random weights; integer buffers copied."""
    from zfast.training.averaging import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3))
    average = WeightAverage(model, 0.8)
    reference = {k: v.double().clone() for k, v in average.module.state_dict().items() if v.is_floating_point()}
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
            model[1].running_mean.copy_(torch.randn(3, generator=generator))
            model[1].num_batches_tracked.fill_(n + 7)
        average.update(model)
        d = min(0.8, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            if k in reference:
                reference[k] += (1 - d) * (v.double() - reference[k])
    state = average.module.state_dict()
    for k, v in reference.items():
        torch.testing.assert_close(state[k].double(), v, rtol=1e-5, atol=1e-6)
    assert int(state["1.num_batches_tracked"]) == 36
    assert not any(p.requires_grad for p in average.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


@pytest.mark.parametrize("estimator", ["regression", "distribution"])
def test_other_estimators_train(tmp_path, estimator):
    out = tmp_path / estimator
    # bf16 autocast (the default on CUDA) forced on the CPU, so the mixed-precision path runs here too.
    train_cli.main([*TINY, "--estimator", estimator, "--model", "paper-cnn", "--amp", "bf16", "--out", str(out)])
    results = json.loads((out / "metrics.json").read_text())["test"]["all"]
    assert results["n"] == 96 and results["mae"] == results["mae"]  # finite
    assert ("coverage68" in results) == (estimator == "distribution")


def test_distribution_schedule_goes_from_wide_js_only_to_the_final_setting():
    assert training_config.TrainConfig().lambda_ent == 0.0  # the measured default: JS alone after the ramp
    c = training_config.TrainConfig(estimator="distribution", steps=100, n_bins=800, lambda_ent=0.15)  # the paper's λ2
    sigma0, lam0 = loss.distribution_schedule(c, 0)
    sigma_end, lam_end = loss.distribution_schedule(c, 50)
    assert lam0 == 0.0 and lam_end == pytest.approx(0.15)
    assert loss.distribution_schedule(c, 25)[1] == pytest.approx(0.075)
    assert sigma0 == pytest.approx(4 * sigma_end) and sigma_end == pytest.approx(1.5 * 0.001)
    assert loss.distribution_schedule(c, 100) == (sigma_end, lam_end)


def test_bad_checkpoints_and_configs_give_clear_errors(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(SystemExit, match="not a readable zfast checkpoint"):
        train_cli.main(["--resume", str(tmp_path)])
    torch.save({"version": 99}, tmp_path / "last.pt")
    with pytest.raises(SystemExit, match="layout version 99; this zfast reads zfast checkpoints of versions 1-2"):
        train_cli.main(["--resume", str(tmp_path)])
    with pytest.raises(SystemExit, match="bad configuration: estimator 'ranking'"):
        train_cli.main(["--estimator", "ranking", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="batch_size must be >= 1"):
        train_cli.main(["--batch-size", "-4", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="n_calibration must be >= 0"):
        train_cli.main(["--n-calibration", "-1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="weak_line_weight must be > 0"):
        train_cli.main(["--weak-line-weight", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="log_pixels must be >= 0"):
        train_cli.main(["--model", "resnet1d-shift", "--log-pixels", "-2", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="too short for 1 <= z <= 3"):
        train_cli.main([*TINY, "--z-max", "3.0", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no such SED library file"):
        train_cli.main([*TINY, "--library", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        train_cli.main(["--preset", "huge"])
    config = tmp_path / "run.toml"
    config.write_text('steps = 5\nlearning_rate = 1.0\n')
    with pytest.raises(SystemExit, match=r"unknown settings \['learning_rate'\]"):
        train_cli.main(["--config", str(config)])


def test_holdout_recipe_and_training_set_size_splits():
    library = load_library("default")
    sfh = [str(t) for t in library.params["sfh_type"]]
    plain = streams.splits(training_config.TrainConfig(), library)
    held = streams.splits(training_config.TrainConfig(holdout_sfh="burst"), library)
    burst = {i for i, t in enumerate(sfh) if t == "burst"}
    assert set(held["holdout"].tolist()) == burst and len(burst) > 0
    for name in ("train", "val", "test"):
        assert set(held[name].tolist()) == set(plain[name].tolist()) - burst
    small = streams.splits(training_config.TrainConfig(train_seds=100, holdout_sfh="burst"), library)
    assert small["train"].numel() == 100 and set(small["train"].tolist()) <= set(held["train"].tolist())
    assert torch.equal(small["test"], held["test"]) and torch.equal(small["val"], held["val"])
    spread = small["train"].float()  # a random subset, not the first 100 indices
    assert spread.max() > 0.8 * len(library)
    with pytest.raises(ValueError, match="no such recipe"):
        streams.splits(training_config.TrainConfig(holdout_sfh="steady"), library)
    with pytest.raises(ValueError, match="train_seds"):
        streams.splits(training_config.TrainConfig(train_seds=10**6), library)
    with pytest.raises(SystemExit, match="train_seds must be >= 0"):
        train_cli.main(["--train-seds", "-1"])


def test_sigkill_then_resume_gives_the_same_weights(tmp_path):
    """A run killed with SIGKILL (no chance to save) resumes from its last periodic checkpoint and ends with
    exactly the weights of an uninterrupted run."""
    import os
    import subprocess
    import sys
    import time

    args = ["--steps", "60", "--eval-every", "3", "--n-val", "32", "--n-test", "32", "--batch-size", "16",
            "--n-bins", "80", "--model", "paper-cnn", "--device", "cpu"]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_cli.main([*args, "--out", str(straight)])
    # The same thread count as this process (where the straight run and the resume run): on some CPUs (an Intel
    # AVX-512 Xeon) MKL's GEMM differs in the last bit between thread counts, and an earlier test may have set ours.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen([sys.executable, "-m", "zfast.train", *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    step_at_kill = torch.load(killed / "last.pt", weights_only=True)["step"]
    train_cli.main(["--resume", str(killed)])
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert b["step"] == 60 and 3 <= step_at_kill <= 60
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_two_process_gloo_ddp_matches_one_process_trend(tmp_path):
    import csv
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    args = ["--steps", "30", "--eval-every", "10", "--n-val", "64", "--n-test", "64", "--batch-size", "32",
            "--n-bins", "80", "--model", "paper-cnn", "--device", "cpu"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    train_cli.main([*args, "--out", str(one)])
    result = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "zfast.train", *args, "--out", str(two)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    def val_losses(run):
        with open(run / "metrics.csv") as stream:
            return [float(row["val_loss"]) for row in csv.DictReader(stream)]

    a, b = val_losses(one), val_losses(two)
    assert len(a) == len(b) == 3
    assert a[-1] < a[0] and b[-1] < b[0]  # both learn
    assert abs(b[-1] - a[-1]) < 0.25 * a[-1]  # the same trend (2 processes see twice the spectra per step)
    generators = checkpoint.read(two / "last.pt").resume["augment_generators"]
    assert generators.shape[0] == 2  # every rank's stream is in the checkpoint
    assert not torch.equal(generators[0], generators[1])
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert (two / "metrics.json").is_file()


@pytest.mark.slow
def test_each_head_learns_on_a_tiny_noiseless_library(tmp_path):
    """40 SEDs of the built-in library, no noise, the paper's CNN, 300 steps of 64: the binned heads get far below
    their bin width (0.01 in z, ~0.004 in Δz/(1+z)); regression, the weak baseline, far below chance (~0.1).
    Without the outside output (its own tests are in test_predict): it cost this small model's distribution
    head 1.4-2.2x in σ_NMAD (measured, seeds 0 and 1), which this test would take for a broken head."""
    import zfast

    library = zfast.SEDLibrary.default()
    keep = torch.arange(0, len(library), 25)
    small = zfast.SEDLibrary(library.wavelength, library.flux[keep], params={k: v[keep.numpy()] for k, v in library.params.items()})
    small.save(tmp_path / "tiny.npz")
    limits = {"classification": 0.25 * 0.01 / 2.4, "distribution": 0.25 * 0.01 / 2.4, "regression": 0.03}
    for estimator, limit in limits.items():
        out = tmp_path / estimator
        train_cli.main(["--library", str(tmp_path / "tiny.npz"), "--noise", "none", "--estimator", estimator,
                    "--model", "paper-cnn", "--n-bins", "80", "--steps", "300", "--eval-every", "300",
                    "--batch-size", "64", "--lr", "3e-3", "--n-val", "256", "--n-test", "256", "--device", "cpu",
                    "--outside-prob", "0", "--out", str(out)])  # fmt: skip
        sigma_nmad = json.loads((out / "metrics.json").read_text())["test"]["all"]["sigma_nmad"]
        assert sigma_nmad < limit, (estimator, sigma_nmad)


def test_outside_draws_cover_the_rest_of_the_librarys_reach():
    library = load_library("default")
    c = training_config.TrainConfig()
    instrument = streams.make_instrument(c)
    edges, weights = streams.outside_range(c, library, instrument)
    lo, hi = library.z_range(instrument.wave_edges)
    torch.testing.assert_close(edges, torch.tensor([lo + 1e-6, 1.0, 1.8, hi - 1e-6], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))  # each side half
    stream = streams.outside_stream(c, library, instrument, "train", 500, seed=3)
    z = next(stream)[2]
    assert ((z < 1.0) | (z >= 1.8)).all() and z.min() >= lo and z.max() <= hi
    assert abs((z < 1.0).double().mean().item() - 0.5) < 0.07
    # Only one side left: no edge of zero width.
    edges, weights = streams.outside_range(training_config.TrainConfig(z_min=lo + 1e-6, z_max=1.8), library, instrument)
    assert edges.numel() == 3 and weights[0] == 0
    with pytest.raises(ValueError, match="outside-prob 0"):
        streams.outside_range(training_config.TrainConfig(z_min=lo, z_max=hi), library, instrument)
    # The loss: the estimator's on the in-range rows only, plus the outside logit's cross-entropy on all.
    c = training_config.TrainConfig(estimator="classification", n_bins=8)
    bin_edges = torch.linspace(1.0, 1.8, 9, dtype=torch.float64)
    output = torch.randn(6, 9)
    z = torch.tensor([1.05, 1.3, 1.7, 1.2], dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(output[:4, :8], torch.tensor([0, 3, 7, 2])) + \
        torch.nn.functional.binary_cross_entropy_with_logits(output[:, 8], torch.tensor([0.0, 0, 0, 0, 1, 1]))
    torch.testing.assert_close(loss.training_loss(c, output, z, bin_edges, 0, n_beyond=2), expected)


def test_lambda_ce_adds_a_cross_entropy_to_the_distribution_loss():
    from zfast.bins import soft_labels

    bin_edges = torch.linspace(1.0, 1.8, 41, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    output = torch.randn(7, 40, generator=g, dtype=torch.float64)
    z = 1.0 + 0.8 * torch.rand(7, generator=g, dtype=torch.float64)
    js = training_config.TrainConfig(estimator="distribution", n_bins=40, outside_prob=0.0, steps=100)
    both = dataclasses.replace(js, lambda_ce=0.3)
    step = 80  # after the label ramp: σ = label_sigma_bins
    # Independent reference: JS(P, Q) in float64 from its definition, Q the final soft labels.
    q = soft_labels(z, bin_edges, js.label_sigma_bins * 0.02)
    p = torch.softmax(output, dim=1)
    m = 0.5 * (p + q)

    def kl(a, b):
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.log()), 0.0).sum(dim=1)

    reference_js = js.lambda_js * 0.5 * (kl(p, m) + kl(q, m)).mean()
    torch.testing.assert_close(loss.training_loss(js, output, z, bin_edges, step), reference_js, rtol=1e-6, atol=1e-9)
    bins = ((z - 1.0) / 0.02).floor().long()
    ce = -torch.log_softmax(output, dim=1).gather(1, bins[:, None]).mean()
    torch.testing.assert_close(loss.training_loss(both, output, z, bin_edges, step), reference_js + 0.3 * ce, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="lambda_ce"):
        training_config.check_config(dataclasses.replace(js, lambda_ce=-0.1))


def test_help_groups_every_option_once(capsys):
    """zfast-train --help lists the options by group (data, model, estimator, optimisation, run, evaluation), each
    TrainConfig field in exactly one."""
    grouped = [name for names in train_cli.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(training_config.TrainConfig))
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    titles = [train_cli.TITLES[key] for key in ("data", "model", "estimator", "optimisation", "run", "evaluation")]
    positions = {title: text.index(title + ":") for title in titles}
    for key, names in train_cli.GROUPS.items():
        start = positions[train_cli.TITLES[key]]
        following = [p for p in positions.values() if p > start]
        section = text[start:min(following) if following else len(text)]
        for name in names:
            assert "--" + name.replace("_", "-") in section, (key, name)
