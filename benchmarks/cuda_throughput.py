"""Kernel throughput on a GPU at batch sizes where launch overhead no longer hides the kernel, timed with CUDA
events over back-to-back calls (the pytest benchmarks synchronise after every call, so at B = 4096 they time
the ~10-30 µs of Python dispatch and launch as much as the kernel).

    python benchmarks/cuda_throughput.py [--device cuda] [--out results.json]

redshift_resample (library of 10,000 random SEDs at dlnλ = 1/2000 and 1/6000, as bench_redshift_resample.py,
NISP red grism output M = 512): the op with check=False, and the device's write floor (``fill_`` of a B×M float32
output). Reported: spectra/s, the output's write bandwidth (B·M·4 bytes / time), and that as a fraction of the
fill's bandwidth — the issue's "≥ 50 % of the memory bandwidth for the bytes it must write". The kernel must
also read each spectrum's stretch of its cumulative row (~2-5x the output's bytes, see the header), which
this ratio charges to the kernel.

jsd_entropy (forward + backward of the mean loss, float32 [B, C], dense targets): zfast.jsd_entropy against the
eager reference (log_softmax + autograd), in rows/s.

On the CPU (for testing the script) the same runs with wall-clock timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_redshift_resample as rs

import zfast
from zfast.ops.jsd_entropy import jsd_entropy_reference


def timed(function, device: torch.device, calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call over ``calls`` back-to-back calls (after a warm-up)."""
    function()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                function()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            started = time.perf_counter()
            for _ in range(calls):
                function()
            samples.append((time.perf_counter() - started) / calls)
    samples.sort()
    return samples[len(samples) // 2]


def resample_rows(device: torch.device, batch_sizes, calls: int) -> list[dict]:
    rows = []
    edges = rs.observed_edges(device)
    n_bins = edges.numel() - 1
    for dln in rs.DLN_CASES:
        library = rs.build_library(dln).to(device)
        for batch in batch_sizes:
            sed_index, z = rs.random_spectra(batch, device)
            out_bytes = batch * n_bins * 4
            native = timed(
                functools.partial(library.redshift_resample, sed_index, z, edges, check=False), device, calls
            )
            checked = timed(functools.partial(library.redshift_resample, sed_index, z, edges), device, calls)
            buffer = torch.empty(batch, n_bins, device=device)
            floor = timed(functools.partial(buffer.fill_, 1.0), device, calls)
            expected = rs.redshift_resample_reference(
                library.cumulative, sed_index, z, edges, library.ln_edge0, library.dln
            )
            got = library.redshift_resample(sed_index, z, edges, check=False)
            error = ((got.double() - expected.double()).abs() / expected.double().abs()).max().item()
            rows.append(dict(op="redshift_resample", dln=rs.dln_label(dln), batch=batch, native_s=native, checked_s=checked,
                             floor_s=floor, spectra_per_s=batch / native, write_gb_per_s=out_bytes / native / 1e9,
                             floor_gb_per_s=out_bytes / floor / 1e9, fraction_of_floor=floor / native,
                             max_rel_error_vs_reference=error))  # fmt: skip
            print(f"redshift_resample dlnλ={rs.dln_label(dln)} B={batch}: native {native * 1e6:.1f} µs "
                  f"({batch / native / 1e6:.2f} M spectra/s, writes {out_bytes / native / 1e9:.0f} GB/s), checked "
                  f"{checked * 1e6:.1f} µs, fill {floor * 1e6:.1f} µs ({out_bytes / floor / 1e9:.0f} GB/s): "
                  f"{100 * floor / native:.0f} % of the write floor; max rel. error vs reference {error:.1e}", flush=True)  # fmt: skip
            del buffer
        del library
    return rows


def _loss_gradient(loss, logits, target):
    return torch.autograd.grad(loss(logits, target), logits)[0]


def jsd_rows(device: torch.device, batch_sizes, calls: int) -> list[dict]:
    rows = []
    for n_classes in (80, 800):
        for batch in batch_sizes:
            generator = torch.Generator().manual_seed(0)
            logits = (3.0 * torch.randn(batch, n_classes, generator=generator)).to(device).requires_grad_()
            target = torch.softmax(2.0 * torch.randn(batch, n_classes, generator=generator), dim=1).to(device)

            native = functools.partial(_loss_gradient, zfast.jsd_entropy, logits, target)
            eager = functools.partial(_loss_gradient, jsd_entropy_reference, logits, target)
            t_native, t_eager = timed(native, device, calls), timed(eager, device, calls)
            error = ((native() - eager()).abs().max() / eager().abs().max()).item()
            rows.append(dict(op="jsd_entropy", n_classes=n_classes, batch=batch, native_s=t_native, eager_s=t_eager,
                             rows_per_s=batch / t_native, speedup_vs_eager=t_eager / t_native,
                             max_rel_grad_difference=error))  # fmt: skip
            print(f"jsd_entropy C={n_classes} B={batch}: native {t_native * 1e6:.1f} µs ({batch / t_native / 1e6:.2f} M rows/s), "
                  f"eager {t_eager * 1e6:.1f} µs: {t_eager / t_native:.1f}x; grad rel. difference {error:.1e}", flush=True)  # fmt: skip
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", default="4096,65536,262144", help="comma-separated batch sizes")
    parser.add_argument("--calls", type=int, default=20, help="back-to-back calls per timing")
    parser.add_argument("--out", default="", help="write the rows as json here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch.split(",")]
    info = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
                native=zfast.native_available())  # fmt: skip
    print(info, flush=True)
    rows = resample_rows(device, batch_sizes, args.calls) + jsd_rows(device, batch_sizes, args.calls)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, rows=rows), indent=1, default=str))
    return 0 if all(math.isfinite(r["native_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
