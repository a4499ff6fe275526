"""How often zfast-predict raises flag_z_range, by true redshift, across everything the library can reach.

    python benchmarks/studies/outside_range.py runs/quick/best.pt [--n 3000] [--seed 11]

Draws spectra of the run's test SEDs at z uniform over the redshifts the library can put on the model's
instrument (NISP and the built-in library: 0.79-2.44), with the run's noise model, through ``zfast.predict``,
and prints the flagged share and the median ``p_outside`` per redshift interval.
"""

from __future__ import annotations

import argparse
import sys

import torch

import zfast
from zfast.data.sets import load_library
from zfast.training import config_from_dict, make_instrument, splits

EDGES = (1.0, 1.02, 1.1, 1.7, 1.78, 1.8, 1.82, 1.9, 2.0, 2.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    model = zfast.load_model(args.checkpoint, "cpu")
    c = config_from_dict(model.config)
    library = load_library(c.library)
    instrument = make_instrument(c)
    lo, hi = library.z_range(instrument.wave_edges)
    lo, hi = max(lo, 0.0) + 1e-6, hi - 1e-6
    g = torch.Generator().manual_seed(args.seed)
    test = splits(c, library)["test"]
    sed = test[torch.randint(0, test.numel(), (args.n,), generator=g)]
    z = lo + (hi - lo) * torch.rand(args.n, generator=g, dtype=torch.float64)
    flux, ivar = instrument.observe(library.redshift_resample(sed, z, instrument.wave_edges).double(), g)
    result = zfast.predict(model, instrument.wavelength, flux, ivar)
    below = [lo + (c.z_min - lo) * k / 4 for k in range(4)]
    edges = [e for e in (*below, *EDGES, hi) if lo <= e <= hi]
    print(f"{args.checkpoint}: trained range [{c.z_min}, {c.z_max}), outside output: {model.outside}")
    for a, b in zip(edges[:-1], edges[1:]):
        rows = (z >= a) & (z < b)
        if int(rows.sum()):
            print(f"z {a:.3f}-{b:.3f}  n={int(rows.sum()):5d}  flagged {result['flag_z_range'][rows].double().mean():.3f}"
                  f"  median p_outside {result['p_outside'][rows].median():.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
