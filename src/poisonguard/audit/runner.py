"""Running the per-model audits: in this process (tests, one model at a time) or on Ray.

Both executors take jobs `(key, item, settings)` and call `on_start(job)` when a job is handed
to a worker and `on_result(job, result)` as each one finishes, in the driver's thread (which
is the only writer of `audit.db`). The Ray executor keeps one actor per worker, each limited
to its share of the CPU threads (and given one GPU when there are enough), hands each actor
one model at a time, and turns a worker that crashes or overruns `timeout` into a `failed`
result before replacing it, so one bad model never stops the audit.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from poisonguard.audit.discover import AuditItem
from poisonguard.audit.settings import AuditSettings
from poisonguard.errors import UserError

log = logging.getLogger(__name__)

Task = Callable[[AuditItem, AuditSettings], dict]


@dataclass(frozen=True)
class Job:
    key: tuple[str, str]  # (file sha256, settings hash)
    item: AuditItem
    settings: AuditSettings


def failed(error: str, item: AuditItem, seconds: float) -> dict[str, Any]:
    """A result for a model whose worker died or overran: nothing but the error is known."""
    return {"status": "failed", "format": item.format, "file_safety": None, "file_findings": [], "verdict": None,
            "error": error, "seconds": round(seconds, 3), "report_json": None, "report_html": None}


class InProcessExecutor:
    """Runs each job in this process, one after another; no timeout (a hang hangs the caller)."""

    workers = 1

    def __init__(self, task: Task) -> None:
        self.task = task

    def run(self, jobs: list[Job], on_start, on_result) -> None:
        for job in jobs:
            on_start(job)
            on_result(job, self.task(job.item, job.settings))


class _AuditActor:
    """One Ray worker: a process that keeps its threads limited and its loaded data between models."""

    def __init__(self, task: Task, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.task = task

    def ready(self) -> int:
        return os.getpid()

    def run(self, item: AuditItem, settings: AuditSettings) -> dict:
        return self.task(item, settings)


def check_address(address: str, *, timeout: float = 3.0) -> None:
    """UserError unless `address` (HOST:PORT of a Ray head) accepts a connection now.

    Checked before `ray.init`, which would otherwise retry for a long time.
    """
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT of a Ray head node (e.g. 127.0.0.1:6379), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray head reachable ({exc.strerror or exc})") from exc


class RayExecutor:
    """A local Ray instance with `workers` actors, or the cluster at `address`.

    Args:
        task: the per-model function (pickled to the workers).
        workers: how many models run at once.
        address: HOST:PORT of an existing Ray cluster; None starts a local instance.
        timeout: seconds a model may take on its worker before it is recorded failed.
        threads: CPU threads per worker (default: this machine's cores divided among the workers).
    """

    def __init__(self, task: Task, *, workers: int, address: str | None = None, timeout: float = 1800.0,
                 threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.task, self.workers, self.address, self.timeout = task, int(workers), address, float(timeout)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        self.started_ray = False

    # ------------------------------------------------------------------ Ray start and stop

    def _init(self) -> dict[str, float]:
        try:
            import ray
        except ImportError as exc:
            raise UserError("poisonguard audit runs its workers on Ray, which is not installed: "
                            "pip install 'poisonguard[audit]'") from exc

        import poisonguard

        # Ray would otherwise warn on every start; a worker without a GPU share sees none anyway.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

        # Workers import the same poisonguard as this driver (a checkout on PYTHONPATH, say).
        here = str(Path(poisonguard.__file__).resolve().parents[1])
        path = os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        env = {"env_vars": {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                            "PYTHONPATH": path}}
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                 "configure_logging": False}
        if self.address:
            check_address(self.address)
            try:
                ray.init(address=self.address, runtime_env=env, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--address {self.address}: cannot join the Ray cluster: {str(exc).splitlines()[0]}") from exc
        else:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            # address="local" starts a fresh instance even when another cluster runs on this machine.
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, self.workers * self.threads), num_gpus=gpus,
                     object_store_memory=128 * 1024 * 1024, runtime_env=env, **quiet)
        self.started_ray = True
        return ray.cluster_resources()

    def _actor_class(self, resources: dict[str, float]):
        import ray

        gpus = float(resources.get("GPU", 0))
        # One GPU per worker when there are enough; otherwise the GPUs are shared evenly.
        per_gpu = 0 if gpus == 0 else (1 if gpus >= self.workers else gpus / self.workers)
        cpus = min(self.threads, max(1.0, float(resources.get("CPU", 1)) // self.workers))
        return ray.remote(num_cpus=cpus, num_gpus=per_gpu, max_restarts=0, max_task_retries=0)(_AuditActor)

    # ------------------------------------------------------------------ the loop

    def run(self, jobs: list[Job], on_start, on_result) -> None:
        if not jobs:
            return
        import ray
        from ray.exceptions import RayActorError

        resources = self._init()
        try:
            actor_cls = self._actor_class(resources)
            n = min(self.workers, len(jobs))
            starting = {}  # ready() ref -> actor
            for _ in range(n):
                actor = actor_cls.remote(self.task, self.threads)
                starting[actor.ready.remote()] = actor
            idle: list = []
            pending = deque(jobs)
            running: dict = {}  # run() ref -> (job, actor, start time)
            start_failures = 0
            while pending or running:
                while idle and pending:
                    job, actor = pending.popleft(), idle.pop()
                    on_start(job)
                    running[actor.run.remote(job.item, job.settings)] = (job, actor, time.monotonic())
                if not running and not starting:
                    raise RuntimeError("no Ray worker could be started")
                now = time.monotonic()
                wait_for = min((t0 + self.timeout - now for _, _, t0 in running.values()), default=None)
                refs = list(running) + list(starting)
                ray.wait(refs, num_returns=1, timeout=None if wait_for is None else max(0.0, wait_for))
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in starting:
                        actor = starting.pop(ref)
                        try:
                            ray.get(ref)
                            idle.append(actor)
                            start_failures = 0
                        except Exception as exc:  # the worker could not even start
                            start_failures += 1
                            log.warning("a Ray worker failed to start: %s", str(exc).splitlines()[0])
                            if start_failures > 2 * self.workers:
                                raise RuntimeError(f"Ray workers keep failing to start: {str(exc).splitlines()[0]}") from exc
                            new = actor_cls.remote(self.task, self.threads)
                            starting[new.ready.remote()] = new
                        continue
                    job, actor, t0 = running.pop(ref)
                    try:
                        result = ray.get(ref)
                        idle.append(actor)
                    except RayActorError as exc:
                        result = failed(f"worker crashed: {str(exc).strip().splitlines()[0]}", job.item, time.monotonic() - t0)
                        new = actor_cls.remote(self.task, self.threads)
                        starting[new.ready.remote()] = new
                    except Exception as exc:  # the task raised past audit_one's guard (e.g. it could not be unpickled)
                        result = failed(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", job.item,
                                        time.monotonic() - t0)
                        idle.append(actor)
                    on_result(job, result)
                now = time.monotonic()
                for ref, (job, actor, t0) in list(running.items()):
                    if now - t0 >= self.timeout:
                        running.pop(ref)
                        ray.kill(actor, no_restart=True)  # a hung model: stop its process, keep going
                        on_result(job, failed(f"timed out after {self.timeout:g} s", job.item, now - t0))
                        new = actor_cls.remote(self.task, self.threads)
                        starting[new.ready.remote()] = new
        finally:
            ray.shutdown()
