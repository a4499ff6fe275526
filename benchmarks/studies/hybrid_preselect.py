"""An experiment for the hybrid's speed (issue 22): preselect with a few SEDs, confirm with all of them.

    python benchmarks/studies/hybrid_preselect.py runs/quick/best.pt --n 1024 --reps 100,300 --batch 1024

On the ~7,200-SED tilted timing library of ``hybrid_timing.py`` and white SNR 10 spectra of the checkpoint's test
SEDs (seed 50,001), per batch:
1. the network's P(z) names ``--points`` coarse points per spectrum (``zfast.hybrid.scan_points``), as the hybrid;
2. stage 1: ``library_fit_redshift`` with ``R`` representative SEDs (a seeded random subset of the library) at
   those points; the best coarse point by the SED-marginalised likelihood;
3. stage 2: the whole library at that point and its two neighbours only (its refinement as usual).
Against the hybrid (the whole library at every point) and the full fit on the same spectra: spectra/s and
η(>0.01). Not part of zfast.predict: a measurement of whether the idea pays.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import paper_table  # noqa: E402
from hybrid_timing import tilted_library  # noqa: E402
import zfast  # noqa: E402
from zfast import checkpoint  # noqa: E402
from zfast.data.instrument import Instrument  # noqa: E402
from zfast.data.sets import load_library, run_splits  # noqa: E402
from zfast.devices import steady_allocator  # noqa: E402
from zfast.hybrid import scan_points  # noqa: E402
from zfast.predict import FIT_STEP, edges_of, predict_normalised, prepare_spectra  # noqa: E402
from zfast.template_fit import coarse_grid, library_fit_redshift  # noqa: E402
from zfast.training import config as training_config  # noqa: E402
from zfast.training.streams import augmented  # noqa: E402


def fit(model, library, normalised, ivar, seds=None, scan=None):
    return library_fit_redshift(library, model.instrument, normalised.double(), ivar, seds, model.z_range, step=FIT_STEP,
                                n_refine=0, scan=scan)["z"]  # fmt: skip


def widened(best: torch.Tensor, k: int, reach: int = 1) -> torch.Tensor:
    """bool [B, K]: the coarse points within ``reach`` of each row's ``best``."""
    index = torch.arange(k)
    return (index[None, :] - best[:, None]).abs() <= reach


def run(kind: str, model, library, flux, ivar, wave, batch: int, points: int, reps: torch.Tensor | None) -> torch.Tensor:
    grid = coarse_grid(model.z_range, FIT_STEP)
    out = []
    for start in range(0, flux.shape[0], batch):
        rows = slice(start, start + batch)
        normalised, _, snr, ivar_n = prepare_spectra(model, wave, flux[rows], ivar[rows], return_ivar=True)
        if kind == "full":
            out.append(fit(model, library, normalised, ivar_n))
            continue
        probs = predict_normalised(model, normalised, True, snr)["pz"]
        scan = scan_points(probs, edges_of(model, probs.device), grid, FIT_STEP, points)
        if kind == "hybrid":
            out.append(fit(model, library, normalised, ivar_n, scan=scan))
            continue
        first = library_fit_redshift(library, model.instrument, normalised.double(), ivar_n, reps, model.z_range,
                                     step=FIT_STEP, n_refine=0, scan=scan)  # fmt: skip
        best = first["log_like_grid"].argmax(dim=1)
        out.append(fit(model, library, normalised, ivar_n, scan=widened(best, grid.numel())))
    return torch.cat(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--reps", default="100,300", help="representative SED counts to try")
    parser.add_argument("--no-full", action="store_true")
    args = parser.parse_args(argv)
    steady_allocator()
    model = zfast.load_model(args.checkpoint, "cpu")
    c = training_config.config_from_dict(checkpoint.read(args.checkpoint).config)
    library = load_library(c.library)
    train = run_splits(library, split_seed=c.split_seed, holdout_sfh=c.holdout_sfh, train_seds=c.train_seds)["train"]
    big = tilted_library(library, train)
    instrument = Instrument.preset(c.instrument, paper_table.CONDITIONS["snr10"])
    flux, ivar, z, _ = augmented(c, library, instrument, "test").fixed_set(args.n, seed=50_001)
    kinds = ([] if args.no_full else [("full", None)]) + [("hybrid", None)]
    g = torch.Generator().manual_seed(0)
    kinds += [(f"preselect-{r}", torch.randperm(len(big), generator=g)[: int(r)].sort().values) for r in args.reps.split(",")]
    print(f"{len(big)} SEDs, {args.n} spectra, batch {args.batch}, {args.points} points", flush=True)
    for kind, reps in kinds:
        started = time.perf_counter()
        zt = run(kind.split("-")[0], model, big, flux, ivar, instrument.wavelength, args.batch, args.points, reps)
        seconds = time.perf_counter() - started
        dz = (zt - z.double()).abs() / (1 + z.double())
        print(f"{kind:16s} {args.n / seconds:7.1f} spectra/s  η {100 * float((dz > 0.01).double().mean()):.2f} %  "
              f"median |dz|/(1+z) {float(dz.median()):.1e}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
