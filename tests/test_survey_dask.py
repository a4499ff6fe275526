"""Many inputs on Dask (zfast.survey.engine): a 2-worker LocalCluster on loopback writes the same bytes as one
process, and a worker killed by PID mid-run still leaves every input exactly once in the manifest and the merge."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from zfast.survey import predict_files
from zfast.survey.manifest import NAME

from test_survey import entries, merged_rows, write_inputs

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


def catalogue_bytes(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.zfast.*")}


def test_two_local_workers_write_the_bytes_of_one_process(trained, model, tmp_path):
    pytest.importorskip("pyarrow")
    write_inputs(tmp_path / "in", model, sizes=(31, 40, 17, 25), folders=("a", "b", "b", "c"))
    one = predict_files([trained[0]], [tmp_path / "in"], tmp_path / "one", catalogue_format="parquet",
                        merge=tmp_path / "one.parquet", device="cpu", progress=False)  # fmt: skip
    two = predict_files([trained[0]], [tmp_path / "in"], tmp_path / "two", catalogue_format="parquet",
                        merge=tmp_path / "two.parquet", device="cpu", progress=False, workers=2)  # fmt: skip
    assert one.n_done == two.n_done == 4 and two.n_failed == 0
    assert catalogue_bytes(tmp_path / "one") == catalogue_bytes(tmp_path / "two") and len(catalogue_bytes(tmp_path / "one")) == 4
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert len({e["pid"] for e in entries(tmp_path / "two")} - {os.getpid()}) >= 1  # the work ran in the workers


def test_a_worker_killed_mid_run_leaves_every_input_exactly_once(trained, model, tmp_path):
    sizes = (2500,) * 8
    write_inputs(tmp_path / "in", model, sizes=sizes, folders=("a",) * 8)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    killed = {}

    def kill_one_worker():
        deadline = time.time() + 120
        while time.time() < deadline:
            if (tmp_path / "out" / NAME).exists() and len(entries(tmp_path / "out")) >= 1:
                pids = sorted(client.run(os.getpid).values())
                killed["pid"], killed["recorded"] = pids[0], len(entries(tmp_path / "out"))
                os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    try:
        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        run = predict_files([trained[0]], [tmp_path / "in"], tmp_path / "out", catalogue_format="csv", merge=tmp_path / "all.csv",
                            device="cpu", progress=False, scheduler=cluster.scheduler_address, batch_size=100)  # fmt: skip
        killer.join()
    finally:
        client.close()
        cluster.close()
    assert "pid" in killed and killed["recorded"] < 8, "the run ended before a worker could be killed: give it more work"
    assert (run.n_done, run.n_failed) == (8, 0)
    recorded = entries(tmp_path / "out")
    assert sorted(Counter(e["input"] for e in recorded).values()) == [1] * 8 and all(e["status"] == "done" for e in recorded)
    ids, labels = merged_rows(tmp_path / "all.csv", "csv")
    assert Counter(labels) == {f"tile_{k:03d}.npz": 2500 for k in range(8)} and len(set(ids)) == len(ids) == 20_000
    reference = predict_files([trained[0]], [tmp_path / "in"], tmp_path / "ref", catalogue_format="csv", device="cpu", progress=False)
    assert reference.n_done == 8 and catalogue_bytes(tmp_path / "ref") == catalogue_bytes(tmp_path / "out")


def test_an_unreachable_scheduler_is_one_line_naming_it(trained, model, tmp_path, monkeypatch, capsys):
    from zfast.cli import predict as predict_cli
    from zfast.survey import engine

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", "1s")
    write_inputs(tmp_path / "in", model, sizes=(3,), folders=("a",))
    with pytest.raises(SystemExit, match=r"--scheduler tcp://127.0.0.1:9: cannot reach the Dask scheduler"):
        predict_cli.main(["--checkpoint", str(trained[0]), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                          "--scheduler", "tcp://127.0.0.1:9", "--device", "cpu"])  # fmt: skip


def test_auto_device_pins_each_worker_to_its_own_gpu(monkeypatch):
    import torch

    from zfast.survey import jobs

    class Worker:
        def __init__(self, name):
            self.name = name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    seen = []
    for name in (0, 1, 5, "7"):
        monkeypatch.setattr(distributed, "get_worker", lambda name=name: Worker(name))
        seen.append(jobs.worker_device("auto"))
    assert seen == ["cuda:0", "cuda:1", "cuda:1", "cuda:3"]
    assert jobs.worker_device("cpu") == "cpu" and jobs.worker_device("cuda:2") == "cuda:2"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert jobs.worker_device("auto") == "auto"  # one GPU: nothing to share out
