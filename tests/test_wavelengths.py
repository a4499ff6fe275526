"""Air ↔ vacuum wavelengths (Morton 2000 / IAU): known lines, exact round trips, types, the 2000 Å convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zfast
from zfast.wavelengths import AIR_CONVERSION_MIN, VACUUM_CONVERSION_MIN

# (air, vacuum) in Å: the air values of the usual line lists, vacuum from the same standard (SDSS line list).
KNOWN_LINES = {
    "Hbeta": (4861.33, 4862.68),
    "[OIII]5007": (5006.84, 5008.24),
    "[NII]6548": (6548.05, 6549.86),
    "Halpha": (6562.80, 6564.61),
    "[NII]6583": (6583.45, 6585.27),
    "[SII]6716": (6716.44, 6718.29),
}


def test_public_functions():
    assert zfast.air_to_vacuum is zfast.wavelengths.air_to_vacuum
    assert zfast.vacuum_to_air is zfast.wavelengths.vacuum_to_air


def test_halpha_air_to_vacuum():
    assert abs(zfast.air_to_vacuum(6562.80) - 6564.61) < 0.01
    assert abs(zfast.vacuum_to_air(6564.61) - 6562.80) < 0.01


@pytest.mark.parametrize("name", sorted(KNOWN_LINES))
def test_known_lines(name):
    air, vacuum = KNOWN_LINES[name]
    assert zfast.air_to_vacuum(air) == pytest.approx(vacuum, abs=0.015)
    assert zfast.vacuum_to_air(vacuum) == pytest.approx(air, abs=0.015)


def test_unconverted_templates_bias_redshifts_by_2p8e_4():
    """The size of the error the conversion removes: Δz ≈ (n - 1)·(1 + z) ≈ 2.8e-4·(1 + z) for Hα."""
    air, vacuum = 6562.80, zfast.air_to_vacuum(6562.80)
    assert vacuum / air - 1 == pytest.approx(2.76e-4, abs=0.05e-4)


def test_round_trips_to_1e_6_angstrom():
    wave = 3000.0 + 17000.0 * np.arange(200001, dtype=np.float64) / 200000  # 3000-20000 Å, from an integer index
    assert np.abs(zfast.vacuum_to_air(zfast.air_to_vacuum(wave)) - wave).max() < 1e-6
    assert np.abs(zfast.air_to_vacuum(zfast.vacuum_to_air(wave)) - wave).max() < 1e-6
    tensor = torch.from_numpy(wave)
    assert (zfast.air_to_vacuum(zfast.vacuum_to_air(tensor)) - tensor).abs().max().item() < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=AIR_CONVERSION_MIN, max_value=1e5))
def test_air_vacuum_air_round_trip_property(air):
    vacuum = zfast.air_to_vacuum(air)
    assert vacuum > air  # n > 1
    assert abs(zfast.vacuum_to_air(vacuum) - air) < 1e-9 * air


def test_conversion_is_increasing_above_2000_angstrom():
    vacuum = 2000.0 + 0.5 * np.arange(200001, dtype=np.float64)
    assert (np.diff(zfast.vacuum_to_air(vacuum)) > 0).all()
    assert (np.diff(zfast.air_to_vacuum(vacuum)) > 0).all()


def test_below_2000_angstrom_is_vacuum_by_convention():
    """IAU: wavelengths below 2000 Å are always quoted in vacuum (the formula has poles at 877 and 1603 Å)."""
    uv = np.array([877.0, 1215.67, 1603.0, 1999.0])
    np.testing.assert_array_equal(zfast.vacuum_to_air(uv), uv)
    np.testing.assert_array_equal(zfast.air_to_vacuum(uv), uv)
    assert zfast.vacuum_to_air(VACUUM_CONVERSION_MIN) == pytest.approx(AIR_CONVERSION_MIN, abs=1e-9)
    assert zfast.air_to_vacuum(AIR_CONVERSION_MIN) == pytest.approx(VACUUM_CONVERSION_MIN, abs=1e-9)


def test_types_shapes_and_nan():
    assert isinstance(zfast.air_to_vacuum(6562.8), float)
    assert isinstance(zfast.vacuum_to_air(6564), float)  # int in, float out
    grid = np.array([[5000.0, float("nan")], [6562.8, 1000.0]])
    out = zfast.air_to_vacuum(grid)
    assert out.shape == (2, 2) and out.dtype == np.float64
    assert math.isnan(out[0, 1]) and out[1, 1] == 1000.0
    assert zfast.air_to_vacuum(np.array([6563], dtype=np.int64)).dtype == np.float64
    assert zfast.air_to_vacuum(np.array([6562.8], dtype=np.float32)).dtype == np.float32
    tensor = torch.tensor([6562.8, float("nan")], dtype=torch.float32)
    converted = zfast.air_to_vacuum(tensor)
    assert isinstance(converted, torch.Tensor) and converted.dtype == torch.float32
    assert converted[0].item() == pytest.approx(6564.61, abs=0.01) and math.isnan(converted[1].item())
    strided = torch.linspace(3000.0, 20000.0, 101, dtype=torch.float64)[::3]  # non-contiguous
    torch.testing.assert_close(zfast.vacuum_to_air(strided), torch.from_numpy(zfast.vacuum_to_air(strided.numpy())))
