"""zfast.checkpoint: the typed payload round-trips, layout-1 files convert to the same model, bad files fail clearly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import zfast
from zfast import checkpoint
from zfast.calibration import SNR_EDGES, calibrated_probs
from zfast.ood import fit_ood, ood_features
from zfast.training.config import TrainConfig


def small_run(generator, outside: float = 0.1):
    """(config dict, network, OODStats, per-SNR calibration without peak groups) of an untrained small run."""
    config = dataclasses.asdict(TrainConfig(model="paper-cnn", n_bins=80, outside_prob=outside))
    network, instrument = checkpoint.build_network(config)
    network.eval()
    flux = 1.0 + 0.1 * torch.randn(64, instrument.n_pixels, generator=generator)
    with torch.no_grad():
        layers = ood_features(network, flux)[0]
    ood = fit_ood([l[:40] for l in layers], [l[40:] for l in layers])
    n_snr = len(SNR_EDGES) - 1
    calibration = {"snr_edges": torch.tensor(SNR_EDGES, dtype=torch.float64),
                   "temperatures": 0.5 + torch.rand(n_snr, generator=generator, dtype=torch.float64),
                   "counts": torch.full((n_snr,), 60), "calibration_version": torch.tensor(2)}  # fmt: skip
    return config, network, ood, calibration


def spectra(generator, model, n=12):
    wave = model.instrument.wavelength
    flux = 1.0 + 0.2 * torch.randn(n, wave.numel(), generator=generator, dtype=torch.float64)
    ivar = torch.full_like(flux, 100.0) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return wave, flux, ivar


def test_run_checkpoint_round_trips(tmp_path, generator):
    config, network, ood, calibration = small_run(generator)
    stats = checkpoint.PredictStats(ood=ood, calibration=calibration, z_scatter=None)
    original = checkpoint.RunCheckpoint(config, network.state_dict(), 7, 0.25, {"torch_rngs": torch.get_rng_state()[None]}, stats)
    checkpoint.save(tmp_path / "a.pt", original)
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["version"] == checkpoint.CHECKPOINT_VERSION == 2 and raw["kind"] == "run"
    back = checkpoint.read(tmp_path / "a.pt")
    assert (back.step, back.best, back.config) == (7, 0.25, config)
    assert torch.equal(back.resume["torch_rngs"], original.resume["torch_rngs"])
    for name, tensor in network.state_dict().items():
        assert torch.equal(back.model[name], tensor), name
    assert back.stats.ood.threshold == ood.threshold and back.stats.ood.taps
    for a, b in zip(back.stats.ood.precisions, ood.precisions):
        assert torch.equal(a, b)
    assert torch.equal(back.stats.calibration["temperatures"], calibration["temperatures"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # the atomic write leaves nothing beside it


def test_layout_1_files_load_to_the_same_predictions(tmp_path, generator):
    """A layout-1 dict (flat predict_stats; the oldest OOD form; a calibration without peak groups; a config from
    before outside_prob) is converted on load and predicts exactly what the equivalent layout-2 model does."""
    config, network, ood, calibration = small_run(generator, outside=0.0)
    legacy_config = {k: v for k, v in config.items() if k not in checkpoint.LEGACY_CONFIG}
    flat = {"ood_mean": ood.means[-1], "ood_precision": ood.precisions[-1], "ood_threshold": 1.5, **calibration,
            "calibration_n": torch.tensor(64)}  # fmt: skip
    v1 = {"version": 1, "config": legacy_config, "model": network.state_dict(), "step": 3, "best": 0.5,
          "optimiser": {"state": {}}, "augment_generators": torch.zeros(1, 8, dtype=torch.uint8), "predict_stats": flat}
    torch.save(v1, tmp_path / "v1.pt")
    converted = zfast.load_model(tmp_path / "v1.pt", "cpu")
    assert converted.stats.ood.taps is False and len(converted.stats.ood.means) == 1
    assert converted.stats.calibration["temperatures"].shape == (1, len(SNR_EDGES) - 1)
    assert not converted.outside and checkpoint.read(tmp_path / "v1.pt").resume["optimiser"] == {"state": {}}
    wave, flux, ivar = spectra(generator, converted)
    got = zfast.predict(converted, wave, flux, ivar, pz=True)
    # The same network scored by hand with the layout-1 rules: plain per-SNR temperatures, unscaled penultimate OOD.
    normalised = zfast.data.normalise(flux.float(), ivar.float())[0]
    with torch.no_grad():
        logits = network(normalised)
        penultimate = ood_features(network, normalised, taps=False)[0][-1]
    expected_pz = calibrated_probs(logits, got["snr"], calibration)  # no peak_edges: per SNR only
    torch.testing.assert_close(got["pz"], expected_pz.float(), rtol=1e-4, atol=1e-6)
    centred = penultimate.double() - ood.means[-1]
    expected_score = ((centred @ ood.precisions[-1]) * centred).sum(dim=1) / ood.means[-1].numel()
    torch.testing.assert_close(got["ood_score"], expected_score, rtol=1e-4, atol=1e-6)
    assert torch.equal(got["flag_ood"], expected_score > 1.5)
    assert torch.isnan(got["p_outside"]).all()


def test_layout_1_ensembles_convert(tmp_path, generator):
    config, network, ood, calibration = small_run(generator)
    member = {"config": config, "model": network.state_dict(), "step": 1, "predict_stats": {}}
    torch.save({"ensemble_version": 1, "members": [member, member], "sources": ["a", "b"], "predict_stats": calibration},
               tmp_path / "ens.pt")  # fmt: skip
    ensemble = zfast.load_model(tmp_path / "ens.pt", "cpu")
    assert isinstance(ensemble, checkpoint.EnsembleModel) and len(ensemble.members) == 2
    assert ensemble.calibration["peak_edges"].tolist() == [0.0, math.inf]
    assert all(m.stats.ood is None for m in ensemble.members)


def test_bad_files_name_the_file_the_version_and_what_to_do(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable zfast checkpoint"):
        checkpoint.read(tmp_path / "junk.pt")
    torch.save({"version": 3, "kind": "run"}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future\.pt: layout version 3; .*versions 1-2.*upgrade zfast"):
        checkpoint.read(tmp_path / "future.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: no layout version"):
        checkpoint.read(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a zfast checkpoint"):
        checkpoint.read(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        checkpoint.read(tmp_path / "absent.pt")


def test_a_file_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"version": 2, "kind": "run", "config": Payload(), "model": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable zfast checkpoint"):
        checkpoint.read(tmp_path / "evil.pt")
