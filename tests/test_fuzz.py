"""A seeded fuzz harness (issue "Reliability"): random shapes, NaN patterns, grids, dtypes and damaged files through
``zfast.predict``, ``zfast.rebin`` and ``zfast-predict`` (``zfast.cli.predict.main``, in-process). Each target runs
ZFAST_FUZZ_CASES cases (default 400; the issue's run: 2000), case i drawn from ``default_rng([ZFAST_FUZZ_SEED, target,
i])`` alone: a failure prints the command that replays it. What must hold (docs/promises.md): only the documented
error types; zfast-predict exits 0 with a full table, or 1/2 with one line on stderr, no traceback, nothing left
behind; a case valid throughout succeeds; one row per spectrum, in order; z in the model's range; no NaN in a row
without a flag. The regressions at the end were minimised from fuzz cases (each failed before its fix)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import zfast
from zfast import checkpoint
from zfast.calibration import SNR_EDGES
from zfast.cli import predict as predict_cli
from zfast.survey.inputs import spectra_stem
from zfast.flags import FLAGS, any_flag
from zfast.io.tables import CATALOGUE
from zfast.io.tables import id_text
from zfast.ops.rebin import covered_bins, scaled_edges
from zfast.training.config import TrainConfig

try:  # optional extras: without them, the files of those formats are written as .npz
    import h5py
    from astropy.io import fits
except ImportError:
    h5py = fits = None

SEED = int(os.environ.get("ZFAST_FUZZ_SEED", "20250101"))
CASES = int(os.environ.get("ZFAST_FUZZ_CASES", "400"))
CASE_SECONDS = 30.0  # a case running longer is a hang
DOCUMENTED = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)
FINITE_COLUMNS = ("z", "z_err", "z_lo68", "z_hi68", "valid_fraction")  # finite in every unflagged row
NOT_NAN_COLUMNS = FINITE_COLUMNS + ("snr",)  # snr is +inf for a noiseless spectrum
SCALES = (1.0, 1.0, 1e300, -1e300, 1e-300, 1e-30, 1e30, 3e38)


class Hang(BaseException):
    """A case over CASE_SECONDS (a BaseException: nothing on the way catches it)."""


def case_rng(target: int, index: int) -> np.random.Generator:
    return np.random.default_rng([SEED, target, index])


def alarm(signum, frame):
    raise Hang(f"the case ran over {CASE_SECONDS} s")


def run_case(test: str, index: int, shown, body, *args) -> None:
    """``body(*args)`` within CASE_SECONDS; a failure (a wrong exception, a broken invariant, a hang) re-raised
    naming the case, what it was (``shown``: a dict of arguments, or text) and the command that replays it."""
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        body(*args)
    except (Exception, Hang) as error:
        if isinstance(shown, dict):
            shown = {k: (type(v).__name__, str(getattr(v, "dtype", "")), np.shape(v)) if hasattr(v, "__len__") and not isinstance(v, str)
                     else v for k, v in shown.items()}  # fmt: skip
        replay = f"ZFAST_FUZZ_SEED={SEED} ZFAST_FUZZ_CASES={index + 1} python -m pytest 'tests/test_fuzz.py::{test}[{index}]'"
        raise AssertionError(f"case {index} ({shown}): {type(error).__name__}: {error}\nreplay: {replay}") from error
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained paper-CNN checkpoints with a per-SNR calibration (as in tests/test_reliability.py), without the
    "outside the range" output (p_outside NaN, so most rows unflagged) and with it."""
    paths = []
    for outside_prob in (0.0, 0.1):
        torch.manual_seed(0)
        config = dataclasses.asdict(TrainConfig(model="paper-cnn", n_bins=80, outside_prob=outside_prob))
        network, _ = checkpoint.build_network(config)
        calibration = {"snr_edges": torch.tensor(SNR_EDGES, dtype=torch.float64), "peak_edges": torch.tensor([0.0, math.inf], dtype=torch.float64),
                       "temperatures": torch.linspace(0.5, 2.0, len(SNR_EDGES) - 1, dtype=torch.float64)[None]}  # fmt: skip
        paths.append(tmp_path_factory.mktemp("fuzz_models") / f"outside_{outside_prob}.pt")
        checkpoint.save(paths[-1], checkpoint.RunCheckpoint(config, network.state_dict(), stats=checkpoint.PredictStats(calibration=calibration)))
    return paths


@pytest.fixture(scope="module")
def models(checkpoints):
    return [zfast.load_model(path, "cpu") for path in checkpoints]


# --- values, masks, grids and dtypes -------------------------------------------------------------------------------
def random_flux(rng, shape) -> np.ndarray:
    """float64 flux: continuum, noise and lines at a random scale (±1e300 ... 1e-300), or a degenerate spectrum."""
    kind = rng.choice(["noisy", "noisy", "noisy", "constant", "zero", "negative", "spiky"])
    if kind in ("constant", "zero"):
        return np.full(shape, rng.choice(SCALES) if kind == "constant" else 0.0)
    flux = 1.0 + 0.3 * rng.standard_normal(shape)
    if kind == "spiky" and flux.size:
        flux.flat[rng.integers(0, flux.size, 5)] += 50.0
    flux = (-flux if kind == "negative" else flux) * rng.choice(SCALES)
    if flux.ndim == 2 and flux.shape[0] > 1 and rng.random() < 0.3:
        flux[rng.integers(0, flux.shape[0])] = rng.choice(SCALES)  # one constant row
    return flux


def poke(rng, values: np.ndarray, bad: float) -> np.ndarray:
    """``values`` with ``bad`` written in a random pattern: scattered, whole rows, whole columns, half, all."""
    pattern = rng.choice(["none", "scattered", "row", "column", "half", "all"], p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    if values.size == 0 or values.ndim == 0 or pattern == "none":
        return values
    rows = values.copy().reshape(-1, values.shape[-1])
    where = {"row": lambda: rng.integers(0, rows.shape[0]), "column": lambda: (slice(None), rng.integers(0, rows.shape[1], max(1, rows.shape[1] // 10))),
             "half": lambda: (slice(None), slice(rows.shape[1] // 2)), "all": lambda: Ellipsis}  # fmt: skip
    if pattern == "scattered":
        rows.flat[rng.integers(0, rows.size, max(1, rows.size // 20))] = bad
    else:
        rows[where[pattern]()] = bad
    return rows.reshape(values.shape)


def convert(rng, array: np.ndarray, dtype: str, torch_share: float = 0.4):
    """``array`` as ``dtype`` (a numpy name, or "list", "object", "str", "scalar"), as numpy or (numeric) torch."""
    if dtype in ("list", "scalar"):
        return array.tolist() if dtype == "list" else (float(array.flat[0]) if array.size else 1.0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out = np.asarray(np.asarray(array).astype(object if dtype == "object" else dtype))
    return torch.from_numpy(out) if out.dtype.kind in "fiubc" and rng.random() < torch_share else out


def pick(rng, clean: tuple, odd: tuple, p_odd: float) -> tuple:
    """(a choice, whether it is one of ``clean``): one of ``odd`` with probability ``p_odd``."""
    if odd and rng.random() < p_odd:
        return odd[rng.integers(0, len(odd))], False
    return clean[rng.integers(0, len(clean))], True


def random_grid(rng, base: np.ndarray, n_spectra: int) -> tuple:
    """(wavelength [N] or [B, N] float64, whether it is valid and covers all of ``base``, a model's pixels)."""
    lo, hi = float(base[0]), float(base[-1])
    kind = rng.choice(["model", "linear", "log", "rows", "rows_shifted", "partial", "outside", "decreasing",
                       "duplicate", "nonfinite", "short", "extreme"])  # fmt: skip
    n = int(rng.choice([2, 3, 17, 200, 511, 512, 513, 1300]))
    wide = (lo - 20.0 - rng.uniform(0, 900), hi + 20.0 + rng.uniform(0, 900))
    linear = np.linspace(*wide, n)
    if kind in ("model", "linear", "log"):
        return {"model": base.copy(), "linear": linear, "log": np.geomspace(*wide, n)}[kind], True
    if kind in ("rows", "rows_shifted"):  # one grid per spectrum
        shift = rng.uniform(-15.0, 15.0, (n_spectra, 1)) if kind == "rows_shifted" else 0.0
        return np.tile(linear, (n_spectra, 1)) + shift, n_spectra > 0
    if kind == "partial":
        start = rng.uniform(lo - 2000.0, hi)
        return np.linspace(start, start + rng.uniform(100.0, 9000.0), n), False
    if kind == "outside":  # another range, nm, or Å x 1e4
        return np.linspace(*[(3000.0, 9000.0), (lo / 10, hi / 10), (lo * 1e4, hi * 1e4)][rng.integers(0, 3)], n), False
    if kind in ("duplicate", "nonfinite"):
        linear[n // 2] = linear[n // 2 - 1] if kind == "duplicate" else rng.choice([np.nan, np.inf, -np.inf])
    extreme = np.linspace(1e307, 1.7e308, n) if rng.random() < 0.5 else np.linspace(0.0, 1e-300, n)
    return {"decreasing": linear[::-1].copy(), "short": linear[: rng.integers(0, 2)], "extreme": extreme}.get(kind, linear), False


# --- zfast.predict -------------------------------------------------------------------------------------------------
def predict_case(rng, model) -> tuple[dict, bool]:
    """(the arguments of one ``zfast.predict`` call, whether they are valid throughout: then it must succeed)."""
    n_spectra = int(rng.choice([1, 1, 2, 3, 5, 8, 0]))
    wave, ok = random_grid(rng, model.instrument.wavelength.numpy(), n_spectra)
    shape = (n_spectra, wave.shape[-1])
    if n_spectra == 1 and wave.ndim == 1 and rng.random() < 0.2:
        shape = shape[1:]  # one spectrum as [N]
    elif rng.random() < 0.08:
        shape, ok = [(n_spectra, wave.shape[-1] + 1), (2, n_spectra, wave.shape[-1]), ()][rng.integers(0, 3)], False
    flux, ivar = poke(rng, random_flux(rng, shape), rng.choice([np.nan, np.inf, -np.inf])), None
    if rng.random() < 0.7:
        with np.errstate(all="ignore"):
            ivar = poke(rng, poke(rng, 1.0 / np.square(np.abs(0.1 * flux) + rng.uniform(1e-3, 1.0)), 0.0), rng.choice([np.nan, np.inf]))
        if rng.random() < 0.1:
            ivar, ok = poke(rng, ivar, -1.0), False  # negative ivar is an error (if any is left)
    dtypes = ("float64", "float32", "int64", "list")
    wave_type, wave_ok = pick(rng, ("float64", "float32", "list"), ("float16", "int32", "object", "str", "complex128", "bool", "scalar"), 0.15)
    flux_type, flux_ok = pick(rng, dtypes + ("float16",), ("bool", "complex64", "uint8", "object", "str", "scalar"), 0.1)
    ivar_type, ivar_ok = pick(rng, dtypes, ("bool", "complex128", "str", "scalar"), 0.1)
    ivar_ok = ivar_ok and not (ivar_type == "int64" and ivar is not None and not np.isfinite(ivar).all())  # NaN -> INT_MIN
    kwargs = dict(air=bool(rng.random() < 0.3), flux_unit="flam", batch_size=int(rng.choice([1, 2, 3, 1024])), min_valid=0.5)
    if rng.random() < 0.3:
        kwargs["flux_unit"] = rng.choice(["fnu", "fnu", "FNU", "jy"])
    if rng.random() < 0.4:
        kwargs["min_valid"] = rng.choice([0.0, 0.2, 0.9, 1.0, -0.5, 1.5, np.nan])
    if rng.random() < 0.05:
        kwargs["batch_size"] = [0, -2, 2.5, None][rng.integers(0, 4)]
    ok = ok and wave_ok and flux_ok and ivar_ok and kwargs["flux_unit"] in ("flam", "fnu") and kwargs["batch_size"] in (1, 2, 3, 1024)
    # air shifts the model's own grid by ~4 Å: its first pixel is then uncovered
    ok = ok and 0.0 <= kwargs["min_valid"] <= 1.0 and not (kwargs["air"] and kwargs["min_valid"] == 1.0 and wave.shape == (512,))
    kwargs.update(wavelength=convert(rng, wave, wave_type), flux=convert(rng, flux, flux_type),
                  ivar=None if ivar is None else convert(rng, ivar, ivar_type))  # fmt: skip
    return kwargs, ok and n_spectra > 0


def check_result(result: dict, n: int, model) -> None:
    """One row per spectrum; no NaN (in z and its errors: nothing non-finite) in a row without a flag; z in range."""
    assert all(value.shape[0] == n for value in result.values()), {k: tuple(v.shape) for k, v in result.items()}
    unflagged = ~any_flag(result)
    for name in NOT_NAN_COLUMNS + (("p_outside",) if model.outside else ()):
        bad = (torch.isnan(result[name]) | (name in FINITE_COLUMNS and ~torch.isfinite(result[name]))) & unflagged
        assert not bool(bad.any()), f"{name} is {result[name][bad].tolist()} in unflagged rows {torch.nonzero(bad).flatten().tolist()}"
    z = result["z"][torch.isfinite(result["z"])]
    assert bool(((z >= model.z_range[0]) & (z <= model.z_range[1])).all()), f"z {z.tolist()} outside {model.z_range}"
    assert bool(((result["valid_fraction"] >= 0) & (result["valid_fraction"] <= 1)).all()), result["valid_fraction"]


def run_predict_case(model, kwargs: dict, must_succeed: bool) -> None:
    try:
        result = zfast.predict(model, **kwargs)
    except DOCUMENTED as error:
        assert not must_succeed, f"valid input refused: {type(error).__name__}: {error}"
        return
    n = 1 if np.ndim(kwargs["flux"]) == 1 else len(kwargs["flux"])
    check_result(result, n, model)
    if n > 1 and not isinstance(kwargs["flux"], list):  # in order: the same answers for the rows reversed, one per batch
        flipped = {k: x.flip(0) if isinstance(x, torch.Tensor) else np.asarray(x)[::-1].copy() for k in ("wavelength", "flux", "ivar")
                   if (x := kwargs[k]) is not None and np.ndim(x) == 2}  # fmt: skip
        again = zfast.predict(model, **dict(kwargs, batch_size=1, **flipped))
        for name, value in result.items():
            torch.testing.assert_close(again[name].flip(0), value, rtol=1e-4, atol=1e-5, equal_nan=True, msg=f"{name} depends on the row order")


@pytest.mark.parametrize("index", range(CASES))
def test_predict_fuzz(models, index):
    kwargs, must_succeed = predict_case(case_rng(0, index), models[index % 2])
    run_case("test_predict_fuzz", index, kwargs, run_predict_case, models[index % 2], kwargs, must_succeed)


# --- zfast.rebin ---------------------------------------------------------------------------------------------------
def rebin_grids(rng) -> tuple:
    """(wave_in, wave_out float64, whether both are valid: 1-D, >= 2 finite strictly increasing values)."""
    n_in, lo = int(rng.choice([0, 1, 2, 3, 7, 50, 301])), rng.choice([1e-3, 1.0, 3000.0, 1e6])
    wave_in = lo * (1.0 + np.sort(rng.uniform(0.0, 1.0, n_in))) if rng.random() < 0.5 else np.geomspace(lo, 3 * lo, n_in)
    span = (wave_in[0], wave_in[-1]) if n_in else (lo, 2 * lo)
    kind, width = rng.choice(["inside", "wider", "partial", "outside", "same", "finer", "coarser"]), (span[1] - span[0]) or lo
    start = {"wider": span[0] - width, "partial": span[0] + 0.5 * width, "outside": span[1] + width}.get(kind, span[0])
    wave_out = np.linspace(start, start + width * (3.0 if kind == "wider" else 1.0), int(rng.choice([0, 1, 2, 5, 64, 400])))
    if kind in ("same", "finer", "coarser"):
        wave_out = wave_in.copy() if kind == "same" else np.linspace(*span, max(2, n_in * 4 if kind == "finer" else n_in // 4))
    ok = n_in >= 2 and wave_out.size >= 2 and (np.diff(wave_in) > 0).all() and (np.diff(wave_out) > 0).all()
    grids = [wave_in, wave_out]
    for i, grid in enumerate(grids):
        damage = rng.choice(["none"] * 8 + ["decreasing", "duplicate", "nonfinite", "2d", "extreme", "tiny"])
        if damage == "none" or grid.size < 2:
            continue
        grids[i] = {"decreasing": grid[::-1].copy(), "2d": grid[None], "extreme": np.linspace(1e307, 1.7e308, grid.size),
                    "tiny": np.linspace(0.0, 1e-310, grid.size)}.get(damage, grid.copy())  # fmt: skip
        if damage in ("duplicate", "nonfinite"):
            grids[i][1] = grids[i][0] if damage == "duplicate" else rng.choice([np.nan, np.inf, -np.inf])
        ok = ok and damage == "tiny"  # subnormal but distinct: valid
    return grids[0], grids[1], bool(ok)


def rebin_case(rng) -> tuple[dict, bool]:
    """(the arguments of one ``zfast.rebin`` call, whether they are valid throughout)."""
    wave_in, wave_out, ok = rebin_grids(rng)
    n = (wave_in.shape[-1] if wave_in.ndim else 0) + int(rng.random() < 0.05)
    ok = ok and n == wave_in.shape[-1]
    flux = random_flux(rng, [(), (1,), (3,), (2, 3), (0,)][rng.integers(0, 5)] + (n,))
    if rng.random() < 0.2:
        flux = poke(rng, flux, rng.choice([np.nan, np.inf, -np.inf]))
    dtype, dtype_ok = pick(rng, ("float64", "float32"), ("float16", "int64", "bool", "complex128"), 0.15)
    tensor = convert(rng, flux, dtype, torch_share=0.95)  # numpy: a TypeError
    values = np.asarray(tensor)
    fill, fill_ok = pick(rng, (math.nan, 0.0, -1.0, math.inf, 1e300), ("x", None, "nan", complex(1, 1)), 0.05)
    types = [pick(rng, ("float64", "float32", "int64", "list"), ("complex128", "str", "object", "bool", "scalar"), 0.05)[0] for _ in range(2)]
    grids = [convert(rng, g, t, torch_share=0.5) for g, t in zip((wave_in, wave_out), types)]
    ok = ok and dtype_ok and fill_ok and isinstance(tensor, torch.Tensor) and all(t in ("float64", "list") for t in types)
    return dict(flux=tensor, wave_in=grids[0], wave_out=grids[1], fill=fill), ok and bool(np.isfinite(values).all())


def run_rebin_case(kwargs: dict, must_succeed: bool, grad: bool) -> None:
    """A documented error, or: the right shape and dtype, finite in covered bins of finite flux, ``fill`` elsewhere,
    and a finite gradient."""
    flux = kwargs["flux"]
    if grad and isinstance(flux, torch.Tensor) and flux.dtype in (torch.float32, torch.float64):
        flux = kwargs["flux"] = flux.clone().requires_grad_()
    try:
        out = zfast.rebin(**kwargs)
    except DOCUMENTED as error:
        assert not must_succeed, f"valid input refused: {type(error).__name__}: {error}"
        return
    wave_in, wave_out = (torch.as_tensor(np.asarray(kwargs[k]), dtype=torch.float64) for k in ("wave_in", "wave_out"))
    assert out.shape == flux.shape[:-1] + (wave_out.numel(),) and out.dtype == flux.dtype, (out.shape, out.dtype)
    inside, result, fill = covered_bins(*scaled_edges(wave_in, wave_out)), out.detach(), float(kwargs["fill"])  # fully covered
    bad = inside & ~torch.isfinite(result) & bool(torch.isfinite(flux).all())
    assert not bool(bad.any()), f"non-finite output in covered bins {torch.nonzero(bad)[:5].tolist()} of finite flux"
    outside = result[..., ~inside]
    assert bool(torch.isnan(outside).all() if math.isnan(fill) else (outside == torch.tensor(fill, dtype=torch.float64).to(out.dtype)).all()), outside
    if flux.requires_grad and out.numel():
        out.backward(torch.ones_like(out))
        assert flux.grad.shape == flux.shape and bool(torch.isfinite(flux.grad).all()), "non-finite gradient"


@pytest.mark.parametrize("index", range(CASES))
def test_rebin_fuzz(index):
    rng = case_rng(1, index)
    kwargs, must_succeed = rebin_case(rng)
    run_case("test_rebin_fuzz", index, kwargs, run_rebin_case, kwargs, must_succeed, bool(rng.random() < 0.3))


# --- zfast-predict -------------------------------------------------------------------------------------------------
DAMAGE = {"rename": None, "drop": None, "scalar": lambda v: np.float64(3.0), "flux_1d": lambda v: v.reshape(-1),
          "flux_3d": lambda v: v[None], "empty": lambda v: v[:0], "one_pixel": lambda v: v[..., :1],
          "wave_length": lambda v: v[..., :-1], "ivar_shape": lambda v: v.T, "id_2d": lambda v: v.reshape(1, -1),
          "id_short": lambda v: v[:-1], "complex": lambda v: v.astype(complex) if v.dtype.kind != "U" else v,
          "bool": lambda v: v != 0 if v.dtype.kind != "U" else v, "object": lambda v: v.astype(object),
          "strings": lambda v: v.astype(str), "nan": lambda v: np.full(v.shape, np.nan), "group": lambda v: "group"}  # fmt: skip
VALID_DAMAGE = {"ivar": ("drop", "rename", "nan"), "id": ("drop", "rename", "complex", "bool", "strings")}


def spectra_members(rng, base: np.ndarray) -> tuple[dict, bool]:
    """(the arrays of a spectra file: wavelength, flux, optional ivar and id, one maybe damaged; whether all are valid)."""
    n_spectra = int(rng.choice([1, 2, 3, 6]))
    wave, ok = random_grid(rng, base, n_spectra)
    flux = poke(rng, random_flux(rng, (n_spectra, wave.shape[-1])), rng.choice([np.nan, np.inf]))
    members = {"wavelength": wave, "flux": flux}
    if rng.random() < 0.6:
        members["ivar"] = poke(rng, np.full(flux.shape, rng.uniform(0.1, 100.0)), 0.0)
    if rng.random() < 0.5:
        members["id"] = [np.arange(n_spectra) * 7 + 3, np.array([f"gal {i}" for i in range(n_spectra)]), np.arange(n_spectra) + 0.5][rng.integers(0, 3)]
    name = ["wavelength", "flux", "ivar", "id"][rng.integers(0, 4)]
    damage = list(DAMAGE)[rng.integers(0, len(DAMAGE))] if rng.random() < 0.4 else "upper"
    if damage == "upper" or name not in members:  # names match case-insensitively
        return {(k.upper() if k == name and rng.random() < 0.5 else k): v for k, v in members.items()}, ok
    value = members.pop(name)
    if damage == "rename":
        members[name[:-1] + "_"] = value
    elif DAMAGE[damage] is not None:
        members[name] = DAMAGE[damage](value)
    return members, ok and damage in VALID_DAMAGE.get(name, ())


def write_members(rng, path, fmt: str, members: dict):
    """``members`` as an .npz, .h5, FITS image HDUs or a FITS binary table (per-row columns); the path written (an
    .npz where the format cannot hold the arrays)."""
    try:
        if fmt == ".h5":
            with h5py.File(path, "w") as handle:
                for key, value in members.items():
                    if isinstance(value, str):
                        handle.create_group(key)
                    else:
                        handle[key] = value.astype("S") if value.dtype.kind == "U" else value
            return path
        if fmt == ".fits":
            fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(np.asarray(v), name=k.upper()) for k, v in members.items()]).writeto(path)
            return path
        if fmt == "table":  # per-row columns; a 1-D wavelength repeated on every row; all columns of flux's length
            (n, m), kinds = next(v for k, v in members.items() if k.lower() == "flux").shape, {"i": "K", "f": "D", "b": "L", "U": "20A", "c": "M"}
            grid = {k: np.broadcast_to(v, (n, m)) for k, v in members.items() if k.lower() == "wavelength" and v.shape == (m,)}
            columns = dict(members, **grid)
            if any(isinstance(v, str) or v.ndim == 0 or len(v) != n for v in columns.values()):
                raise ValueError("a table's columns have one length")  # (astropy would pad them): as an .npz
            fits.BinTableHDU.from_columns([fits.Column(name=k, format=f"{m}D" if v.ndim == 2 else kinds[v.dtype.kind], array=v)
                                           for k, v in columns.items()]).writeto(path)  # fmt: skip
            return path
    except Exception:  # noqa: BLE001 - this format cannot hold them
        path.unlink(missing_ok=True)
    path = path.with_suffix(".npz")
    (np.savez_compressed if rng.random() < 0.5 else np.savez)(path, **{k: (np.zeros(0) if isinstance(v, str) else v) for k, v in members.items()})
    return path


def spectra_file(rng, folder, base) -> tuple:
    """(a spectra file written by the case, then maybe truncated at a random byte, emptied, overwritten with random
    bytes, 4 bytes flipped or bytes appended; its members; whether it is valid throughout; whether undamaged)."""
    members, ok = spectra_members(rng, base)
    fmt = rng.choice([".npz", ".npz", ".h5", ".fits", "table", ".txt"])
    path = folder / ("spectra" + (fmt if fmt != "table" else ".fits"))
    path = np.savetxt(path, np.zeros(10)) or path if fmt == ".txt" else write_members(rng, path, fmt, members)
    data, kind = bytearray(path.read_bytes()), rng.choice(["none"] * 6 + ["truncate", "empty", "random", "flip", "append"])
    for at in rng.integers(0, len(data), 4) if kind == "flip" else ():
        data[at] ^= int(rng.integers(1, 256))
    replaced = {"truncate": data[: rng.integers(0, max(1, len(data)))], "empty": b"", "random": rng.bytes(int(rng.integers(1, 4096))),
                "append": data + rng.bytes(int(rng.integers(1, 300)))}  # fmt: skip
    path.write_bytes(bytes(replaced.get(kind, data)))
    return path, members, ok and kind == "none" and fmt != ".txt", kind == "none"


def cli_argv(rng, folder, checkpoints, spectra) -> tuple[list, bool]:
    """(zfast-predict's arguments for one case, whether they are valid throughout)."""
    ckpt, ok = pick(rng, [str(p) for p in checkpoints], ("missing", "truncated", "random"), 0.05)
    if not ok:
        data = checkpoints[0].read_bytes()
        (folder / "bad.pt").write_bytes(data[: rng.integers(0, len(data))] if ckpt == "truncated" else rng.bytes(5000))
        ckpt = str(folder / ("missing.pt" if ckpt == "missing" else "bad.pt"))
    suffix, suffix_ok = pick(rng, (".csv", ".csv", ".fits"), (".txt", "/", "exists", "nofolder"), 0.1)
    output = folder / ("out" + suffix if suffix.startswith(".") else {"/": "", "exists": "out.csv", "nofolder": "no/out.csv"}[suffix])
    if suffix == "exists":
        output.write_text("precious\n")
    suffix_ok = suffix_ok or suffix == "/"  # a folder: the many-input run, one catalogue in it (zfast.survey)
    argv = ["--checkpoint", ckpt, "--input", str(spectra), "--output", str(output), "--device", "cpu"]
    options = [["--pz"], ["--air"], ["--flux-unit", "fnu"], ["--batch-size", str(rng.choice([1, 2, 5]))],
               ["--min-valid", str(rng.choice([0.0, 0.3, 0.9]))]]  # fmt: skip
    odd = [["--flux-unit", "jy"], ["--batch-size", str(rng.choice([0, -1]))], ["--batch-size", "x"], ["--min-valid", "nan"],
           ["--min-valid", "1.5"], ["--bogus"], ["--batch", "3"], ["--templates", str(folder / "nolib.npz")], ["--device", "tpu"],
           ["--template-points", "24"], ["--templates", "default", "--template-points", "0"]]  # fmt: skip
    argv += sum((options[i] for i in rng.permutation(len(options))[: rng.integers(0, 4)]), [])
    if rng.random() < 0.1:
        argv, ok = argv + odd[rng.integers(0, len(odd))], False
    overwrite = suffix == "exists" and rng.random() < 0.5
    return argv + ["--overwrite"] * overwrite, ok and (suffix_ok or overwrite)


def check_table(path, members: dict, model, intact: bool) -> None:
    """The table's rows in order (the ids; for a file read despite damage: any rows), and ``check_result``'s."""
    if path.suffix == ".csv":
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
    else:
        with fits.open(path) as hdul:
            rows = [{name: hdul[1].data[name][i] for name in hdul[1].data.columns.names} for i in range(len(hdul[1].data))]
    members = {k.lower(): v for k, v in members.items() if not isinstance(v, str)}  # (a group is no member)
    ids = [id_text(i) for i in members.get("id", range(np.shape(members["flux"])[0]))]
    assert not intact or [id_text(row["TARGETID"]) for row in rows] == ids, f"ids {[row['TARGETID'] for row in rows]} != {ids}"
    names = {column.key: column.name for column in CATALOGUE}
    result = {k: torch.tensor([float(r[names[k]]) for r in rows], dtype=torch.float64) for k in NOT_NAN_COLUMNS + ("p_outside",)}
    for flag in FLAGS:  # the boolean flags are bits of ZWARN
        result[flag.name] = torch.tensor([(int(r["ZWARN"]) & flag.bits) != 0 for r in rows], dtype=torch.bool)
    check_result(result, len(rows), model)


def run_cli_case(argv: list, members: dict, model, ok: tuple, folder, capfd) -> None:
    """zfast-predict ``argv``: exit 0 and a full table, or 1/2 with one line on stderr and nothing left behind."""
    before = sorted(p.name for p in folder.rglob("*"))
    capfd.readouterr()
    try:
        code = predict_cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    output = folder / argv[argv.index("--output") + 1]
    spectra = Path(argv[argv.index("--input") + 1])
    if code == 0:
        if output.is_dir():  # the many-input run: the input's catalogue in the folder, FITS by default
            return check_table(output / f"{spectra_stem(spectra.name)}.zfast.fits", members, model, ok[1])
        return check_table(output, members, model, ok[1])
    assert not ok[0], f"valid input refused: exit {code!r} {err}"
    if output.is_dir() and code == 1:  # the many-input run records the failed input in its manifest, and names it
        assert f"{spectra}: " in err and "0 inputs done" in err, err
        assert sorted(p.name for p in folder.rglob("*")) == sorted(before + ["manifest.jsonl"]), "a failed input left files behind"
        return
    assert sorted(p.name for p in folder.rglob("*")) == before, "a failed run left files behind"
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("zfast-predict: error: "), err
    else:
        assert isinstance(code, str) and code.startswith("zfast-predict: ") and "\n" not in code.strip(), f"exit {code!r}"


@pytest.mark.parametrize("index", range(CASES))
def test_cli_fuzz(checkpoints, models, index, tmp_path, capfd):
    rng = case_rng(2, index)
    spectra, members, file_ok, intact = spectra_file(rng, tmp_path, models[0].instrument.wavelength.numpy())
    argv, argv_ok = cli_argv(rng, tmp_path, checkpoints, spectra)
    model = models[1] if argv[1] == str(checkpoints[1]) else models[0]
    shown = f"{spectra.name}: { {k: np.shape(v) for k, v in members.items()} }; {' '.join(argv[2:]).replace(str(tmp_path) + '/', '')}"
    run_case("test_cli_fuzz", index, shown, run_cli_case, argv, members, model, (file_ok and argv_ok, intact), tmp_path, capfd)


# --- regressions, each minimised from a fuzz case (failing before its fix) ------------------------------------------
@pytest.mark.parametrize("wave,min_valid,error,match", [
    (5000.0, 0.5, ValueError, "wavelength"), (np.zeros((0, 512)), 0.5, ValueError, "wavelength"),  # were IndexError
    (None, -0.5, ValueError, "min_valid"), (None, math.nan, ValueError, "min_valid"),  # silently never flagged
    (None, 1.5, ValueError, "min_valid"), (None, "0.5", TypeError, "min_valid")])  # fmt: skip
def test_predict_refuses_bad_grids_and_min_valid_by_name(models, wave, min_valid, error, match):
    with pytest.raises(error, match=match):
        zfast.predict(models[0], models[0].instrument.wavelength if wave is None else wave, np.ones((2, 512)), min_valid=min_valid)


def test_predict_answers_what_it_refused_or_left_unflagged(models):
    model, wave = models[0], models[0].instrument.wavelength
    flux = 1.0 + 0.1 * torch.sin(wave / 50.0)  # one spectrum as [N] with ivar [N], batches smaller than N: ivar was sliced
    one = zfast.predict(model, wave, flux, torch.full_like(flux, 100.0), batch_size=2)
    assert one["z"].tolist() == zfast.predict(model, wave, flux[None], torch.full_like(flux, 100.0)[None])["z"].tolist()
    own = zfast.predict(model, wave, np.ones((1, 512)), min_valid=1.0)  # the model's own pixels: was "only 100 %"
    assert own["valid_fraction"].tolist() == [1.0] and not bool(own["flag_few_pixels"])
    own32 = zfast.predict(model, wave.float(), np.ones((1, 512)), min_valid=1.0)  # rounded to float32: was "only 100 %"
    assert own32["valid_fraction"].tolist() == [1.0]
    empty = zfast.predict(model, wave, np.stack([np.ones(512), np.full(512, np.nan)]), min_valid=0.0)  # snr NaN, unflagged
    assert empty["flag_few_pixels"].tolist() == [False, True]


@pytest.mark.parametrize("wave_in,wave_out", [([1e307, 1e308, 1.7e308], [1.5e307, 1e308]), ([0.0, 1.0, 2.0], np.linspace(0.0, 1e-310, 50))],
                         ids=["near_the_float64_limit", "subnormal"])  # fmt: skip
def test_rebin_of_extreme_grids_stays_finite_with_a_finite_gradient(wave_in, wave_out):
    flux = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    out = zfast.rebin(flux, wave_in, wave_out, fill=0.0)  # was NaN: the mirrored edges overflowed
    out.backward(torch.ones_like(out))  # was NaN: 1 / (a subnormal width) overflowed
    assert bool(torch.isfinite(out).all() & torch.isfinite(flux.grad).all()), (out, flux.grad)
    with pytest.raises(ValueError, match="wave_in: its pixel edges"):  # centres whose edges collide: was NaN
        zfast.rebin(torch.ones(3, dtype=torch.float64), [1e-300, 1e-299, 1e300], [0.0, 1.0])


def test_damaged_files_exit_1_with_one_line(checkpoints, tmp_path):
    """A deflated .npz member whose first block is of the reserved type (was zlib.error through main), an .npz
    header cut short (was tokenize.TokenError), a FITS table card with a NUL (was astropy's VerifyError)."""
    wave, flux, escaped = np.linspace(12000.0, 19000.0, 512), np.ones((2, 512)), {}
    np.savez_compressed(tmp_path / "deflated.npz", wavelength=wave, flux=flux)
    np.savez(tmp_path / "header.npz", wavelength=wave, flux=flux)
    fits.BinTableHDU.from_columns([fits.Column(name="WAVELENGTH", format="512D", array=np.tile(wave, (2, 1))),
                                   fits.Column(name="FLUX", format="512D", array=flux)]).writeto(tmp_path / "card.fits")  # fmt: skip
    member = zipfile.ZipFile(tmp_path / "deflated.npz").getinfo("flux.npy")
    at = member.header_offset  # the deflate stream starts after the local header, its name and its (own) extra field
    for name, find in (("deflated.npz", lambda d: at + 30 + sum(struct.unpack("<HH", d[at + 26:at + 30]))),
                       ("header.npz", lambda d: d.index(b"}", d.index(b"flux.npy"))), ("card.fits", lambda d: d.index(b"TTYPE2  = ") + 11)):
        data = bytearray((tmp_path / name).read_bytes())
        data[find(data)] = 0xFF if name == "deflated.npz" else (ord(" ") if name == "header.npz" else 0)
        (tmp_path / name).write_bytes(bytes(data))
        try:
            predict_cli.main(["--checkpoint", str(checkpoints[0]), "--input", str(tmp_path / name), "--output", str(tmp_path / f"{name}.csv")])
        except SystemExit:
            continue
        except Exception as error:  # noqa: BLE001 - what the defect is
            escaped[name] = type(error).__name__
    assert not escaped, escaped


def test_a_damaged_checkpoint_exits_with_one_line(tmp_path):  # was torch.load's message, many lines
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint\n" * 100)
    with pytest.raises(SystemExit) as stop:
        predict_cli.main(["--checkpoint", str(tmp_path / "bad.pt"), "--input", "x.npz", "--output", str(tmp_path / "z.csv")])
    assert "\n" not in str(stop.value.code).strip(), stop.value.code
