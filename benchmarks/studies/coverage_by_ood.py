"""Is a model's P(z) calibrated per spectrum, or only on average? 68 % coverage and median 68 % width in quartiles
of ``ood_score`` at each noise level of the table, for its test SEDs and held-out recipe.

    python benchmarks/studies/coverage_by_ood.py --library lib10k.h5 runs/table/<run>/best.pt   (or an ensemble.pt)

The temperatures of ``zfast.calibration`` make coverage right per SNR bin on average over the validation SEDs; if
the widths do not follow how hard each spectrum is, coverage varies across kinds of spectra at one SNR, and a test
set with another mix (the held-out recipe) misses. ``ood_score`` (the distance of the network's features from the
training spectra's) serves as a per-spectrum label of kind; its quartiles are those of the test SEDs. Spectra: the
table's (``paper_table.test_sets``, 2048 per condition, its seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_table

import zfast
from zfast.calibration import spectrum_snr
from zfast.data.sets import load_library
from zfast.predict import predict_normalised
from zfast.training import config_from_dict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a table run's best.pt or an ensemble file")
    parser.add_argument("--library", required=True)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--holdout-sfh", default="lognormal")
    args = parser.parse_args(argv)
    model = zfast.load_model(args.checkpoint, "cpu")
    # (an ensemble's config is its first member's)
    c = dataclasses.replace(config_from_dict(model.config), library=args.library, holdout_sfh=args.holdout_sfh)
    library = load_library(args.library)
    sets = paper_table.test_sets(c, library, args.n)
    for condition in ("noiseless", "snr10", "snr3"):
        results = {}
        for split in ("test", "holdout"):
            flux, ivar, z, _ = sets[split, condition]
            r = predict_normalised(model, flux, snr=spectrum_snr(ivar))
            results[split] = (r["ood_score"], ((r["z_lo68"] <= z) & (z <= r["z_hi68"])).double(), r["z_hi68"] - r["z_lo68"])
        edges = results["test"][0].quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        print(f"{condition}: ood_score quartile edges (test SEDs) {', '.join(f'{e:.3g}' for e in edges.tolist())}")
        for split, (score, covered, width) in results.items():
            k = torch.bucketize(score, edges)
            cells = "  ".join(f"Q{j + 1} {covered[k == j].mean():.3f} / {width[k == j].median():.1e}" for j in range(4))
            print(f"  {split:8s} coverage {covered.mean():.3f}; per quartile coverage / median width: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
