"""The training run: set-up, the optimisation loop with periodic validation and atomic checkpoints, exact resume,
DDP under torchrun, and a clean stop on SIGTERM/SIGINT.

A run folder holds: config.json (the resolved configuration), splits.json (the SEDs of each set), last.pt and
best.pt (``zfast.checkpoint``; best by validation σ_NMAD), metrics.csv (one row per evaluation), metrics.json (the
final test metrics) and plots/*.png.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import checkpoint as checkpoints
from ..bins import redshift_bin_edges
from ..checkpoint import RunCheckpoint
from ..data import AugmentedSpectra, save_splits
from ..data.sets import load_library
from ..devices import pick_device
from ..files import write_text
from .config import SEEDS, TrainConfig
from .averaging import WeightAverage
from .evaluation import evaluate, finish, run_network
from .loss import training_loss
from .streams import augmented, make_instrument, n_outside, outside_stream, splits, validation_set

COLUMNS = ["step", "train_loss", "val_loss", "val_mae", "val_sigma_nmad", "val_outlier_003", "val_outlier_01", "lr"]


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --- several processes ------------------------------------------------------------------------------------
def setup_distributed(c: TrainConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on GPUs (one per
    local rank), gloo on the CPU."""
    device = pick_device(c.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device, 0, 1
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), world


def gather_rows(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """[world, ...]: ``tensor`` of every rank (CPU byte tensors such as RNG states), stacked."""
    if world == 1:
        return tensor[None]
    import torch.distributed as dist

    on_gpu = dist.get_backend() == "nccl"  # NCCL moves CUDA tensors only
    local = tensor.cuda() if on_gpu else tensor
    rows = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(rows, local)
    return torch.stack(rows).cpu()


def any_rank(flag: bool, world: int) -> bool:
    """Whether any rank asked to stop (so that all stop at the same step and no collective hangs)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world


# --- one process's run ------------------------------------------------------------------------------------
@dataclass
class Session:
    """Everything one training process holds."""

    c: TrainConfig
    device: torch.device
    rank: int
    world: int
    out: Path
    library: object
    instrument: object
    train: AugmentedSpectra
    outside: Optional[AugmentedSpectra]
    val: tuple
    edges: torch.Tensor
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: object
    average: Optional[WeightAverage] = None  # with --ema: the averaged network, the one validated and saved
    step: int = 0
    best: float = math.inf
    # The training loss summed over the steps since the last validation, and their count: part of the resume
    # state, so the first metrics.csv row after a resume averages the whole interval, as without the stop.
    loss_sum: Optional[torch.Tensor] = None
    loss_steps: int = 0

    def __post_init__(self):
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=self.device)

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def network(self) -> torch.nn.Module:
        """The network validated and checkpointed: the weight average with --ema, else the trained weights."""
        return self.model if self.average is None else self.average.module


def start(c: TrainConfig, device: torch.device, rank: int, world: int) -> Session:
    """A fresh session: the run folder's config.json and splits.json, the streams, the network, the optimiser."""
    out = Path(c.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(dict(dataclasses.asdict(c), world_size=world), indent=1))
    torch.manual_seed(c.seed)
    library = load_library(c.library).to(device)
    instrument = make_instrument(c)
    if rank == 0:
        save_splits(out / "splits.json", splits(c, library), n_seds=len(library), seed=c.split_seed, library=c.library)
    stream_seed = c.seed + SEEDS.rank_stride * rank  # each rank draws its own stream
    train = augmented(c, library, instrument, "train", stream_seed)
    beyond = n_outside(c)
    outside = outside_stream(c, library, instrument, "train", beyond, stream_seed + SEEDS.outside_stream) if beyond else None
    val = validation_set(c, library, instrument)
    edges = redshift_bin_edges(c.z_min, c.z_max, c.n_bins).to(device)
    model = run_network(c, device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=c.lr, total_steps=c.steps, pct_start=0.1)
    average = WeightAverage(model, c.ema) if c.ema > 0 else None
    return Session(c, device, rank, world, out, library, instrument, train, outside, val, edges, model, optimiser, scheduler,
                   average)  # fmt: skip


def restore(s: Session, checkpoint: RunCheckpoint) -> None:
    """Continue ``s`` exactly where ``checkpoint`` stopped: weights, optimiser, schedule and every random stream."""
    resume = checkpoint.resume
    if not resume:
        raise ValueError("the checkpoint holds no resume state (an ensemble member or a converted file): start a new run")
    generators = resume["augment_generators"]
    if generators.shape[0] != s.world:
        raise ValueError(f"the checkpoint was written by {generators.shape[0]} processes; resume it with as many, not {s.world}")
    if s.average is not None:
        if "trained_model" not in resume:
            raise ValueError("the checkpoint was written without --ema: resume it without --ema, or start a new run")
        s.model.load_state_dict(resume["trained_model"])
        s.average.module.load_state_dict(checkpoint.model)
        s.average.updates = int(resume["ema_updates"])
    else:
        if "trained_model" in resume:
            raise ValueError("the checkpoint was written with --ema: resume it with the same --ema")
        s.model.load_state_dict(checkpoint.model)
    s.optimiser.load_state_dict(resume["optimiser"])
    s.scheduler.load_state_dict(resume["scheduler"])
    s.train.load_state_dict({"generator": generators[s.rank]})
    if s.outside is not None:
        s.outside.load_state_dict({"generator": resume["outside_generators"][s.rank]})
    torch.set_rng_state(resume["torch_rngs"][s.rank])
    if s.device.type == "cuda" and "cuda_rngs" in resume:
        torch.cuda.set_rng_state(resume["cuda_rngs"][s.rank], s.device)
    s.step, s.best = checkpoint.step, checkpoint.best
    if "loss_sum" in resume:  # absent in checkpoints written before it was stored
        s.loss_sum = resume["loss_sum"][s.rank].reshape(()).to(s.device)
        s.loss_steps = int(resume["loss_steps"])


def snapshot(s: Session) -> RunCheckpoint:
    """The run's checkpoint now (every rank must call it: the RNG states of all ranks are gathered)."""
    resume = dict(optimiser=s.optimiser.state_dict(), scheduler=s.scheduler.state_dict(),
                  augment_generators=gather_rows(s.train.state_dict()["generator"], s.world),
                  torch_rngs=gather_rows(torch.get_rng_state(), s.world),
                  loss_sum=gather_rows(s.loss_sum.detach().float().cpu(), s.world), loss_steps=s.loss_steps)  # fmt: skip
    if s.outside is not None:
        resume["outside_generators"] = gather_rows(s.outside.state_dict()["generator"], s.world)
    if s.device.type == "cuda":
        resume["cuda_rngs"] = gather_rows(torch.cuda.get_rng_state(s.device), s.world)
    if s.average is not None:  # the checkpoint's model is the average (what predict loads); the trained weights resume
        resume["trained_model"], resume["ema_updates"] = s.model.state_dict(), s.average.updates
    return RunCheckpoint(dataclasses.asdict(s.c), s.network.state_dict(), s.step, s.best, resume)


def save_as(s: Session, *names: str) -> None:
    payload = snapshot(s)
    if s.main_rank:
        for name in names:
            checkpoints.save(s.out / name, payload)


def metrics_rows(path: Path, step: int) -> str:
    """metrics.csv's text for a run at ``step``: the header and the complete rows of steps <= ``step`` (a row
    appended after the checkpoint being resumed, by a run killed before that step's checkpoint, is done again;
    a half-written line is dropped). ``step`` < 0: a new run, only the header."""
    rows = [COLUMNS]
    if step >= 0 and path.exists():
        with open(path, newline="") as stream:
            kept = [r for r in list(csv.reader(stream))[1:] if len(r) == len(COLUMNS) and r[0].isdigit()]
        rows += [r for r in kept if int(r[0]) <= step]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def validate(s: Session, train_loss: float, interactive: bool) -> None:
    """A validation pass: a metrics.csv row and a log line, then last.pt (and best.pt on a new best σ_NMAD)."""
    c = s.c
    network = s.network
    metrics, _ = evaluate(network, c, s.val, s.edges)  # identical weights and set on every rank
    with torch.no_grad():
        network.eval()
        val_loss = training_loss(c, network(s.val[0]), s.val[2], s.edges, s.step).item()
        network.train()
    row = [s.step, train_loss, val_loss, metrics["mae"], metrics["sigma_nmad"],
           metrics["outlier_003"], metrics["outlier_01"], s.scheduler.get_last_lr()[0]]  # fmt: skip
    if s.main_rank:
        with open(s.out / "metrics.csv", "a", newline="") as stream:
            csv.writer(stream, lineterminator="\n").writerow(row)
        line = "  ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(COLUMNS, row))
        print(("\n" if interactive else "") + line, file=sys.stderr)
    if metrics["sigma_nmad"] < s.best:
        s.best = metrics["sigma_nmad"]
        save_as(s, "best.pt", "last.pt")
    else:
        save_as(s, "last.pt")


def optimise(s: Session, stop: StopRequested) -> None:
    """Steps until ``steps`` or a stop request, validating every ``eval_every`` steps."""
    c, world = s.c, s.world
    forward = s.model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(s.model, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    if c.compile:
        forward = torch.compile(forward)
    mixed_precision = c.amp == "bf16" or (c.amp == "auto" and s.device.type == "cuda")
    beyond = n_outside(c)
    interactive = s.main_rank and sys.stderr.isatty()
    shown, started = 0, time.perf_counter()
    while s.step < c.steps and not any_rank(stop.requested, world):
        flux, _, z, _ = next(s.train)
        if s.outside is not None:
            flux = torch.cat([flux, next(s.outside)[0]])
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=mixed_precision):
            output = forward(flux)
        loss = training_loss(c, output.float(), z, s.edges, s.step, beyond)  # the loss in float32
        s.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        s.optimiser.step()
        s.scheduler.step()
        if s.average is not None:
            s.average.update(s.model)
        s.step += 1
        s.loss_sum += loss.detach()  # no host sync per step
        s.loss_steps += 1
        shown += 1
        if interactive and s.step % 10 == 0:
            rate = shown * c.batch_size * world / (time.perf_counter() - started)
            print(f"\rstep {s.step}/{c.steps}  loss {s.loss_sum.item() / s.loss_steps:.4f}  {rate:,.0f} spectra/s", end="", file=sys.stderr)
        if s.step % c.eval_every == 0 or s.step == c.steps:
            train_loss = mean_over_ranks(s.loss_sum, world).item() / s.loss_steps
            s.loss_sum, s.loss_steps = torch.zeros((), device=s.device), 0  # before validate's checkpoint
            validate(s, train_loss, interactive)
            shown, started = 0, time.perf_counter()


def run_process(c: TrainConfig, resume: Optional[RunCheckpoint], device: torch.device, rank: int, world: int) -> dict:
    """One process's run: train (or resume), then, on rank 0 of a finished run, ``finish`` (test metrics, plots)."""
    s = start(c, device, rank, world)
    if resume is not None:
        restore(s, resume)
    metrics_csv = s.out / "metrics.csv"
    if s.main_rank:
        write_text(metrics_csv, metrics_rows(metrics_csv, s.step if resume is not None else -1))
    stop = StopRequested()
    try:
        optimise(s, stop)
        save_as(s, "last.pt")
    finally:
        stop.restore()
    if s.step < c.steps:
        if s.main_rank:
            print(f"\nstopped at step {s.step}: checkpoint saved to {s.out / 'last.pt'}", file=sys.stderr)
        return {"stopped_at": s.step}
    if not s.main_rank:
        return {}
    return finish(c, s.out, s.model, s.instrument, s.library, s.edges)


def run(c: TrainConfig, resume: Optional[RunCheckpoint] = None) -> dict:
    """Train ``c`` (from ``resume``'s state if given) in this process, or as one rank under torchrun."""
    device, rank, world = setup_distributed(c)
    if world == 1:
        return run_process(c, resume, device, rank, world)
    import torch.distributed as dist

    try:
        result = run_process(c, resume, device, rank, world)
        # Rank 0 evaluates the test set and draws the plots while the others wait here: all ranks then leave
        # together (a rank that tore its process group down early aborted at exit, seen under gloo).
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()
