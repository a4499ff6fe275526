"""zfast.flags: one table of flags, bits and thresholds; ZWARN packs them."""

from __future__ import annotations

import math

import torch

from zfast import flags


def test_the_tables_have_distinct_bits_and_names_and_redrock_numbers():
    assert len({b.bit for b in flags.ZWARN_BITS}) == len({b.name for b in flags.ZWARN_BITS}) == len(flags.ZWARN_BITS)
    assert flags.FLAG_NAMES == ("flag_z_range", "flag_few_pixels", "flag_ood")
    # Where redrock's ZWarningMask has the same meaning, its bit number; zfast's own in redrock's reserved 16-23.
    redrock = {"LITTLE_COVERAGE": 1, "SMALL_DELTA_CHI2": 2, "Z_FITLIMIT": 5, "NODATA": 9}
    for bit in flags.ZWARN_BITS:
        assert bit.bit == redrock[bit.name] if bit.name in redrock else 16 <= bit.bit <= 23


def test_z_range_flag_at_the_ends_and_from_p_outside():
    z = torch.tensor([1.0, 1.0039, 1.0041, 1.4, 1.4, 1.7959, 1.7961], dtype=torch.float64)
    p = torch.tensor([0.0, 0.0, 0.0, 0.49, 0.51, 0.0, math.nan], dtype=torch.float64)
    # margin 0.005 x 0.8 = 0.004 at either end of [1, 1.8)
    assert flags.z_range_flag(z, p, 1.0, 1.8).tolist() == [True, True, False, False, True, False, True]
    assert flags.z_range_flag(z, None, 1.0, 1.8).tolist() == [True, True, False, False, False, False, True]


def test_few_pixels_and_ood_flags():
    assert flags.few_pixels_flag(torch.tensor([0.49, 0.5, 1.0])).tolist() == [True, False, False]
    assert flags.few_pixels_flag(torch.tensor([0.7]), min_valid=0.8).tolist() == [True]
    score = torch.tensor([0.5, 2.0, math.nan], dtype=torch.float64)
    assert flags.ood_flag(score, 1.0).tolist() == [False, True, False]
    assert flags.ood_flag(score, None).tolist() == [False, False, False]


def _result(n, generator):
    return dict(z=1.0 + 0.8 * torch.rand(n, generator=generator, dtype=torch.float64),
                valid_fraction=torch.rand(n, generator=generator, dtype=torch.float64) * (torch.rand(n, generator=generator) < 0.8),
                p_outside=torch.rand(n, generator=generator, dtype=torch.float64),
                flag_ood=torch.rand(n, generator=generator) < 0.3,
                deltachi2=20 * torch.rand(n, generator=generator, dtype=torch.float64),
                z_template=1.0 + 0.8 * torch.rand(n, generator=generator, dtype=torch.float64))  # fmt: skip


def test_zwarn_sets_each_bit_by_its_own_rule(generator):
    result = _result(400, generator)
    result["z"][:3], result["z"][3:6] = 1.001, 1.799  # at the ends: Z_FITLIMIT exercised on every seed
    word = flags.zwarn(result, (1.0, 1.8), min_valid=0.5)
    z, f = result["z"], result["valid_fraction"]
    expected = {"LITTLE_COVERAGE": (f > 0) & (f < 0.5), "NODATA": f == 0,
                "Z_FITLIMIT": (z < 1.004) | (z > 1.796), "OOD": result["flag_ood"],
                "OUTSIDE_RANGE": result["p_outside"] > 0.5, "SMALL_DELTA_CHI2": result["deltachi2"] < flags.DELTACHI2_MIN,
                "FIT_DISAGREES": (z - result["z_template"]).abs() / (1 + z) > 0.01}  # fmt: skip
    for bit in flags.ZWARN_BITS:
        assert torch.equal((word >> bit.bit) & 1 == 1, expected[bit.name]), bit.name
        assert expected[bit.name].any() and not expected[bit.name].all(), bit.name  # the test exercises both sides
    assert word.dtype == torch.int64


def test_zwarn_without_pz_or_templates_never_raises_their_bits(generator):
    result = _result(200, generator)
    del result["z_template"]
    result["deltachi2"] = torch.full_like(result["z"], math.nan)
    word = flags.zwarn(result, (1.0, 1.8))
    assert not ((word & (flags.BIT["SMALL_DELTA_CHI2"] | flags.BIT["FIT_DISAGREES"])) != 0).any()


def test_zwarn_uses_the_threshold_it_is_given(generator):
    result = _result(300, generator)
    result["deltachi2"][:5] = math.inf  # single-peaked P(z): no second candidate
    result["deltachi2"][5:10] = math.nan  # no P(z)
    bit = flags.BIT["SMALL_DELTA_CHI2"]
    d = result["deltachi2"]
    for threshold in (0.0, 3.3, 17.0):
        word = flags.zwarn(result, (1.0, 1.8), deltachi2_min=threshold)
        assert torch.equal((word & bit) != 0, d < threshold)
    # Infinite (no threshold made the model's ZWARN = 0 pure): every P(z) flagged, single-peaked ones too.
    word = flags.zwarn(result, (1.0, 1.8), deltachi2_min=math.inf)
    assert torch.equal((word & bit) != 0, ~d.isnan())


def test_the_boolean_flags_are_their_zwarn_bits(generator):
    result = _result(300, generator)
    result["flag_z_range"] = flags.z_range_flag(result["z"], result["p_outside"], 1.0, 1.8)
    result["flag_few_pixels"] = flags.few_pixels_flag(result["valid_fraction"], 0.5)
    word = flags.zwarn(result, (1.0, 1.8), min_valid=0.5)
    for flag in flags.FLAGS:
        assert torch.equal((word & flag.bits) != 0, result[flag.name]), flag.name
    assert torch.equal(flags.any_flag(result), result["flag_z_range"] | result["flag_few_pixels"] | result["flag_ood"])
