"""zfast.flags: one table of flags, bits and thresholds; ZWARN packs them."""

from __future__ import annotations

import math

import torch

from zfast import flags


def test_the_table_has_distinct_bits_and_names():
    assert len({f.bit for f in flags.FLAGS}) == len({f.name for f in flags.FLAGS}) == len(flags.FLAGS) == 3
    assert flags.FLAG_NAMES == ("flag_z_range", "flag_few_pixels", "flag_ood")


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


def test_zwarn_sets_each_flags_bit(generator):
    result = {name: torch.rand(50, generator=generator) < 0.4 for name in flags.FLAG_NAMES}
    word = flags.zwarn(result)
    for flag in flags.FLAGS:
        assert torch.equal((word >> flag.bit) & 1 == 1, result[flag.name])
    assert torch.equal(flags.any_flag(result), result["flag_z_range"] | result["flag_few_pixels"] | result["flag_ood"])
