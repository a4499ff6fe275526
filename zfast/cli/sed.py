"""zfast-sed: build rest-frame SED libraries with bagpipes.

    zfast-sed build --n 10000 --seed 0 --out lib.h5
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np

from ..data.lines import WEAK_LINE_EW
from ..sed.builder import build, provenance_path
from ..sed.recipe import WAVE_MAX, WAVE_MIN, BuildConfig
from . import one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zfast-sed", allow_abbrev=False,
        description="Build rest-frame SED libraries for zfast with bagpipes (GPL-3, optional: pip install 'zfast[sed]').",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser(
        "build", allow_abbrev=False,
        help="evaluate N SEDs of the recipe and save them (.h5, .npz or .fits) with a provenance file",
        description="Evaluate N bagpipes SEDs (rest 3500-10600 Å vacuum, dlnλ = 1/2000, each ÷ its median) and save "
        "them with their parameters and EW(Hα+[NII]); <stem>.provenance.json is written beside the library.",
    )
    sub.add_argument("--n", type=int, required=True, help="number of SEDs")
    sub.add_argument("--seed", type=int, default=0, help="seed of the parameter draws (default 0)")
    sub.add_argument("--out", required=True, help="output library: .h5/.hdf5 (h5py), .npz (compressed) or .fits")
    sub.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="processes (default: all cores; ~1 GB of memory each)")
    sub.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored flux (default float32)")
    sub.add_argument("--z-max", type=float, default=1.8,
                     help="highest target redshift: models are evaluated there, so no stars are older than the "
                          "universe then (default 1.8)")  # fmt: skip
    sub.add_argument("--wave-min", type=float, default=WAVE_MIN,
                     help=f"first rest pixel, vacuum Å (default {WAVE_MIN:g})")
    sub.add_argument("--wave-max", type=float, default=WAVE_MAX,
                     help=f"last rest pixel at most, vacuum Å (default {WAVE_MAX:g})")
    sub.add_argument("--chunk-size", type=int, default=50, help="SEDs per task sent to a worker (default 50)")
    sub.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv=None) -> int:
    """``zfast-sed build --n N --seed S --out FILE [...]``: see ``zfast-sed build --help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    config = BuildConfig(
        n=args.n, seed=args.seed, out=args.out, workers=args.workers, dtype=args.dtype, z_max=args.z_max,
        wave_min=args.wave_min, wave_max=args.wave_max, chunk_size=args.chunk_size,
    )  # fmt: skip
    try:
        library = build(config, command=shlex.join(["zfast-sed", *argv]), progress=not args.quiet)
    except (ValueError, ImportError, OSError) as error:
        raise SystemExit(one_line("zfast-sed", error)) from error
    ew = library.params["ew_halpha"]
    print(
        f"{config.out}: {library}; weak-line (EW(Hα+[NII]) < {WEAK_LINE_EW:g} Å) fraction "
        f"{np.mean(ew < WEAK_LINE_EW):.3f}; "
        f"provenance in {provenance_path(config.out)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
