"""Network only, the hybrid (``template_points``) and the full template fit on the same spectra, through
``zfast.predict`` end to end: spectra/s and η(|Δz|/(1+z) > 0.01) side by side (``extra_info``).

    ZFAST_BENCH_CHECKPOINT=runs/quick/best.pt pytest benchmarks/bench_hybrid.py --benchmark-only

Spectra: 512 of the checkpoint's test SEDs at white SNR 10 (seeded); templates: its training SEDs, loaded once
(the study's rates include reading the library file on every call). Without
``ZFAST_BENCH_CHECKPOINT`` a small model is trained first (150 steps, ~20 s: the speeds hold, its η does not).
The accuracy study with every test set is ``studies/hybrid.py`` (docs/hybrid.md).
"""

from __future__ import annotations

import pytest
import torch

import zfast
from zfast import checkpoint
from zfast.data import Instrument, NoiseModel
from zfast.data.sets import load_library, run_splits
from zfast.training import config as training_config
from zfast.training.streams import augmented

N_SPECTRA = 512


@pytest.fixture(scope="module")
def setup(tmp_path_factory, device, bench_checkpoint):
    path = bench_checkpoint
    c = training_config.config_from_dict(checkpoint.read(path).config)
    instrument = Instrument.preset(c.instrument, NoiseModel("white", snr=(10.0, 10.0)))
    library = load_library(c.library)
    flux, ivar, z, _ = augmented(c, library, instrument, "test").fixed_set(N_SPECTRA, seed=50_001)
    # The training SEDs loaded once here, so that the timed calls fit rather than read the library file.
    seds = run_splits(library, split_seed=c.split_seed, holdout_sfh=c.holdout_sfh, train_seds=c.train_seds)["train"]
    return zfast.load_model(path, device), instrument.wavelength, flux, ivar, z, (library, seds)


@pytest.mark.parametrize("estimator", ["network", "hybrid-24", "full-fit"])
def test_predict_rate(benchmark, setup, estimator):
    model, wave, flux, ivar, z, templates = setup
    options = {"network": {}, "hybrid-24": {"templates": templates, "template_points": 24},
               "full-fit": {"templates": templates}}[estimator]  # fmt: skip
    result = benchmark.pedantic(lambda: zfast.predict(model, wave, flux, ivar, **options), rounds=1, iterations=1)
    key = "z" if estimator == "network" else "z_template"
    dz = (result[key] - z.double()).abs() / (1 + z.double())
    assert torch.isfinite(dz).all()
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["spectra_per_s"] = N_SPECTRA / benchmark.stats.stats.mean
    benchmark.extra_info["eta_0.01"] = float((dz > 0.01).double().mean())
