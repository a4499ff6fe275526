"""zfast-predict: redshifts of the spectra in a file, or in many files, from one checkpoint or an ensemble.

    zfast-predict --checkpoint runs/quick/best.pt --input spectra.fits --output z.csv [--pz]
    zfast-predict --checkpoint runs/quick/best.pt --input tiles/ --output cats/ [--merge all.parquet] [--resume] [--workers 4]
"""

from __future__ import annotations

import argparse
import signal
import sys
import zipfile
from pathlib import Path
from typing import Optional

from ..checkpoint import load_ensemble, load_model
from ..devices import pick_device, steady_allocator
from ..flags import MIN_VALID
from ..io import format_names, predict_file
from ..io.tables import TABLES
from ..survey.inputs import LIST_SUFFIXES, expand_inputs
from . import one_line

MAX_STATUS = 100  # many-input runs exit with the number of inputs that failed, at most this


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfast-predict", description="Redshifts of spectra in a file from a zfast-train checkpoint.", allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a zfast-train checkpoint (best.pt) or ensemble file; several: an ensemble, their P(z) averaged (binned estimators on the same bins)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="spectra files, folders of them, glob patterns or text files listing them (then --output is a folder); each: a Euclid SIR tile or single-object file, a DESI coadd/spectra file, an SDSS spec file, or zfast's own layout "
                             "(.npz, .h5/.hdf5 or .fits with wavelength [M] (Å), flux [N, M], optional ivar [N, M] and id [N])")
    parser.add_argument("--format", default="auto", choices=("auto",) + format_names(),
                        help="the input's reader (auto: chosen from the file's content)")
    parser.add_argument("--sir-bad-bits", type=lambda text: int(text, 0), default=None,
                        help="Euclid SIR: MASK bits that make a pixel unusable (default: NOT_USE and ABS_FLUX and above, 0x...FFC1)")
    parser.add_argument("--output", required=True,
                        help="the catalogue: .csv, .fits or .parquet (docs/catalogue.md); for several inputs a folder: one catalogue per "
                             "input and manifest.jsonl (docs/survey.md)")
    survey = parser.add_argument_group("many inputs (docs/survey.md)")
    survey.add_argument("--catalogue-format", choices=("fits", "csv", "parquet"), default=None,
                        help="format of the per-input catalogues (default: --merge's, else fits)")
    survey.add_argument("--merge", default=None, metavar="OUT", help="also write one catalogue of every input (.parquet for large runs), with an INPUT column")
    survey.add_argument("--resume", action="store_true", help="keep the inputs the folder's manifest says are complete; redo the rest")
    survey.add_argument("--workers", type=int, default=None, metavar="N", help="run on a local Dask cluster of N worker processes")
    survey.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:port)")
    parser.add_argument("--pz", action="store_true", help="add P(z) (a column of n_bins probabilities)")
    parser.add_argument("--air", action="store_true", help="the input wavelengths are in air (converted to vacuum)")
    parser.add_argument("--flux-unit", choices=("flam", "fnu"), default="flam", help="f_λ or f_ν (any scale)")
    parser.add_argument("--batch-size", type=int, default=1024, help="spectra per chunk")
    parser.add_argument("--min-valid", type=float, default=MIN_VALID, help="share of the model's pixels that must be valid")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--templates", default=None,
                        help="also fit each spectrum with every SED of a library (columns Z_TEMPLATE, ZERR_TEMPLATE, TEMPLATE_SED, TEMPLATE_RCHI2, DELTACHI2_TEMPLATE): "
                             "'training' (the checkpoint's training SEDs), 'default' (the built-in library) or a library file "
                             "(slow: every SED at every redshift; see docs/predict.md)")
    parser.add_argument("--template-points", type=int, default=None, metavar="N",
                        help="with --templates: fit only at (at most) the N coarse redshifts (of 400) where the network's "
                             "P(z) has the most mass, at all 400 where those miss more than 5 %% of it (24: the full "
                             "fit's accuracy or better at 1.1-2.7x its speed; docs/hybrid.md)")
    return parser


RUNTIME_ERRORS = (ValueError, TypeError, KeyError, OSError, EOFError, ImportError, MemoryError, RuntimeError, zipfile.BadZipFile)


class Terminated(BaseException):
    """SIGTERM: unwinds like an exception, so the temporary output is removed on the way out."""


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.template_points is not None and (args.templates is None or args.template_points < 1):
        parser.error(f"--template-points needs --templates and N >= 1, got {args.template_points}")
    if not (0.0 <= args.min_valid <= 1.0):
        parser.error(f"--min-valid must be within [0, 1], got {args.min_valid}")
    if args.workers is not None and (args.workers < 1 or args.scheduler is not None):
        parser.error("--workers needs N >= 1 and no --scheduler")
    steady_allocator()  # freed activations kept for the next batch (zfast.devices)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        single = single_input(args)
        if single is None:
            return _run_survey(args)
        device = pick_device(args.device)
        model = load_model(args.checkpoint[0], device) if len(args.checkpoint) == 1 else load_ensemble(args.checkpoint, device)
        predict_file(model, single, args.output, pz=args.pz, air=args.air, flux_unit=args.flux_unit,
                     batch_size=args.batch_size, min_valid=args.min_valid, overwrite=args.overwrite,
                     templates=args.templates, template_points=args.template_points, input_format=args.format,
                     reader_options={} if args.sir_bad_bits is None else {"sir_bad_bits": args.sir_bad_bits})  # fmt: skip
    except RUNTIME_ERRORS as error:  # one line naming the file or option, exit status 1
        raise SystemExit(one_line("zfast-predict", error)) from error
    except Terminated:
        print("zfast-predict: terminated; nothing written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def single_input(args) -> Optional[Path]:
    """The one spectra file of a one-file, one-table run; None for a many-input run (``zfast.survey``): several
    inputs, a folder, a glob or a list as --input, a folder (existing, or a name without a suffix) as --output,
    or any of the many-input options."""
    output = Path(args.output)
    if any(v not in (None, False) for v in (args.merge, args.resume, args.workers, args.scheduler, args.catalogue_format)):
        return None
    if not output.suffix or (output.is_dir() and output.suffix.lower() not in TABLES):
        return None  # a folder named like a table (z.csv/) is refused by predict_file as before
    if len(args.input) == 1 and not any(c in args.input[0] for c in "*?[") and not Path(args.input[0]).is_dir() \
            and not args.input[0].lower().endswith(LIST_SUFFIXES):  # fmt: skip
        return Path(args.input[0])  # missing, unreadable or an unknown output format: predict_file says so
    found = expand_inputs(args.input)
    if len(found) > 1:
        raise ValueError(f"--output {args.output}: {len(found)} input files: --output is then a folder for one catalogue per "
                         "input (--merge OUT writes one table of them all)")  # fmt: skip
    return found[0]


def _run_survey(args) -> int:
    """The many-input run (``zfast.survey.predict_files``); its errors go to ``main``'s one-line report."""
    from ..survey import predict_files

    try:
        if Path(args.output).suffix.lower() in TABLES and not Path(args.output).is_dir():
            raise ValueError(f"--output {args.output}: with several inputs (or --merge/--resume/--workers/--scheduler/--catalogue-format) "
                             "--output is a folder for one catalogue per input; --merge OUT writes one table of them all")  # fmt: skip
        form = args.catalogue_format or (Path(args.merge).suffix.lstrip(".") if args.merge else "fits")
        run = predict_files(args.checkpoint, args.input, args.output, catalogue_format=form, merge=args.merge, resume=args.resume,
                            overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler, device=args.device,
                            templates=args.templates, template_points=args.template_points, pz=args.pz, air=args.air,
                            flux_unit=args.flux_unit, batch_size=args.batch_size, min_valid=args.min_valid, input_format=args.format,
                            reader_options={} if args.sir_bad_bits is None else {"sir_bad_bits": args.sir_bad_bits})  # fmt: skip
    except Terminated:
        print(f"zfast-predict: terminated; finished inputs are in {args.output}/manifest.jsonl (--resume to go on)", file=sys.stderr)
        return 128 + signal.SIGTERM
    print(f"zfast-predict: {run.n_done:,} inputs done, {run.n_skipped:,} already complete, {run.n_failed:,} failed of "
          f"{run.n_inputs:,}; {run.n_spectra:,} spectra -> {args.output}", file=sys.stderr)  # fmt: skip
    if run.merged is not None:
        print(f"zfast-predict: merged catalogue -> {run.merged}", file=sys.stderr)
    elif args.merge is not None:
        print(f"zfast-predict: --merge not written: {run.n_failed} inputs failed (fix them and --resume)", file=sys.stderr)
    return min(run.n_failed, MAX_STATUS)


if __name__ == "__main__":
    sys.exit(main())
