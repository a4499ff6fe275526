"""The network proposes, the templates confirm: the hybrid (``zfast.predict(templates=..., template_points=N)``)
against the network alone and the full template fit, on the same spectra, end to end through ``zfast.predict``.

    python benchmarks/studies/hybrid.py runs/quick/best.pt --n 1024 --points 8,16,24,40 --out hybrid.json

Spectra: the run's test SEDs under the table's four noise conditions (``paper_table.test_sets``: noiseless, white
SNR 10, SNR 3, Euclid-like; the same draws as the table), and the real galaxies of ``real_galaxies.py``
(``--draws`` redshifts per real spectrum; noiseless, SNR 10, SNR 3). Templates: the checkpoint's training SEDs
(``templates="training"``). Per set and estimator: η(|Δz|/(1+z) > 0.01), the median |Δz|/(1+z), MAE, spectra/s
(``zfast.predict`` end to end, one process; the network-only rate includes reading nothing: arrays in memory),
and for the hybrid the share of spectra whose true z lies within one coarse step of a scanned point ("scanned":
where the hybrid can find the truth at all) and how far each misses.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import paper_table  # noqa: E402
import real_galaxies  # noqa: E402
import zfast  # noqa: E402
from zfast import checkpoint  # noqa: E402
from zfast.data.instrument import Instrument  # noqa: E402
from zfast.data.sets import load_library  # noqa: E402
from zfast.hybrid import scan_points  # noqa: E402
from zfast.predict import FIT_STEP, edges_of  # noqa: E402
from zfast.template_fit import coarse_grid  # noqa: E402
from zfast.training import config as training_config  # noqa: E402

REAL_CONDITIONS = ("noiseless", "snr10", "snr3")


def score(z_true: torch.Tensor, z: torch.Tensor) -> dict:
    dz = ((z.double() - z_true.double()).abs() / (1 + z_true.double())).nan_to_num(1.0)
    return {"eta": float((dz > 0.01).double().mean()), "median_dz": float(dz.median()), "mae": float(dz.mean())}


def scanned_share(model, pz: torch.Tensor, z_true: torch.Tensor, n_points: int) -> float:
    grid = coarse_grid(model.z_range, FIT_STEP)
    scan = scan_points(pz, edges_of(model, pz.device), grid, FIT_STEP, n_points)
    near = (z_true.double()[:, None] - grid[None, :]).abs() <= FIT_STEP
    return float((near & scan).any(dim=1).double().mean())


def run_set(model, wave, flux, ivar, z_true, points, batch_size: int) -> dict:
    rows = {}
    started = time.perf_counter()
    network = zfast.predict(model, wave, flux, ivar, batch_size=batch_size, pz=True)
    rows["network"] = {**score(z_true, network["z"]), "spectra_per_s": len(z_true) / (time.perf_counter() - started)}
    started = time.perf_counter()
    full = zfast.predict(model, wave, flux, ivar, batch_size=batch_size, templates="training")
    rows["full fit"] = {**score(z_true, full["z_template"]), "spectra_per_s": len(z_true) / (time.perf_counter() - started)}
    for n in points:
        started = time.perf_counter()
        hybrid = zfast.predict(model, wave, flux, ivar, batch_size=batch_size, templates="training", template_points=n)
        rate = len(z_true) / (time.perf_counter() - started)
        same = float(((hybrid["z_template"] - full["z_template"]).abs() <= 1e-5).double().mean())
        rows[f"hybrid {n}"] = {**score(z_true, hybrid["z_template"]), "spectra_per_s": rate,
                               "scanned": scanned_share(model, network["pz"], z_true, n), "same_as_full_fit": same}  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=1024, help="spectra per simulated set")
    parser.add_argument("--draws", type=int, default=24, help="redshifts per real spectrum")
    parser.add_argument("--points", default="8,16,24,40", help="template_points values, comma-separated")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--sets", default="sim,real", help="sim, real or both")
    parser.add_argument("--n-refine", type=int, default=None, help="pairs refined beyond the valley's (zfast.predict.FIT_REFINE)")
    parser.add_argument("--min-mass", type=float, default=None,
                        help="the scan's mass floor (zfast.hybrid.MIN_MASS; 0: the top N points whatever their mass)")
    parser.add_argument("--prescan-seds", type=int, default=None,
                        help="zfast.hybrid.PRESCAN_SEDS (0: widened spectra scan every point with every SED)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="hybrid.json")
    args = parser.parse_args(argv)
    if args.min_mass is not None:
        zfast.hybrid.MIN_MASS = args.min_mass
    if args.prescan_seds is not None:
        zfast.hybrid.PRESCAN_SEDS = args.prescan_seds if args.prescan_seds > 0 else 10**9
    torch.manual_seed(args.seed)
    points = [int(p) for p in args.points.split(",")]
    if args.n_refine is not None:
        sys.modules["zfast.predict"].FIT_REFINE = args.n_refine
    model = zfast.load_model(args.checkpoint, "cpu")
    c = training_config.config_from_dict(checkpoint.read(args.checkpoint).config)
    report = {"checkpoint": str(args.checkpoint), "n": args.n, "points": points, "threads": torch.get_num_threads(),
              "n_refine": sys.modules["zfast.predict"].FIT_REFINE, "min_mass": zfast.hybrid.MIN_MASS,
              "prescan_seds": zfast.hybrid.PRESCAN_SEDS, "sets": {}}  # fmt: skip
    sets = {}
    if "sim" in args.sets:
        library = load_library(c.library)
        for (split, condition), (flux, ivar, z, _) in paper_table.test_sets(c, library, args.n).items():
            if condition == paper_table.EUCLID_TARGET:
                continue  # a subset of the Euclid-like set: nothing new for speed, few spectra for η
            noise = paper_table.CONDITIONS[condition]
            sets[f"{split}/{condition}"] = (Instrument.preset(c.instrument, noise).wavelength, flux, ivar, z)
    if "real" in args.sets:
        real = real_galaxies.load_real_spectra()
        for condition in REAL_CONDITIONS:
            instrument, _, z, flux, ivar = real_galaxies.observed_set(real, condition, args.draws, args.seed)
            sets[f"real/{condition}"] = (instrument.wavelength, flux, ivar, z)
    for name, (wave, flux, ivar, z) in sets.items():
        rows = run_set(model, wave, flux, ivar, z, points, args.batch_size)
        report["sets"][name] = rows
        for estimator, row in rows.items():
            extra = f"  scanned {100 * row['scanned']:.1f} %  same {100 * row['same_as_full_fit']:.1f} %" if "scanned" in row else ""
            print(f"{name:18s} {estimator:10s} η {100 * row['eta']:6.2f} %  median {row['median_dz']:.1e}  "
                  f"MAE {row['mae']:.1e}  {row['spectra_per_s']:7.1f} spectra/s{extra}", flush=True)  # fmt: skip
        pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
