"""zfast-predict: redshifts of the spectra in a file, from one checkpoint or an ensemble.

    zfast-predict --checkpoint runs/quick/best.pt --input spectra.fits --output z.csv [--pz]
"""

from __future__ import annotations

import argparse
import signal
import sys
import zipfile
from typing import Optional

from ..checkpoint import load_ensemble, load_model
from ..devices import pick_device
from ..flags import MIN_VALID
from ..io import format_names, predict_file
from . import one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zfast-predict", description="Redshifts of spectra in a file from a zfast-train checkpoint.", allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a zfast-train checkpoint (best.pt) or ensemble file; several: an ensemble, their P(z) averaged (binned estimators on the same bins)")
    parser.add_argument("--input", required=True,
                        help="spectra: a Euclid SIR tile or single-object file, a DESI coadd/spectra file, an SDSS spec file, or zfast's own layout "
                             "(.npz, .h5/.hdf5 or .fits with wavelength [M] (Å), flux [N, M], optional ivar [N, M] and id [N])")
    parser.add_argument("--format", default="auto", choices=("auto",) + format_names(),
                        help="the input's reader (auto: chosen from the file's content)")
    parser.add_argument("--sir-bad-bits", type=lambda text: int(text, 0), default=None,
                        help="Euclid SIR: MASK bits that make a pixel unusable (default: NOT_USE and ABS_FLUX and above, 0x...FFC1)")
    parser.add_argument("--output", required=True, help="the catalogue: .csv, .fits or .parquet (docs/catalogue.md)")
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
                        help="with --templates: fit only at the N coarse redshifts (of 400) where the network's P(z) "
                             "has the most mass (24 matched the full fit at SNR 10; docs/hybrid.md)")
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
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        device = pick_device(args.device)
        model = load_model(args.checkpoint[0], device) if len(args.checkpoint) == 1 else load_ensemble(args.checkpoint, device)
        predict_file(model, args.input, args.output, pz=args.pz, air=args.air, flux_unit=args.flux_unit,
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


if __name__ == "__main__":
    sys.exit(main())
