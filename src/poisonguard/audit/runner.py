"""Running the per-model audits: in this process (tests, one model at a time) or on Ray.

Both executors take jobs `(key, item, settings)` and call `on_start(job)` when a job is handed
to a worker and `on_result(job, result)` as each one finishes, in the driver's thread (which
is the only writer of `audit.db`). The Ray executor keeps one actor per worker, each limited
to its share of the CPU threads (and given one GPU when there are enough), hands each actor
its next model before writing the last one's result, and turns a worker that crashes or
overruns `timeout` into a `failed` result before replacing it, so one bad model never stops
the audit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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

    def run(self, jobs: list[Job], on_start, on_result, *, before: Callable[[], None] | None = None) -> None:
        if before is not None:
            before()
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
        self._session_root: str | None = None  # a local instance's logs and sockets, removed at the end

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
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads), "PYTHONPATH": path}
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                 "configure_logging": False}
        if self.address:
            check_address(self.address)
            try:
                ray.init(address=self.address, runtime_env={"env_vars": env}, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--address {self.address}: cannot join the Ray cluster: {str(exc).splitlines()[0]}") from exc
        else:
            # A local instance's workers inherit the environment its processes start with, which
            # starts each worker about half a second sooner than a runtime_env would.
            # address="local" starts a fresh instance even when another cluster runs on this machine;
            # Ray finds the GPUs itself (importing torch here would add a second to every start).
            # Its own session folder, removed after shutdown: Ray's default /tmp/ray keeps every
            # session's logs (megabytes each) for ever. A short root keeps socket paths legal.
            parent = os.environ.get("RAY_TMPDIR", "/tmp")
            sweep_dead_sessions(parent)
            self._session_root = tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=parent)
            Path(self._session_root, OWNER_FILE).write_text(str(os.getpid()))
            with _environment(env):
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, self.workers * self.threads),
                         object_store_memory=128 * 1024 * 1024, _temp_dir=self._session_root, **quiet)
        return ray.cluster_resources()

    def _actor_class(self, resources: dict[str, float]):
        import ray

        gpus = float(resources.get("GPU", 0))
        # One GPU per worker when there are enough; otherwise the GPUs are shared evenly.
        per_gpu = 0 if gpus == 0 else (1 if gpus >= self.workers else gpus / self.workers)
        cpus = min(self.threads, max(1.0, float(resources.get("CPU", 1)) // self.workers))
        return ray.remote(num_cpus=cpus, num_gpus=per_gpu, max_restarts=0, max_task_retries=0)(_AuditActor)

    # ------------------------------------------------------------------ the loop

    def run(self, jobs: list[Job], on_start, on_result, *, before: Callable[[], None] | None = None) -> None:
        """Run `jobs`; `before()` (the caller's checks of its options) runs while Ray starts.

        Ray takes seconds to start and the checks load the data (about a second): side by
        side, the checks cost nothing. When they fail, Ray is stopped and their error raised.
        """
        if not jobs:
            return
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-checks") as pool:
                checks = pool.submit(before) if before is not None else None
                resources = self._init()
            if checks is not None:
                checks.result()  # their error, raised here
            with _terminate_as_interrupt():
                _Dispatcher(self, self._actor_class(resources), on_start, on_result).run(jobs)
        finally:
            self._stop()

    def _stop(self) -> None:
        ray = sys.modules.get("ray")  # not imported when Ray is missing (the error being raised says so)
        if ray is not None:
            ray.shutdown()
        if self._session_root is not None:
            shutil.rmtree(self._session_root, ignore_errors=True)
            self._session_root = None


SESSION_PREFIX = "pg-ray-"
OWNER_FILE = "owner.pid"


def sweep_dead_sessions(parent: str) -> None:
    """Remove the session folders of audits that died without cleaning up (`kill -9`): those whose
    owner process is gone. A folder whose owner cannot be read, or is alive, is left."""
    for root in Path(parent).glob(f"{SESSION_PREFIX}*"):
        try:
            pid = int((root / OWNER_FILE).read_text().strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
        except (OSError, ValueError):  # no owner file, not ours to judge, or alive under another user
            continue


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) ends the run as Ctrl-C does: Ray's own handler dumped
    a C++ stack trace and skipped our clean-up (the workers, the session folder, the lock).
    What finished is already committed, so a rerun resumes."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block (processes started in it inherit them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Slot:
    """One worker and the job it runs (None while idle)."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self.ref = None
        self.job: Job | None = None
        self.started = 0.0


class _Dispatcher:
    """The Ray executor's loop: keep every worker busy, turn crashes and overruns into failed rows.

    A worker that returns a result gets its next model before the driver writes the result's
    report files and database row (tens of milliseconds on 2 cores, about 5% of a small model's
    scan), so the worker does not wait on the driver's disk. A worker holds one model at a time:
    queueing a second on it would gain a few more milliseconds, but when the second kills the
    worker the moment it starts, Ray can lose the first one's finished result with the process.
    """

    def __init__(self, executor: RayExecutor, actor_cls, on_start, on_result) -> None:
        self.executor, self.actor_cls = executor, actor_cls
        self.on_start, self.on_result = on_start, on_result
        self.starting: dict = {}  # ready() ref -> actor
        self.slots: list[_Slot] = []
        self.pending: deque = deque()
        self.start_failures = 0

    def _spawn(self) -> None:
        actor = self.actor_cls.remote(self.executor.task, self.executor.threads)
        self.starting[actor.ready.remote()] = actor

    def _fill(self) -> None:
        for slot in self.slots:
            if slot.job is None and self.pending:
                slot.job = self.pending.popleft()
                slot.ref = slot.actor.run.remote(slot.job.item, slot.job.settings)
                slot.started = time.monotonic()
                self.on_start(slot.job)

    def _started(self, ref) -> None:
        import ray

        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except Exception as exc:  # the worker could not even start
            self.start_failures += 1
            log.warning("a Ray worker failed to start: %s", str(exc).splitlines()[0])
            if self.start_failures > 2 * self.executor.workers:
                raise RuntimeError(f"Ray workers keep failing to start: {str(exc).splitlines()[0]}") from exc
            self._spawn()
            return
        self.start_failures = 0
        self.slots.append(_Slot(actor))

    def _take(self, slot: _Slot, error: str | None = None) -> tuple[Job, dict]:
        """The slot's job and its result (a failed one with `error`); a crashed or hung worker is replaced."""
        import ray
        from ray.exceptions import RayActorError

        job, ref, seconds = slot.job, slot.ref, time.monotonic() - slot.started
        slot.job = slot.ref = None
        if error is None:
            try:
                return job, ray.get(ref)
            except RayActorError as exc:
                error = f"worker crashed: {str(exc).strip().splitlines()[0]}"
            except Exception as exc:  # the task raised past audit_one's guard (e.g. it could not be unpickled)
                return job, failed(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", job.item, seconds)
        self.slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)  # a crashed or hung worker: stop its process, keep going
        self._spawn()
        return job, failed(error, job.item, seconds)

    def run(self, jobs: list[Job]) -> None:
        import ray

        self.pending.extend(jobs)
        for _ in range(min(self.executor.workers, len(jobs))):
            self._spawn()
        timeout = self.executor.timeout
        while self.pending or any(s.job is not None for s in self.slots):
            self._fill()
            busy = {s.ref: s for s in self.slots if s.job is not None}
            if not busy and not self.starting:
                raise RuntimeError("no Ray worker could be started")
            now = time.monotonic()
            wait_for = min((s.started + timeout - now for s in busy.values()), default=None)
            refs = list(busy) + list(self.starting)
            ray.wait(refs, num_returns=1, timeout=None if wait_for is None else max(0.0, wait_for))
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            finished = []
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    finished.append(self._take(busy[ref]))
            now = time.monotonic()
            for slot in [s for s in busy.values() if s.job is not None and now - s.started >= timeout]:
                finished.append(self._take(slot, f"timed out after {timeout:g} s"))
            self._fill()  # the workers start their next models before the driver writes these results
            for job, result in finished:
                self.on_result(job, result)
