"""Time and peak-memory table and speed ratios from a pytest-benchmark JSON of benchmarks/bench_jsd_entropy.py.

Usage (from the repository root):

    pytest benchmarks/bench_jsd_entropy.py --benchmark-only --benchmark-json=jsd_results.json
    python benchmarks/report_jsd_entropy.py jsd_results.json

Printed: per provider and (B, C) case, the minimum and the median time of one forward + backward in ms (the
machine is shared and noisy: the minimum is the steadier figure) and the peak extra memory in MB and in units
of one B×C float32 buffer; then, per case (B, C, target kind), native's speed relative to torch.compile,
torch (eager) and native-nocheck, from the minimum times (> 1: native is faster).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

Case = tuple[int, int, str]  # (B, C, target kind)

SPEED_RATIOS = (("native", "torch.compile"), ("native", "torch"), ("native", "native-nocheck"))


def load(path: Path) -> tuple[dict[Case, dict[str, dict]], str]:
    """({case: {provider: {"min_ms", "median_ms", "peak_bytes", "peak_buffers"}}} in run order, a setting line)."""
    data = json.loads(Path(path).read_text())
    if not data["benchmarks"]:
        raise SystemExit(f"{path} holds no benchmarks (was it run with --benchmark-disable?)")
    results: dict[Case, dict[str, dict]] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        results.setdefault((info["batch_size"], info["n_classes"], info["target_kind"]), {})[info["provider"]] = {
            "min_ms": 1e3 * bench["stats"]["min"],
            "median_ms": 1e3 * bench["stats"]["median"],
            "peak_bytes": info.get("peak_extra_bytes"),
            "peak_buffers": info.get("peak_extra_buffers"),
        }
    first = data["benchmarks"][0]["extra_info"]
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "unknown CPU")
    setting = (
        f"device {first['device']}, {first['threads']} torch threads, host CPU {cpu}; "
        f"peak memory from {first.get('memory_method', 'unknown')}"
    )
    return results, setting


def case_name(case: Case) -> str:
    return f"B={case[0]} C={case[1]} {case[2]}"


def format_table(results: dict[Case, dict[str, dict]]) -> str:
    lines = [
        f"{'case':<20}{'provider':<16}{'min ms':>10}{'median ms':>11}{'peak MB':>10}{'peak / B×C f32':>16}",
    ]
    for case, by_provider in results.items():
        for provider, r in by_provider.items():
            peak_mb = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.2f}"
            peak_buffers = "-" if r["peak_buffers"] is None else f"{r['peak_buffers']:.2f}"
            lines.append(
                f"{case_name(case):<20}{provider:<16}{r['min_ms']:>10.3f}{r['median_ms']:>11.3f}"
                f"{peak_mb:>10}{peak_buffers:>16}"
            )
    return "\n".join(lines)


def format_ratios(results: dict[Case, dict[str, dict]]) -> str:
    """One row per case (the cases are many and the ratios few): native's speed over each other provider."""
    names = (f"{numerator} vs {denominator}" for numerator, denominator in SPEED_RATIOS)
    header = f"{'case':<20}" + "".join(f"{name:>32}" for name in names)
    lines = ["speed ratios (from min times; > 1: the first is faster)", header]
    for case, by_provider in results.items():
        cells = (
            f"{by_provider[denominator]['min_ms'] / by_provider[numerator]['min_ms']:>32.3g}"
            if numerator in by_provider and denominator in by_provider
            else f"{'-':>32}"
            for numerator, denominator in SPEED_RATIOS
        )
        lines.append(f"{case_name(case):<20}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON written by pytest --benchmark-json")
    results, setting = load(parser.parse_args(argv).results)
    print(setting, format_table(results), format_ratios(results), sep="\n\n")


if __name__ == "__main__":
    main()
