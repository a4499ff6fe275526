"""benchmarks/studies/paper_table.py picks its rows as documented: the talk's by default, every study with --rows all."""

import argparse
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "studies"))
paper_table = pytest.importorskip("paper_table")


def plan(quick=True):
    return paper_table.runs(argparse.Namespace(library="lib.h5", holdout_sfh="lognormal", device="cpu", quick=quick, steps=0))


def test_default_rows_are_the_talks_protocol_and_studies():
    every = plan()
    talk = paper_table.select_rows(every, "talk", "")
    # both networks x the four estimators (the architecture study) and the training-set sizes (80 % of 1K, 2K, 5K)
    expected = {f"{m}/{e}" for m in ("paper-cnn", "resnet1d") for e in
                ("regression", "classification-800", "classification-80", "distribution-800")}
    expected |= {f"resnet1d/classification-800/{n}-seds" for n in (800, 1600, 4000)}
    assert set(talk) == expected
    assert all(talk[k] == every[k] for k in talk) and all(every[k]["steps"] == 900 for k in talk)
    assert {every[f"resnet1d/classification-800/{n}-seds"]["train_seds"] for n in (800, 1600, 4000)} == {800, 1600, 4000}
    assert len(paper_table.select_rows(every, "all", "")) == len(every) > len(talk)
    assert all(plan(quick=False)[k]["steps"] == 10_000 for k in talk)


def test_only_names_rows_and_refuses_unknown_ones():
    every = plan()
    ensemble = next(iter(paper_table.ENSEMBLES))
    picked = paper_table.select_rows(every, "talk", f"resnet1d/distribution-800/js-only/4x-steps,{ensemble}")
    assert list(picked) == ["resnet1d/distribution-800/js-only/4x-steps"]  # an ensemble is scored, not trained
    with pytest.raises(SystemExit, match="unknown rows resnet1d/nope"):
        paper_table.select_rows(every, "talk", "resnet1d/nope")


def test_a_reused_run_trained_with_other_settings_is_named(tmp_path):
    row = plan()["resnet1d/distribution-800"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dict(row, lambda_ent=0.0, device="cuda", library="/elsewhere/lib.h5", seed=3)))
    # the row's own settings are compared (not where it ran, nor defaults the row does not set)
    assert paper_table.stale_settings(run, row) == {"lambda_ent": (0.0, 0.15)}
    (run / "config.json").write_text(json.dumps(dict(row, device="cuda")))
    assert paper_table.stale_settings(run, row) == {}
    assert paper_table.stale_settings(tmp_path / "absent", row) == {}
