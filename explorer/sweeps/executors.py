"""Where a sweep's chunks run. Every worker builds its model once and keeps it.

* `LocalExecutor`: this process (workers = 1).
* `PoolExecutor`: a local pool of N spawned processes (`--workers N`, "auto" = one per core);
  each process loads the model in its initializer.
* `RayExecutor`: N Ray actors (`--ray auto` starts a local cluster, `--ray ADDRESS` joins one);
  each actor loads the model in its constructor; with GPUs in the cluster, each actor asks Ray
  for its share of them (`num_gpus`), so Ray places actors on GPUs and sets CUDA_VISIBLE_DEVICES.

Chunks are handed out as workers free up; results come back to the driver, which writes the shards
(workers need no shared filesystem). A chunk is the unit of resume: a kill loses at most the
chunks in flight.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from explorer.config import Settings
from explorer.errors import InputError
from explorer.sweeps.analyses import Models, run_chunk
from explorer.sweeps.rows import SweepRow


@dataclass(frozen=True)
class Job:
    """What every worker needs: the analysis, the model source, its parameters and settings.
    `model` is a name (None = the default) or a picklable zero-argument factory returning a
    loaded model (a tiny model built in code, say)."""

    analysis: str
    model: Any
    dtype: str | None
    params: dict[str, Any]
    settings: Settings


class SweepWorker:
    """One worker's state: the job and the model, built once (here, in a pool process or in a
    Ray actor)."""

    def __init__(self, job: Job, first: SweepRow | None = None) -> None:
        source = job.model
        if callable(source) and not hasattr(source, "model_id"):  # a factory: build it here, once
            source = source()
        self.job = job
        self.models = Models(source, job.dtype)
        if first is not None:  # load now, not inside the first chunk's timing
            self.models.for_row(job.analysis, first, job.settings)

    def run(self, rows: list[SweepRow]) -> dict[str, pa.Table]:
        return run_chunk(self.job.analysis, self.models, rows, self.job.params, self.job.settings)


class LocalExecutor:
    name = "local"
    workers = 1

    def __init__(self, job: Job, first: SweepRow | None) -> None:
        self.worker = SweepWorker(job, first)

    def map(self, chunks: list[list[SweepRow]]) -> Iterator[dict[str, pa.Table]]:
        for chunk in chunks:
            yield self.worker.run(chunk)

    def close(self) -> None:
        return None


_POOL_WORKER: list[SweepWorker] = []


def _pool_init(job: Job, first: SweepRow | None) -> None:
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    _POOL_WORKER[:] = [SweepWorker(job, first)]


def _pool_run(rows: list[SweepRow]) -> dict[str, pa.Table]:
    return _POOL_WORKER[0].run(rows)


class PoolExecutor:
    name = "pool"

    def __init__(self, job: Job, first: SweepRow | None, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang)
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_init,
            initargs=(job, first),
        )

    def map(self, chunks: list[list[SweepRow]]) -> Iterator[dict[str, pa.Table]]:
        from concurrent.futures import as_completed

        futures = [self.pool.submit(_pool_run, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _local_paths() -> str:
    """The driver's import path minus the interpreter's own directories, for Ray workers (a
    local cluster's workers must import what the driver imports, e.g. a test's model factory)."""
    system = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    keep = []
    for p in sys.path:
        real = os.path.realpath(p or os.getcwd())
        if not any(real.startswith(s + os.sep) or real == s for s in system) and os.path.isdir(real):
            keep.append(real)
    return os.pathsep.join(dict.fromkeys(keep))


class RayExecutor:
    name = "ray"

    def __init__(self, job: Job, first: SweepRow | None, workers: int, address: str) -> None:
        try:
            import ray
        except ImportError as exc:
            raise InputError("--ray needs Ray: pip install 'ray==2.*' (or token-explorer[ray])") from exc
        self.ray = ray
        self.workers = workers
        self.started = not ray.is_initialized()
        if self.started:
            env = {"PYTHONPATH": _local_paths(), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}
            env = {k: v for k, v in env.items() if v}
            try:
                if address == "auto":  # a local cluster, just for this sweep
                    ray.init(
                        num_cpus=max(workers, 1),
                        include_dashboard=False,
                        log_to_driver=False,
                        configure_logging=False,
                        runtime_env={"env_vars": env},
                    )
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"--ray {address}: cannot start or join a Ray cluster: {exc}") from exc
        gpus = float(ray.cluster_resources().get("GPU", 0))
        options: dict[str, Any] = {"num_cpus": 1}
        if gpus > 0:
            options["num_gpus"] = min(1.0, gpus / workers)
        actor: Any = ray.remote(**options)(SweepWorker)
        self.actors: list[Any] = [actor.remote(job, first) for _ in range(workers)]

    def map(self, chunks: list[list[SweepRow]]) -> Iterator[dict[str, pa.Table]]:
        ray = self.ray
        queue = list(enumerate(chunks))
        running: dict[Any, int] = {}  # object ref -> actor index
        free = list(range(len(self.actors)))
        while queue or running:
            while queue and free:
                actor_index = free.pop(0)
                _, chunk = queue.pop(0)
                running[self.actors[actor_index].run.remote(chunk)] = actor_index
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                free.append(running.pop(ref))
                yield ray.get(ref)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


def make_executor(
    job: Job, first: SweepRow | None, *, workers: int = 1, ray: str | None = None
) -> LocalExecutor | PoolExecutor | RayExecutor:
    if ray:
        return RayExecutor(job, first, workers, ray)
    if workers <= 1:
        return LocalExecutor(job, first)
    return PoolExecutor(job, first, workers)


def worker_count(value: int | str | None) -> int:
    """`workers`: a positive count, or "auto" / 0 = one per core."""
    if value is None:
        return 1
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return max(1, os.cpu_count() or 1)
        try:
            value = int(value)
        except ValueError:
            raise InputError(f"workers must be a positive integer or 'auto' (got {value!r})") from None
    if value == 0:
        return max(1, os.cpu_count() or 1)
    if not 1 <= value <= 256:
        raise InputError(f"workers must be in 1..256 or 'auto' (got {value})")
    return int(value)
