"""Spectra given without ivar: does the estimated noise (``zfast.predict.estimated_ivar``) calibrate P(z) as the
true ivar does, whatever the flux units?

    python benchmarks/studies/without_ivar.py runs/quick/best.pt [--n 2048] [--seed 7]

Draws test-SED spectra of the checkpoint's own run (its instrument and training noise), predicts them with their
ivar, without it, and without it at 1000x the flux, and prints the 68 % coverage, the median z_err and η.
"""

from __future__ import annotations

import argparse

import torch

import zfast
from zfast import checkpoint
from zfast.data.sets import load_library
from zfast.training.config import config_from_dict
from zfast.training.streams import augmented, make_instrument


def scores(out: dict, z: torch.Tensor) -> str:
    covered = ((out["z_lo68"] <= z) & (z <= out["z_hi68"])).double().mean().item()
    eta = ((out["z"] - z).abs() / (1 + z) > 0.01).double().mean().item()
    return f"68 % coverage {covered:.3f}  median z_err {out['z_err'].median().item():.4g}  eta {eta:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    model = zfast.load_model(args.checkpoint, "cpu")
    c = config_from_dict(checkpoint.read(args.checkpoint).config)
    library = load_library(c.library)
    flux, ivar, z, _ = augmented(c, library, make_instrument(c), "test").fixed_set(args.n, seed=args.seed)
    wave = model.instrument.wavelength
    z = z.double()
    rows = {
        "with ivar": zfast.predict(model, wave, flux.double(), ivar.double()),
        "without ivar": zfast.predict(model, wave, flux.double().masked_fill(ivar == 0, float("nan"))),
        "without ivar, flux x 1000": zfast.predict(model, wave, 1000 * flux.double().masked_fill(ivar == 0, float("nan"))),
    }
    for name, out in rows.items():
        print(f"{name:28s} {scores(out, z)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
