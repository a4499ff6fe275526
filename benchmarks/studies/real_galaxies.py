"""Real galaxies re-observed on the NISP grid: the gap between zfast's simulations and real spectra.

Every real spectrum (``load_real_spectra``) is put in its rest frame with its catalogue redshift, onto one
log-uniform rest grid (flux-conserving; masked pixels are carried as a validity fraction, never invented),
redshifted to z drawn uniformly over the part of [1, 1.8) where its valid pixels span the instrument's band, and
observed through ``zfast.Instrument`` (LSF, then noise: none, white at SNR 10 and 3, Euclid-like). An observed
pixel is masked (ivar 0) where less than half of it is covered by valid rest pixels, or where after the LSF
more than 20 % of its flux would come from masked ones. Conditions with ``mask_fraction`` also mask that share
of the pixels at random (scattered, as real SIR spectra's NOT_USE and ABS_FLUX pixels).

Scored per family, for each checkpoint given (``zfast.predict``), the template fit (``--templates``: the same
``library_fit_redshift`` as ``zfast-predict --templates``) and the true-template χ² (the real spectrum itself as
the template, ``template_fit_redshift``: the information limit of that mock).

The real spectra's own noise travels with them ("noiseless" means no noise added: a MaNGA spaxel keeps its own,
~2-3x below SNR 10 once binned to NISP pixels; the MaStar SSPs are models and have none).

Families (see ``data/README.md``): ``manga`` (MaNGA DAP test spaxels, real, z_cat 0.017-0.135),
``mastar-ssp`` (MaStar stellar populations, 1-9 Gyr: passive spectra built from real stars) and
``kinney-calzetti`` (the Kinney-Calzetti atlas: averaged integrated spectra of real galaxies, E to Sc and six
starbursts). ``FINAL`` spectra (the MaNGA multicomponent file, the SSPs of log Z/Z_sun = -0.70, the Sb and
starburst-3 templates) are kept out of every tuning decision and scored separately (``--final``).

    python benchmarks/studies/real_galaxies.py runs/quick/best.pt --templates default --out real.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

import zfast
from zfast.data.instrument import Instrument, NoiseModel
from zfast.data.sed_library import SEDLibrary
from zfast.metrics import redshift_metrics
from zfast.ops.rebin import pixel_edges, rebin_edges_reference
from zfast.template_fit import template_fit_redshift

DATA = pathlib.Path(__file__).resolve().parent / "data"
REST_GRID = (3000.0, 10600.0, 1e-4 * math.log(10.0))  # Å, Å, dln: MaNGA's own pixels (1e-4 dex)
MIN_SNR = 5.0  # median SNR per pixel below which a real spaxel is left out (too noisy to be a template)
MIN_OBSERVED_COVERAGE = 0.5
MIN_LSF_VALIDITY = 0.8
CONDITIONS = {
    "noiseless": dict(noise=NoiseModel("none")),
    "snr10": dict(noise=NoiseModel("white", snr=(10.0, 10.0))),
    "snr3": dict(noise=NoiseModel("white", snr=(3.0, 3.0))),
    "euclid": dict(noise=NoiseModel("euclid")),
    "snr10_masked10": dict(noise=NoiseModel("white", snr=(10.0, 10.0)), mask_fraction=0.1),
}
FINAL = ("manga/multicomp", "Z-0.70", "kinney-calzetti/sb", "kinney-calzetti/starb3")  # name fragments of the spectra kept for the final check


@dataclasses.dataclass
class RealSpectra:
    """S real rest-frame spectra on one grid: ``library`` (flux, masked pixels filled by interpolation so it is
    finite) and ``validity`` (1 on valid rest pixels, 0 on masked or uncovered ones), both ``SEDLibrary`` of the
    same grid, so one ``redshift_resample`` call observes either. ``z_cover`` [S, 2]: the redshifts within
    [1, 1.8) over which the valid pixels span the instrument's band."""

    names: list
    families: list
    z_catalogue: np.ndarray
    library: SEDLibrary
    validity: SEDLibrary
    rest_wavelength: np.ndarray
    rest_flux: np.ndarray
    rest_valid: np.ndarray

    def __len__(self):
        return len(self.names)

    def z_cover(self, instrument: Instrument, z_range=(1.0, 1.8)) -> np.ndarray:
        lo_edge, hi_edge = float(instrument.wave_edges[0]), float(instrument.wave_edges[-1])
        out = np.empty((len(self), 2))
        for s in range(len(self)):
            good = self.rest_wavelength[self.rest_valid[s] > 0.5]
            out[s] = max(z_range[0], hi_edge / good.max() - 1.0), min(z_range[1], lo_edge / good.min() - 1.0)
        return out

    def subset(self, keep) -> "RealSpectra":
        keep = np.asarray(keep)
        flux = self.rest_flux[keep]
        return _build([self.names[i] for i in keep], [self.families[i] for i in keep], self.z_catalogue[keep],
                      self.rest_wavelength, flux, self.rest_valid[keep])  # fmt: skip


def rest_grid() -> np.ndarray:
    lo, hi, dln = REST_GRID
    n = int(math.log(hi / lo) / dln)
    return np.exp(math.log(lo) + dln * (np.arange(n) + 0.5))


def to_rest_grid(wave_obs: np.ndarray, flux: np.ndarray, valid: np.ndarray, z: float, grid: np.ndarray):
    """(flux, validity) on ``grid`` (rest Å) of one observed spectrum at catalogue redshift ``z``: flux-conserving,
    f_λ,rest = (1+z)·f_λ,obs; validity = the share of each rest pixel covered by valid input (0 outside it)."""
    wave_rest = torch.as_tensor(wave_obs / (1.0 + z), dtype=torch.float64)
    edges_in, edges_out = pixel_edges(wave_rest), pixel_edges(torch.as_tensor(grid))
    v = torch.as_tensor(valid, dtype=torch.float64)
    f = torch.as_tensor(np.where(valid, flux, 0.0), dtype=torch.float64) * (1.0 + z)
    coverage = rebin_edges_reference(v, edges_in, edges_out, 0.0)
    integral = rebin_edges_reference(f, edges_in, edges_out, 0.0)
    rest = torch.where(coverage > 0, integral / coverage.clamp_min(1e-12), torch.nan)
    return rest.numpy(), coverage.numpy()


def _filled(flux: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """flux with pixels of validity <= 0.5 linearly interpolated from valid ones (ends held): finite for the
    library; those pixels are masked wherever they would be used (``observe``)."""
    good = valid > 0.5
    x = np.arange(flux.size)
    return np.interp(x, x[good], flux[good])


def _build(names, families, z_cat, grid, flux, valid) -> RealSpectra:
    flux = np.stack([_filled(f, v) for f, v in zip(flux, valid)])
    library = SEDLibrary(grid, flux)
    validity = SEDLibrary(grid, np.maximum(valid, 1e-30))  # all-zero rows are refused; 1e-30 reads as invalid
    return RealSpectra(list(names), list(families), np.asarray(z_cat, dtype=np.float64), library, validity, grid, flux,
                       valid)  # fmt: skip


def _manga(path: pathlib.Path, tag: str, grid: np.ndarray):
    from astropy.io import fits

    with fits.open(path) as hdus:
        wave = hdus["WAVE"].data.astype(np.float64)
        flux, ivar = hdus["FLUX"].data.astype(np.float64), hdus["IVAR"].data.astype(np.float64)
        mask, z = hdus["MASK"].data, hdus["Z"].data.astype(np.float64)
    for k in range(flux.shape[0]):
        valid = (mask[k] == 0) & (ivar[k] > 0) & np.isfinite(flux[k])
        snr = np.median(flux[k][valid] * np.sqrt(ivar[k][valid])) if valid.any() else 0.0
        if snr < MIN_SNR:
            continue
        rest, cover = to_rest_grid(wave, flux[k], valid, z[k], grid)
        yield f"manga/{tag}/{k}", "manga", z[k], rest, cover


def _mastar(folder: pathlib.Path, grid: np.ndarray):
    from astropy.io import fits

    for path in sorted(folder.glob("MaStar-SSP-*.fits.gz")):
        with fits.open(path) as hdus:
            header, flux = hdus[0].header, hdus[0].data.astype(np.float64)
        wave = 10.0 ** (header["CRVAL1"] + header["CDELT1"] * np.arange(flux.size))  # vacuum, rest frame
        rest, cover = to_rest_grid(wave, flux, np.isfinite(flux) & (flux > 0), 0.0, grid)
        yield "mastar-ssp/" + path.name.replace("MaStar-SSP-", "").replace(".fits.gz", ""), "mastar-ssp", 0.0, rest, cover


def _kinney_calzetti(folder: pathlib.Path, grid: np.ndarray):
    from astropy.io import fits

    for path in sorted(folder.glob("*_template.fits")):
        with fits.open(path) as hdus:
            table = hdus[1].data
            wave, flux = table["WAVELENGTH"].astype(np.float64), table["FLUX"].astype(np.float64)
        keep = wave > 2500  # the IUE part is far bluer than NISP reaches; 5 Å bins, rest frame
        rest, cover = to_rest_grid(wave[keep], flux[keep], np.isfinite(flux[keep]) & (flux[keep] > 0), 0.0, grid)
        yield "kinney-calzetti/" + path.name.replace("_template.fits", ""), "kinney-calzetti", 0.0, rest, cover


def load_real_spectra(data=DATA) -> RealSpectra:
    """Every real spectrum of ``data`` (see the module docstring) as a ``RealSpectra``."""
    data, grid = pathlib.Path(data), rest_grid()
    rows = []
    manga = data / "mangadap"
    for name, tag in (("MaNGA_test_spectra.fits.gz", "test"), ("MaNGA_multicomp_test_spectra.fits.gz", "multicomp")):
        if (manga / name).exists():
            rows += list(_manga(manga / name, tag, grid))
    if (manga / "mastar_ssp_v1.0").is_dir():
        rows += list(_mastar(manga / "mastar_ssp_v1.0", grid))
    if (data / "kinney_calzetti").is_dir():
        rows += list(_kinney_calzetti(data / "kinney_calzetti", grid))
    if not rows:
        raise FileNotFoundError(f"no real spectra under {data}")
    names, families, z, flux, valid = zip(*rows)
    return _build(names, families, z, grid, np.stack(flux), np.stack(valid))


def is_final(name: str) -> bool:
    return any(fragment in name for fragment in FINAL)


def draw(real: RealSpectra, instrument: Instrument, n_draws: int, seed: int, z_range=(1.0, 1.8)):
    """(spectrum index [S·n], z [S·n]): ``n_draws`` redshifts per spectrum, uniform over its ``z_cover``."""
    cover = torch.as_tensor(real.z_cover(instrument, z_range))
    if bool((cover[:, 1] <= cover[:, 0]).any()):
        bad = [real.names[i] for i in torch.nonzero(cover[:, 1] <= cover[:, 0]).flatten().tolist()]
        raise ValueError(f"spectra covering the band at no z in {z_range}: {bad}")
    g = torch.Generator().manual_seed(seed)
    index = torch.arange(len(real)).repeat_interleave(n_draws)
    u = torch.rand(index.numel(), generator=g, dtype=torch.float64)
    return index, cover[index, 0] + u * (cover[index, 1] - cover[index, 0])


def observe(real: RealSpectra, instrument: Instrument, index: torch.Tensor, z: torch.Tensor, seed: int,
            mask_fraction: float = 0.0):  # fmt: skip
    """(flux, ivar) [B, M] on ``instrument``'s pixels: the real spectra ``index`` at ``z`` through its LSF and
    noise, with pixels masked as the module docstring says."""
    g = torch.Generator().manual_seed(seed)
    edges = instrument.wave_edges
    clean = real.library.redshift_resample(index, z, edges, check=False).double()
    # f_obs = f_rest / (1+z): the validity fraction comes back divided by (1+z).
    coverage = real.validity.redshift_resample(index, z, edges, check=False).double() * (1.0 + z[:, None])
    flux, ivar = instrument.observe(clean, g)
    bad = (coverage < MIN_OBSERVED_COVERAGE) | (instrument.convolve_lsf(coverage) < MIN_LSF_VALIDITY)
    if mask_fraction > 0:
        bad |= torch.rand(flux.shape, generator=g, dtype=torch.float64) < mask_fraction
    ivar = torch.where(bad, 0.0, ivar.expand_as(flux).clone())
    return flux, ivar


def true_template_z(real: RealSpectra, instrument: Instrument, index, flux, ivar, z_range=(1.0, 1.8)) -> torch.Tensor:
    """The information limit: each mock fitted with its own real spectrum (``template_fit_redshift``)."""
    return template_fit_redshift(real.library, instrument, index, flux, ivar, z_range)


def scores(z_true: torch.Tensor, z_pred: torch.Tensor, families: list) -> dict:
    """redshift_metrics overall and per family."""
    fam = np.asarray(families)
    out = {"all": redshift_metrics(z_true, z_pred)}
    for name in sorted(set(families)):
        keep = torch.as_tensor(fam == name)
        out[name] = redshift_metrics(z_true[keep], z_pred[keep])
    return out


def observed_set(real: RealSpectra, condition: str, n_draws: int, seed: int) -> tuple:
    """(instrument, index, z, flux, ivar): ``n_draws`` redshifts per real spectrum (``draw``, ``seed``) observed under
    ``CONDITIONS[condition]`` (``observe``, ``seed + 1``): the one way every study makes its real-galaxy sets."""
    setting = CONDITIONS[condition]
    instrument = Instrument.preset("euclid-nisp-red", setting["noise"])
    index, z = draw(real, instrument, n_draws, seed)
    flux, ivar = observe(real, instrument, index, z, seed + 1, setting.get("mask_fraction", 0.0))
    return instrument, index, z, flux, ivar


def run_condition(real: RealSpectra, condition: str, checkpoints: list, templates, n_draws: int, seed: int,
                  chi2: bool = True) -> dict:  # fmt: skip
    instrument, index, z, flux, ivar = observed_set(real, condition, n_draws, seed)
    families = [real.families[i] for i in index.tolist()]
    wave = instrument.wavelength
    result = {"n": int(index.numel())}
    for k, checkpoint in enumerate(checkpoints):
        out = zfast.predict(checkpoint, wave, flux, ivar, templates=templates if k == 0 else None)
        result[f"network:{checkpoint}"] = scores(z, out["z"], families)
        result[f"network:{checkpoint}"]["_z"] = out["z"].tolist()
        if k == 0 and templates is not None:
            result["template_fit"] = scores(z, out["z_template"], families)
            result["template_fit"]["_z"] = out["z_template"].tolist()
    if chi2:
        z_chi2 = true_template_z(real, instrument, index, flux, ivar)
        result["chi2_true_template"] = scores(z, z_chi2, families)
    result["_z_true"] = z.tolist()
    result["_index"] = index.tolist()
    return result


def table(results: dict, key_filter=lambda k: True) -> str:
    """Markdown: η(>0.01) per estimator (rows) and condition (columns), per family in brackets."""
    conditions = [c for c in CONDITIONS if c in results]
    estimators = []
    for c in conditions:
        estimators += [k for k in results[c] if not k.startswith("_") and k != "n" and k not in estimators]
    lines = ["| η(>0.01) | " + " | ".join(conditions) + " |", "| --- |" + " ---: |" * len(conditions)]
    for e in estimators:
        cells = []
        for c in conditions:
            s = results[c].get(e)
            if s is None:
                cells.append("")
                continue
            fams = ", ".join(f"{f} {100 * s[f]['outlier_01']:.1f}" for f in s if f not in ("all", "_z"))
            cells.append(f"{100 * s['all']['outlier_01']:.1f} % ({fams})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="zfast-train checkpoints to score")
    parser.add_argument("--templates", default=None, help='template fit library for the first checkpoint ("default", "training", a file)')
    parser.add_argument("--draws", type=int, default=48, help="redshift draws per real spectrum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated: " + ", ".join(CONDITIONS))
    parser.add_argument("--final", action="store_true", help="score the spectra kept for the final check instead")
    parser.add_argument("--no-chi2", action="store_true", help="skip the true-template χ²")
    parser.add_argument("--out", help="write the results (json) here")
    args = parser.parse_args(argv)
    real = load_real_spectra()
    keep = [i for i, n in enumerate(real.names) if is_final(n) == args.final]
    real = real.subset(keep)
    print(f"{len(real)} real spectra ({'final check' if args.final else 'tuning set'}): "
          + ", ".join(f"{f} {real.families.count(f)}" for f in sorted(set(real.families))), file=sys.stderr)  # fmt: skip
    results = {"spectra": real.names, "draws": args.draws, "seed": args.seed, "final": args.final}
    for condition in args.conditions.split(","):
        started = time.perf_counter()
        results[condition] = run_condition(real, condition, args.checkpoints, args.templates, args.draws,
                                           args.seed + 1000 * list(CONDITIONS).index(condition), chi2=not args.no_chi2)  # fmt: skip
        print(f"[{condition}] {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
