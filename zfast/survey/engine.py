"""Inputs on Dask (``dask.distributed``, the optional extra ``zfast[dask]``): ``dask_results``.

One task per input file, ``zfast.survey.jobs.run_job``; the task carries only the paths and options, and each
worker process loads the model once for all the files it is given. A worker that dies (killed, out of memory)
takes its running task with it and Dask runs that task again on another worker, up to the scheduler's
``allowed-failures`` (3 by default): each input still ends up exactly once in the manifest, which only this
process writes. ``workers``: a ``LocalCluster`` of that many single-threaded worker processes on this machine
(torch's threads shared out over the cores); ``scheduler``: the address of a running cluster (``dask scheduler``,
``dask-jobqueue``), whose workers must have zfast installed and see the same file paths.
"""

from __future__ import annotations

import logging
from typing import Optional

from .jobs import run_job

CONNECT_TIMEOUT = "30s"  # how long --scheduler waits for the cluster before giving up


def _client(scheduler: Optional[str], workers: Optional[int]):
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ImportError("--workers / --scheduler run on dask.distributed: pip install 'zfast[dask]'") from error
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError) as error:
            raise OSError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({error})") from error
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)  # fmt: skip
    return Client(cluster), cluster


def dask_results(jobs: list, scheduler: Optional[str] = None, workers: Optional[int] = None):
    """Each job's manifest entry as its task finishes (any order). A task Dask gives up on (its workers kept
    dying) comes back as a "failed" entry naming the input; nothing else stops the others."""
    from distributed import as_completed

    client, cluster = _client(scheduler, workers)
    try:
        futures = {client.submit(run_job, job, key=f"zfast-predict-{i}-{job.input}", pure=False): job for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except Exception as error:  # noqa: BLE001 - KilledWorker, a worker-side bug: this input failed, not the run
                yield {"input": job.input, "catalogue": job.catalogue, "status": "failed",
                       "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}  # fmt: skip
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
