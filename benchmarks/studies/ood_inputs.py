"""How often zfast-predict raises flag_ood: on galaxies like the training ones, and on inputs that are not.

    python benchmarks/studies/ood_inputs.py runs/quick/best.pt [--n 2000] [--seed 12]

Galaxies: the run's test SEDs (never trained on) at z ~ U[z_min, z_max) with the run's noise model, the same
without noise, and with the Euclid-like noise model. Non-galaxies (100 each, on the model's pixels, with
white noise of the given per-pixel SNR where marked): pure Gaussian noise; a steep power law (λ⁶ shape,
SNR 100); a square wave (period 50 px); sinusoids of random period (2-40 cycles over the band); Gaussian random
walks; blackbodies of 3,000-30,000 K (stars; SNR 30); a flat continuum with 1 % of pixels spiking 20x
(cosmic rays; SNR 20); a flat continuum at SNR 3 (a featureless faint source: arguably a galaxy). Everything
goes through ``zfast.predict`` with ivar, and the flagged share (and median ``ood_score``) is printed per set.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

import zfast
from zfast.data import Instrument, NoiseModel
from zfast.data.sets import load_library
from zfast.training import config_from_dict, make_instrument, splits


def non_galaxies(wavelength: torch.Tensor, n: int, g: torch.Generator) -> dict:
    """name -> (flux [n, M], per-pixel SNR or None for noise-free shapes), float64."""
    m = wavelength.numel()
    x = (wavelength - wavelength[0]) / (wavelength[-1] - wavelength[0])
    hc_over_k = 1.4388e8  # Å K
    temperatures = torch.linspace(3000.0, 30000.0, n, dtype=torch.float64)
    blackbody = 1.0 / (wavelength[None] ** 5 * torch.expm1(hc_over_k / (wavelength[None] * temperatures[:, None])))
    cycles = 2.0 + 38.0 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return {
        "gaussian noise": (torch.randn(n, m, generator=g, dtype=torch.float64), None),
        "power law": ((0.05 + x[None].expand(n, m)) ** 6, 100.0),
        "square wave": (torch.where(torch.arange(m) % 50 < 25, 1.0, 5.0).double().expand(n, m).clone(), None),
        "sinusoids": (1.0 + 0.5 * torch.sin(2 * math.pi * cycles * x[None]), 30.0),
        "random walks": (torch.cumsum(torch.randn(n, m, generator=g, dtype=torch.float64), dim=1), None),
        "blackbodies": (blackbody / blackbody.mean(dim=1, keepdim=True), 30.0),
        "cosmic rays": (1.0 + 19.0 * (torch.rand(n, m, generator=g) < 0.01).double(), 20.0),
        "flat, SNR 3": (torch.ones(n, m, dtype=torch.float64), 3.0),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=2000, help="galaxies per galaxy set")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    model = zfast.load_model(args.checkpoint, "cpu")
    c = config_from_dict(model.config)
    library = load_library(c.library)
    g = torch.Generator().manual_seed(args.seed)
    test = splits(c, library)["test"]
    sed = test[torch.randint(0, test.numel(), (args.n,), generator=g)]
    z = c.z_min + (c.z_max - c.z_min) * torch.rand(args.n, generator=g, dtype=torch.float64)
    sets = {}
    for name, noise in (("galaxies, training noise", None), ("galaxies, noiseless", NoiseModel("none")),
                        ("galaxies, Euclid-like noise", NoiseModel("euclid"))):  # fmt: skip
        instrument = make_instrument(c) if noise is None else Instrument.preset(c.instrument, noise)
        raw = library.redshift_resample(sed, z, instrument.wave_edges).double()
        sets[name] = instrument.observe(raw, g)
    wavelength = model.instrument.wavelength.double()
    for name, (flux, snr) in non_galaxies(wavelength, 100, g).items():
        if snr is None:
            sets[name] = (flux, None)
            continue
        sigma = flux.abs().mean(dim=1, keepdim=True) / snr
        sets[name] = (
            flux + sigma * torch.randn(flux.shape, generator=g, dtype=torch.float64),
            sigma.expand_as(flux) ** -2,
        )
    print(
        f"{args.checkpoint}: {c.model}, {c.estimator}, trained on {c.noise} noise; OOD threshold "
        f"{model.stats.ood.threshold if model.stats.ood is not None else math.nan:.3g}"
    )
    for name, (flux, ivar) in sets.items():
        result = zfast.predict(model, wavelength, flux, ivar)
        print(f"{name:28s} n={flux.shape[0]:5d}  flag_ood {100 * result['flag_ood'].double().mean():5.1f} %"
              f"  median ood_score {result['ood_score'].median():8.3g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
