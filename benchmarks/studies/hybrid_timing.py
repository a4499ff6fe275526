"""Timing only: the hybrid and the full template fit with a ~7,200-SED library (the checkpoint's training SEDs x 9
continuum tilts (λ/1 µm)^a, a in -0.4..0.4), on spectra of its test SEDs (white SNR 10 unless ``--condition``); spectra/s and η per run.

    python benchmarks/studies/hybrid_timing.py runs/quick/best.pt --n 4096 full:1024:1024 hybrid:1024:1024 hybrid:4096:4096

Each run is KIND:BATCH:SPECTRA (KIND full or hybrid; hybrid scans ``--points`` coarse points). The tilted library
stands in for the table's 7,202-SED ``lib10k.h5`` where that is not at hand: same sizes and costs, not its η
(docs/hybrid.md).
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import paper_table  # noqa: E402
import zfast  # noqa: E402
from zfast import checkpoint  # noqa: E402
from zfast.data.instrument import Instrument  # noqa: E402
from zfast.data.sed_library import SEDLibrary  # noqa: E402
from zfast.data.sets import load_library, run_splits  # noqa: E402
from zfast.training import config as training_config  # noqa: E402
from zfast.training.streams import augmented  # noqa: E402


def tilted_library(library: SEDLibrary, seds: torch.Tensor, n_tilts: int = 9) -> SEDLibrary:
    wave = library.wavelength
    base = library.flux[seds]
    tilts = torch.linspace(-0.4, 0.4, n_tilts, dtype=torch.float64)
    return SEDLibrary(wave, torch.cat([base * (wave / 1e4) ** a for a in tilts]), dln=library.dln)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("runs", nargs="+", help="KIND:BATCH:SPECTRA, KIND full or hybrid")
    parser.add_argument("--n", type=int, default=4096, help="spectra drawn (runs use the first SPECTRA)")
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--tilts", type=int, default=9)
    parser.add_argument("--min-mass", type=float, default=None,
                        help="the scan's mass floor (zfast.hybrid.MIN_MASS; 0: the top --points whatever their mass)")
    parser.add_argument("--condition", default="snr10", help="noise of the spectra: a paper_table condition (snr10, snr3, ...)")
    parser.add_argument("--max-missing", type=float, default=None, help="zfast.hybrid.MAX_MISSING (1: never widen)")
    parser.add_argument("--prescan-seds", type=int, default=None,
                        help="zfast.hybrid.PRESCAN_SEDS (0: widened spectra scan every point with every SED)")
    parser.add_argument("--prescan-points", type=int, default=None, help="zfast.hybrid.PRESCAN_POINTS")
    args = parser.parse_args(argv)
    if args.min_mass is not None:
        zfast.hybrid.MIN_MASS = args.min_mass
    if args.max_missing is not None:
        zfast.hybrid.MAX_MISSING = args.max_missing
    if args.prescan_seds is not None:
        zfast.hybrid.PRESCAN_SEDS = args.prescan_seds if args.prescan_seds > 0 else 10**9
    if args.prescan_points is not None:
        zfast.hybrid.PRESCAN_POINTS = args.prescan_points
    model = zfast.load_model(args.checkpoint, "cpu")
    c = training_config.config_from_dict(checkpoint.read(args.checkpoint).config)
    library = load_library(c.library)
    train = run_splits(library, split_seed=c.split_seed, holdout_sfh=c.holdout_sfh, train_seds=c.train_seds)["train"]
    big = tilted_library(library, train, args.tilts)
    print(f"{len(big)} SEDs", flush=True)
    instrument = Instrument.preset(c.instrument, paper_table.CONDITIONS[args.condition])
    flux, ivar, z, _ = augmented(c, library, instrument, "test").fixed_set(args.n, seed=50_001)
    for run in args.runs:
        kind, batch, m = run.split(":")
        m, batch = int(m), int(batch)
        started = time.perf_counter()
        result = zfast.predict(model, instrument.wavelength, flux[:m], ivar[:m], templates=big, batch_size=batch,
                               template_points=None if kind == "full" else args.points)  # fmt: skip
        seconds = time.perf_counter() - started
        dz = (result["z_template"] - z[:m].double()).abs() / (1 + z[:m].double())
        print(f"{kind} batch {batch} on {m}: {m / seconds:.1f} spectra/s  η {100 * float((dz > 0.01).double().mean()):.2f} %",
              flush=True)  # fmt: skip
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
