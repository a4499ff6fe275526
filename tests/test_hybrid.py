"""The network proposes, the templates confirm (zfast.hybrid, library_fit_redshift(scan=...), predict's
template_points): the points follow P(z)'s mass, the scanned fit is the full fit where it looks, and finds the
truth when P(z) points at it."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import zfast
from zfast.cli import predict as predict_cli
from zfast.hybrid import N_MIN, REACH, prescanned, representative_seds, scan_points
from zfast.template_fit import coarse_grid, library_fit_redshift


def _reference_masses(probs, edges, grid, step):
    """P(z) mass within z ± REACH·step of each grid point, float64, by integrating the piecewise-constant density
    bin by bin (overlap lengths), one row and one point at a time."""
    p = probs.double() / probs.double().sum(dim=1, keepdim=True)
    out = np.zeros((p.shape[0], grid.numel()))
    e = edges.double().numpy()
    for b in range(p.shape[0]):
        density = p[b].numpy() / np.diff(e)
        for k, zk in enumerate(grid.tolist()):
            lo, hi = zk - REACH * step, zk + REACH * step
            overlap = np.clip(np.minimum(e[1:], hi) - np.maximum(e[:-1], lo), 0, None)
            out[b, k] = (density * overlap).sum()
    return torch.as_tensor(out)


@pytest.mark.parametrize("n_bins,n_points", [(800, 24), (397, 1), (123, 7)])
def test_scan_points_are_the_cells_with_the_most_mass(generator, n_bins, n_points):
    edges = zfast.redshift_bin_edges(1.0, 1.8, n_bins)
    step = 2e-3
    grid = coarse_grid((1.0, 1.8), step)
    probs = torch.rand(5, n_bins, generator=generator, dtype=torch.float64) ** 8  # peaky, no ties
    scan = scan_points(probs, edges, grid, step, n_points, min_mass=0.0, max_missing=1.0)
    assert scan.dtype == torch.bool and scan.shape == (5, grid.numel())
    assert (scan.sum(dim=1) == n_points).all()
    masses = _reference_masses(probs, edges, grid, step)
    for b in range(5):
        chosen, other = masses[b][scan[b]], masses[b][~scan[b]]
        assert chosen.min() >= other.max() - 1e-12  # no unchosen cell holds more mass than a chosen one
    # More points than the grid has: the whole grid.
    assert scan_points(probs, edges, grid, step, grid.numel() + 3, max_missing=1.0).all()


def test_scan_points_follow_a_peak_and_split_between_two(generator):
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    grid = coarse_grid((1.0, 1.8), 2e-3)
    centre = 0.5 * (edges[1:] + edges[:-1])
    one = torch.exp(-0.5 * ((centre - 1.3137) / 1e-3) ** 2)[None]
    scan = scan_points(one, edges, grid, 2e-3, 10)
    picked = grid[scan[0]]
    assert (picked - 1.3137).abs().max() < 0.012 and (picked - 1.3137).abs().min() < 1.5e-3
    # Two equal peaks: the points are shared between them.
    two = one + torch.exp(-0.5 * ((centre - 1.62) / 1e-3) ** 2)[None]
    picked = grid[scan_points(two, edges, grid, 2e-3, 10, min_mass=0.0, max_missing=1.0)[0]]
    assert ((picked - 1.3137).abs() < 0.012).sum() == 5 and ((picked - 1.62).abs() < 0.012).sum() == 5
    with pytest.raises(ValueError, match="n_points"):
        scan_points(one, edges, grid, 2e-3, 0)


@pytest.mark.parametrize("floor", [1e-4, 1e-2, 0.3])
def test_scan_points_mass_floor(generator, floor):
    """With a mass floor: the top-n cells, less those holding under the floor, but never fewer than the N_MIN with
    the most mass (against float64 reference masses); a confident P(z) scans few points, a flat one all n."""
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    step = 2e-3
    grid = coarse_grid((1.0, 1.8), step)
    centre = 0.5 * (edges[1:] + edges[:-1])
    sharp = torch.exp(-0.5 * ((centre - 1.2345) / 3e-4) ** 2)[None]  # ~ the network's width at SNR 10
    probs = torch.cat([sharp, torch.rand(4, 800, generator=generator, dtype=torch.float64) ** 8, torch.ones(1, 800)])
    scan = scan_points(probs, edges, grid, step, 24, min_mass=floor, max_missing=1.0)
    masses = _reference_masses(probs, edges, grid, step)
    for b in range(probs.shape[0]):
        order = torch.argsort(masses[b], descending=True, stable=True)
        top = order[:24]
        expected = torch.zeros(grid.numel(), dtype=torch.bool)
        expected[top[masses[b][top] >= floor]] = True
        expected[order[:N_MIN]] = True
        # cells within 1e-12 of the floor or of a rank boundary may go either way
        unsure = ((masses[b] - floor).abs() < 1e-12) | ((masses[b] - masses[b][order[23]]).abs() < 1e-12)
        assert torch.equal(scan[b] & ~unsure, expected & ~unsure)
    assert N_MIN <= scan[0].sum() <= 4  # the sharp peak: its cell and neighbours
    assert scan[-1].sum() == (24 if floor < 0.5 * 3 / 400 else N_MIN)  # flat: every cell holds ~3/400
    with pytest.raises(ValueError, match="min_mass"):
        scan_points(probs, edges, grid, step, 24, min_mass=-1.0)


def test_scan_points_widen_where_the_network_is_unsure(generator):
    """A row whose scanned cells leave out more than max_missing of its P(z) scans the whole grid; a sharp one does
    not; the missing mass is the brute-force mass of bins whose centre lies in no scanned cell."""
    from zfast.bins import normalised_probs
    from zfast.hybrid import missing_mass

    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    step = 2e-3
    grid = coarse_grid((1.0, 1.8), step)
    centre = 0.5 * (edges[1:] + edges[:-1])
    bump = lambda z0, w: torch.exp(-0.5 * ((centre - z0) / w) ** 2)  # noqa: E731
    sharp = bump(1.2345, 3e-4)
    two = bump(1.2345, 3e-4) + 0.3 * bump(1.61, 3e-4)  # the second peak holds ~13 % of the mass
    probs = torch.stack([sharp, two, torch.ones(800)]).double()
    few = scan_points(probs, edges, grid, step, 3, min_mass=0.0, max_missing=1.0)  # 3 points: only the first peak
    p, e = normalised_probs(probs, edges)
    mid = 0.5 * (e[1:] + e[:-1])  # the bins' centres as missing_mass sees them (float64)
    brute = torch.tensor([[float(p[b, c]) if not any(abs(float(mid[c]) - float(grid[k])) <= 1.5 * step + 1e-12
                                                       for k in torch.nonzero(few[b]).flatten().tolist()) else 0.0
                           for c in range(800)] for b in range(3)], dtype=torch.float64).sum(dim=1)  # fmt: skip
    torch.testing.assert_close(missing_mass(p, e, grid, step, few), brute.double(), rtol=0, atol=1e-12)
    assert brute[0] < 0.01 and 0.1 < brute[1] < 0.3 and brute[2] > 0.9
    wide = scan_points(probs, edges, grid, step, 3, min_mass=0.0, max_missing=0.05)
    assert torch.equal(wide[0], few[0]) and wide[1].all() and wide[2].all()
    assert torch.equal(scan_points(probs, edges, grid, step, 3, min_mass=0.0, max_missing=0.5)[1], few[1])
    with pytest.raises(ValueError, match="max_missing"):
        scan_points(probs, edges, grid, step, 3, max_missing=-0.1)


def _spectra(noise, n, seed):
    library = zfast.SEDLibrary.default()
    instrument = zfast.Instrument.preset("euclid-nisp-red", noise)
    data = zfast.AugmentedSpectra(library, instrument, split="test", batch_size=n, seed=seed)
    return library, instrument, *next(data)


def test_a_full_scan_is_the_full_fit_and_a_partial_one_is_the_full_fit_where_it_looks(generator):
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(8.0, 8.0)), 9, 11)
    seds = torch.unique(torch.cat([sed, torch.randperm(len(library), generator=generator)[:25]]))
    step = 4e-3
    grid = coarse_grid((1.0, 1.8), step)
    full = library_fit_redshift(library, instrument, flux, ivar, seds, step=step)
    everywhere = library_fit_redshift(library, instrument, flux, ivar, seds, step=step, scan=torch.ones(9, grid.numel(), dtype=torch.bool))
    assert torch.equal(everywhere["sed"], full["sed"])
    for key in ("z", "chi2", "z_err", "chi2_grid", "log_like_grid"):
        # To the last bits only: the scanned path gathers its rows into fresh tensors, and in a long pytest run their
        # alignment (hence MKL's and torch's vector loops' summation order) can differ from the slice's (seen once
        # in CI: one z_err 4e-16 apart).
        torch.testing.assert_close(everywhere[key], full[key], rtol=1e-12, atol=0)
    # Each spectrum scans a random window of 15 points holding its true z, plus 5 random points.
    scan = torch.zeros(9, grid.numel(), dtype=torch.bool)
    for b in range(9):
        k = int(torch.searchsorted(grid, z[b].double()))
        scan[b, max(0, k - 7) : k + 8] = True
        scan[b, torch.randint(0, grid.numel(), (5,), generator=generator)] = True
    part = library_fit_redshift(library, instrument, flux, ivar, seds, step=step, scan=scan)
    # Same χ² where scanned, up to float32 matmul blocking (a row subset sums in another order).
    torch.testing.assert_close(part["chi2_grid"][scan], full["chi2_grid"][scan], rtol=1e-5, atol=1e-3)
    assert torch.isinf(part["chi2_grid"][~scan]).all() and (part["log_like_grid"][~scan] == -math.inf).all()
    # The fit's z lies where it looked (within the refinement's reach, 1.05 steps, of a scanned point).
    reach = ((part["z"][:, None] - grid[None, :]).abs() <= 1.05 * step + 1e-9) & scan  # ±step, then ±step/20
    assert reach.any(dim=1).all()
    # At SNR 8 with the true SED present, the windowed fit agrees with the full fit where the full fit is right.
    right = ((full["z"] - z.double()).abs() / (1 + z.double()) < 0.01)
    assert right.sum() >= 6
    torch.testing.assert_close(part["z"][right], full["z"][right], rtol=0, atol=2e-4)


def test_the_scan_finds_the_truth_where_pz_points_and_nothing_where_it_does_not():
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("none"), 6, 5)
    edges = zfast.redshift_bin_edges(1.0, 1.8, 800)
    centre = 0.5 * (edges[1:] + edges[:-1])
    grid = coarse_grid((1.0, 1.8), 2e-3)
    seds = torch.unique(sed)
    pointing = torch.exp(-0.5 * ((centre[None] - z.double()[:, None] - 3e-3) / 2e-3) ** 2)  # off by 3e-3: still found
    fit = library_fit_redshift(library, instrument, flux, ivar, seds, scan=scan_points(pointing, edges, grid, 2e-3, 12))
    assert (fit["z"] - z.double()).abs().max() < 2e-5
    # Pointing 0.2 away: the fit stays in its windows (the network's miss is not silently repaired by a full scan).
    away = (z.double() + 0.2 - 0.4 * (z.double() > 1.4)).clamp(1.01, 1.79)
    wrong = torch.exp(-0.5 * ((centre[None] - away[:, None]) / 2e-3) ** 2)
    fit = library_fit_redshift(library, instrument, flux, ivar, seds, scan=scan_points(wrong, edges, grid, 2e-3, 12))
    assert ((fit["z"] - away).abs() < 0.02).all()


def test_scan_masks_are_checked():
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("none"), 2, 1)
    n = coarse_grid((1.0, 1.8), 2e-3).numel()
    with pytest.raises(ValueError, match="scan must be a bool"):
        library_fit_redshift(library, instrument, flux, ivar, sed, scan=torch.ones(2, n - 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="scan must be a bool"):
        library_fit_redshift(library, instrument, flux, ivar, sed, scan=torch.ones(2, n))
    empty = torch.ones(2, n, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match="at least one"):
        library_fit_redshift(library, instrument, flux, ivar, sed, scan=empty)


def test_predict_with_template_points(model, trained, tmp_path, capsys):
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(20.0, 20.0)), 16, 2)
    templates = (library, torch.unique(sed))
    full = zfast.predict(model, instrument.wavelength, flux, ivar, templates=templates)
    hybrid = zfast.predict(model, instrument.wavelength, flux, ivar, templates=templates, template_points=400)
    torch.testing.assert_close(hybrid["z_template"], full["z_template"], rtol=0, atol=0)  # 400 points: the whole grid
    assert "pz" not in hybrid  # asked for inside, not returned
    few = zfast.predict(model, instrument.wavelength, flux, ivar, templates=templates, template_points=24, pz=True)
    assert few["pz"].shape[0] == 16 and torch.isfinite(few["z_template"]).all()
    grid = coarse_grid(model.z_range, 2e-3)
    scanned = scan_points(few["pz"], model.bin_edges, grid, 2e-3, 24)
    near = ((few["z_template"][:, None] - grid[None, :]).abs() <= 1.05 * 2e-3 + 1e-9) & scanned  # the refinement's reach
    assert near.any(dim=1).all()
    with pytest.raises(ValueError, match="needs templates"):
        zfast.predict(model, instrument.wavelength, flux, ivar, template_points=24)
    with pytest.raises(ValueError, match="positive integer"):
        zfast.predict(model, instrument.wavelength, flux, ivar, templates=templates, template_points=0)
    # The CLI: the same columns as the API; N without --templates, or N < 1, is a usage error naming the option.
    np.savez(tmp_path / "in.npz", wavelength=instrument.wavelength.numpy(), flux=flux[:5].numpy(), ivar=ivar[:5].numpy())
    argv = ["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in.npz"), "--device", "cpu"]
    assert predict_cli.main(argv + ["--output", str(tmp_path / "z.csv"), "--templates", "default", "--template-points", "1"]) == 0
    with open(tmp_path / "z.csv") as stream:
        rows = list(csv.DictReader(stream))
    api = zfast.predict(model, instrument.wavelength, flux[:5], ivar[:5], templates="default", template_points=1)
    np.testing.assert_allclose([float(r["Z_TEMPLATE"]) for r in rows], api["z_template"].numpy(), rtol=0, atol=1e-6)
    # One point scanned: no other window was looked at, so DELTACHI2_TEMPLATE is +inf (the full fit's is finite) --
    # except where that point's cell misses more than MAX_MISSING of the P(z): those scan the whole grid.
    one = scan_points(api_pz := zfast.predict(model, instrument.wavelength, flux[:5], ivar[:5], pz=True)["pz"],
                      model.bin_edges, grid, 2e-3, 1)  # fmt: skip
    widened = one.sum(dim=1) == grid.numel()
    assert ((one.sum(dim=1) <= N_MIN) | widened).all() and api_pz.shape[0] == 5
    for r, wide in zip(rows, widened.tolist()):
        assert math.isinf(float(r["DELTACHI2_TEMPLATE"])) != wide
    assert torch.isfinite(full["template_deltachi2"][:5]).all()
    for bad in (["--template-points", "24"], ["--templates", "default", "--template-points", "0"]):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            predict_cli.main(argv + ["--output", str(tmp_path / "bad.csv")] + bad)
        assert "--template-points needs --templates" in capsys.readouterr().err
    assert not (tmp_path / "bad.csv").exists()


def test_prescan_keeps_the_networks_points_and_adds_the_subsets_best_valleys():
    """Widened rows of a library larger than 2 x n_seds scan their own points plus the n_points best of a subset's
    scores over the whole grid (checked against that subset's own full fit); the others keep their own points; a
    small library, or no widened row, scans as before."""
    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(15.0, 15.0)), 5, 21)
    seds = torch.unique(torch.cat([sed, torch.arange(0, len(library), 7)]))  # > 2 x 20 SEDs
    step = 4e-3
    grid = coarse_grid((1.0, 1.8), step)
    own = torch.zeros(5, grid.numel(), dtype=torch.bool)
    own[torch.arange(5), torch.randint(0, grid.numel(), (5,), generator=torch.Generator().manual_seed(3))] = True
    widened = torch.tensor([True, False, True, True, False])
    scan = prescanned(library, instrument, flux, ivar, seds, own, widened, (1.0, 1.8), step, n_seds=20, n_points=6)
    assert torch.equal(scan[~widened], own[~widened])
    subset = representative_seds(library, seds, 20, instrument.wave_edges, (1.0, 1.8))
    reference = library_fit_redshift(library, instrument, flux[widened], ivar[widened], subset, step=step)["log_like_grid"]
    for row, b in enumerate(widened.nonzero()[:, 0].tolist()):
        assert torch.equal(scan[b] & own[b], own[b])
        added = scan[b] & ~own[b]
        best = set(reference[row].topk(6).indices.tolist())
        assert set(added.nonzero()[:, 0].tolist()) == best - set(own[b].nonzero()[:, 0].tolist())
    # At SNR 15 with the true SED in the library, a ninth of the SEDs and 24 points (the defaults' shares of a
    # 7,200-SED library) hold the valley the full fit finds.
    full = library_fit_redshift(library, instrument, flux, ivar, seds, step=step)
    scan = prescanned(library, instrument, flux, ivar, seds, own, widened, (1.0, 1.8), step, n_seds=seds.numel() // 9,
                      n_points=24)  # fmt: skip
    fit = library_fit_redshift(library, instrument, flux, ivar, seds, step=step, scan=scan)
    right = widened & ((full["z"] - z.double()).abs() / (1 + z.double()) < 0.01)
    assert right.sum() >= 2
    torch.testing.assert_close(fit["z"][right], full["z"][right], rtol=0, atol=1e-6)
    # A library of at most 2 x n_seds: widened rows scan everything; no widened row: the network's own points.
    small = prescanned(library, instrument, flux, ivar, seds, own, widened, (1.0, 1.8), step, n_seds=seds.numel())
    assert small[widened].all() and torch.equal(small[~widened], own[~widened])
    none = prescanned(library, instrument, flux, ivar, seds, own, torch.zeros(5, dtype=torch.bool), (1.0, 1.8), step)
    assert torch.equal(none, own)
    with pytest.raises(ValueError, match="positive"):
        prescanned(library, instrument, flux, ivar, seds, own, widened, (1.0, 1.8), step, n_points=0)


def test_representative_seds_cover_rare_families(generator):
    """Three shape families of 120, 12 and 3 SEDs (power laws of slope -2, 0, +2 with small wiggles): 6 picks
    hold each family, are distinct members of seds, and n >= S gives them all."""
    wave = torch.exp(torch.linspace(math.log(3000.0), math.log(12000.0), 3000, dtype=torch.float64))
    slopes = torch.cat([torch.full((120,), -2.0), torch.zeros(12), torch.full((3,), 2.0)])
    wiggle = 0.05 * torch.randn(135, 1, generator=generator, dtype=torch.float64) * torch.sin(wave / 300.0)
    flux = (wave / 6000.0) ** slopes[:, None] * (1 + wiggle)
    library = zfast.SEDLibrary(wave, flux)
    seds = torch.randperm(135, generator=generator)
    edges = torch.linspace(12500.0, 18500.0, 401, dtype=torch.float64)
    picks = representative_seds(library, seds, 6, edges, (1.0, 1.8))
    assert picks.numel() == 6 and picks.unique().numel() == 6 and torch.isin(picks, seds).all()
    families = set(slopes[picks].tolist())
    assert families == {-2.0, 0.0, 2.0}
    assert torch.equal(representative_seds(library, seds, 135, edges, (1.0, 1.8)), seds)


def test_predict_prescans_widened_spectra_with_a_large_library(model, monkeypatch):
    """With more than 2 x PRESCAN_SEDS SEDs, load_templates picks the representative SEDs once and the hybrid's
    widened spectra pre-scan with them: at SNR 20 the same z as the hybrid that widens to the full scan."""
    from zfast.predict import load_templates

    library, instrument, flux, ivar, z, sed = _spectra(zfast.NoiseModel("white", snr=(20.0, 20.0)), 6, 31)
    wave = library.wavelength
    big = zfast.SEDLibrary(wave, torch.cat([library.flux * (wave / 1e4) ** a for a in (-0.2, 0.0, 0.2)]), dln=library.dln)
    monkeypatch.setattr(zfast.hybrid, "PRESCAN_SEDS", 500)
    monkeypatch.setattr(zfast.hybrid, "MAX_MISSING", 0.0)  # every spectrum widened: each one goes through the pre-scan
    loaded = load_templates(big, model, 8)
    assert loaded.prescan is not None and loaded.prescan.numel() == 500 and loaded.prescan.unique().numel() == 500
    assert load_templates(big, model).prescan is None and load_templates(library, model, 8).prescan is None  # < 2 x 500
    pre = zfast.predict(model, instrument.wavelength, flux, ivar, templates=big, template_points=8)
    monkeypatch.setattr(zfast.hybrid, "PRESCAN_SEDS", 10**9)  # widened spectra: the full scan
    full = zfast.predict(model, instrument.wavelength, flux, ivar, templates=big, template_points=8)
    right = (full["z_template"] - z.double()).abs() / (1 + z.double()) < 0.01
    assert right.sum() >= 4
    torch.testing.assert_close(pre["z_template"][right], full["z_template"][right], rtol=0, atol=1e-6)
