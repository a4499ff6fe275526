"""zfast.data.huge_pages: the library's cumulative in transparent-huge-page memory, values unchanged."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import zfast
from zfast.data import huge_pages


def mapping_fields(address: int) -> dict:
    """The /proc/self/smaps fields (AnonHugePages, VmFlags, ...) of the mapping that holds ``address``."""
    fields, current = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            if current:
                return fields
            current = int(head.group(1), 16) <= address < int(head.group(2), 16)
        elif current:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if current:
        return fields
    raise AssertionError(f"no mapping holds {address:#x}")


def thp_mode() -> str:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    match = re.search(r"\[(\w+)\]", path.read_text()) if path.exists() else None
    return match.group(1) if match else "never"


def test_small_tensors_are_returned_as_they_are(generator):
    small = torch.rand(100, 100, dtype=torch.float64, generator=generator)
    assert huge_pages.on_huge_pages(small) is small


def test_large_tensors_are_copied_with_the_same_values(generator):
    big = torch.rand(700, 5000, dtype=torch.float64, generator=generator)  # 28 MB
    copy = huge_pages.on_huge_pages(big)
    assert copy.shape == big.shape and copy.dtype == big.dtype and copy.is_contiguous()
    assert torch.equal(copy, big)
    if huge_pages._MADVISE is not None:
        assert copy.data_ptr() != big.data_ptr()


@pytest.mark.skipif(not sys.platform.startswith("linux") or thp_mode() == "never", reason="no transparent huge pages")
def test_library_cumulative_lands_on_huge_pages(generator):
    """A 64 MB library: its cumulative lies in memory advised for huge pages (VmFlags "hg"; whether the kernel
    then finds free 2 MB pages depends on the machine: 60 of 64 MB here), and holds the same values."""
    wavelength = torch.exp(torch.log(torch.tensor(3500.0)) + torch.arange(4000, dtype=torch.float64) / 2000)
    flux = torch.rand(2000, 4000, dtype=torch.float64, generator=generator) + 0.1
    library = zfast.SEDLibrary(wavelength, flux)
    cumulative = library.cumulative
    fields = mapping_fields(cumulative.data_ptr() + cumulative.numel() * 4)
    assert "hg" in fields["VmFlags"].split(), fields["VmFlags"]
    print(f"AnonHugePages of the library's mapping: {fields.get('AnonHugePages')}")
    plain = torch.cat([torch.zeros(2000, 1, dtype=torch.float64),
                       torch.cumsum(library.flux * torch.diff(library.edges), dim=1)], dim=1)  # fmt: skip
    torch.testing.assert_close(cumulative, plain, rtol=1e-12, atol=0)
