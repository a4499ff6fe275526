"""Spectra/s table and speed ratios from a pytest-benchmark JSON of benchmarks/bench_redshift_resample.py.

Usage (from the repository root):

    pytest benchmarks/bench_redshift_resample.py --benchmark-only --benchmark-json=results.json
    python benchmarks/report.py results.json

Spectra/s is B / mean time per call. Printed: one row per provider, one column per (dlnλ, B) case; then,
per case, native/torch.compile, native/torch, native/spectres, native-nocheck/native (the cost of the value
checks), native-nocheck/native-portable (the gain of the AVX-512 edge loop) and memory-floor/native (how far
native is from merely writing its output), all as speed ratios
(> 1: the numerator is faster); then native's speed at dlnλ = 1/6000 relative to 1/2000 for each B.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

Case = tuple[str, int]  # (dlnλ label such as "1/2000", batch size B)

SPEED_RATIOS = (
    ("native", "torch.compile"),
    ("native", "torch"),
    ("native", "spectres"),
    ("native-nocheck", "native"),
    ("native-nocheck", "native-portable"),
    ("memory-floor", "native"),
    ("memory-floor-dram", "native"),
)
FINE_DLN, COARSE_DLN = "1/6000", "1/2000"


def load_speeds(path: Path) -> tuple[dict[Case, dict[str, float]], str]:
    """({case: {provider: spectra/s}} in run order, a line naming the device and thread count)."""
    data = json.loads(Path(path).read_text())
    if not data["benchmarks"]:
        raise SystemExit(f"{path} holds no benchmarks (was it run with --benchmark-disable?)")
    speeds: dict[Case, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        case = (info["dln_label"], info["batch_size"])
        speeds.setdefault(case, {})[info["provider"]] = info["batch_size"] / bench["stats"]["mean"]
    first = data["benchmarks"][0]["extra_info"]
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "unknown CPU")
    setting = f"device {first['device']}, {first['threads']} torch threads, host CPU {cpu}"
    return speeds, setting


def case_name(case: Case) -> str:
    return f"dlnλ={case[0]} B={case[1]}"


def format_table(speeds: dict[Case, dict[str, float]]) -> str:
    cases = list(speeds)
    providers = list(dict.fromkeys(provider for by_provider in speeds.values() for provider in by_provider))
    width = max(len(case_name(case)) for case in cases) + 2
    lines = ["spectra/s (B / mean time)", f"{'provider':<16}" + "".join(f"{case_name(c):>{width}}" for c in cases)]
    for provider in providers:
        cells = (f"{speeds[c][provider]:>{width},.0f}" if provider in speeds[c] else f"{'-':>{width}}" for c in cases)
        lines.append(f"{provider:<16}" + "".join(cells))
    return "\n".join(lines)


def format_ratios(speeds: dict[Case, dict[str, float]]) -> str:
    cases = list(speeds)
    width = max(len(case_name(case)) for case in cases) + 2
    lines = ["speed ratios", f"{'':<30}" + "".join(f"{case_name(c):>{width}}" for c in cases)]
    for numerator, denominator in SPEED_RATIOS:
        cells = (
            f"{speeds[c][numerator] / speeds[c][denominator]:>{width}.3g}"
            if numerator in speeds[c] and denominator in speeds[c]
            else f"{'-':>{width}}"
            for c in cases
        )
        lines.append(f"{numerator + ' / ' + denominator:<30}" + "".join(cells))
    for batch_size in sorted({b for _, b in cases}):
        fine, coarse = speeds.get((FINE_DLN, batch_size), {}), speeds.get((COARSE_DLN, batch_size), {})
        if "native" in fine and "native" in coarse:
            lines.append(
                f"native at dlnλ={FINE_DLN} / at {COARSE_DLN}, B={batch_size}: {fine['native'] / coarse['native']:.3g}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON written by pytest --benchmark-json")
    speeds, setting = load_speeds(parser.parse_args(argv).results)
    print(setting, format_table(speeds), format_ratios(speeds), sep="\n\n")


if __name__ == "__main__":
    main()
