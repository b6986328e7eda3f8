"""Shared pytest fixtures.

Real Dask processes on loopback
-------------------------------
``dask_processes`` (one cluster per test module) and ``start_dask_processes``
(a factory for tests that break their cluster, e.g. by killing a worker) start
``dask scheduler`` and ``dask worker`` as separate OS processes listening on
127.0.0.1 only, with the very commands ``cluster/README.md`` gives for starting
a cluster by hand, and stop them (SIGTERM, then SIGKILL) at teardown::

    def test_x(dask_processes):
        with distributed.Client(dask_processes.address) as client:
            ...

Each worker is its own ``dask worker --no-nanny`` process (named ``worker-0``,
``worker-1``, ...) so that a test can SIGKILL exactly one of them
(:meth:`DaskProcesses.kill_worker`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

    Attributes
    ----------
    address : str
        The scheduler's address, ``tcp://127.0.0.1:<port>``.
    scheduler_file : Path
        The scheduler file the scheduler wrote (``--scheduler-file``).
    scheduler : subprocess.Popen
    workers : dict of str to subprocess.Popen
        Worker processes by worker name (``worker-0``, ...).
    log_dir : Path
        Where each process's output goes (``scheduler.log``, ``worker-0.log``, ...).
    """

    address: str
    scheduler_file: Path
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen]
    log_dir: Path
    _stopped: bool = field(default=False, repr=False)

    def kill_worker(self, name: str) -> None:
        """SIGKILL one worker process (no clean shutdown) and reap it."""
        proc = self.workers[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def logs(self) -> str:
        """The tail of every process's output, for failure messages."""
        out = []
        for p in sorted(self.log_dir.glob("*.log")):
            out.append(
                f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            )
        return "\n".join(out)

    def stop(self) -> None:
        """Stop workers, then the scheduler: SIGTERM, wait, then SIGKILL."""
        if self._stopped:
            return
        self._stopped = True
        # workers first: a scheduler that leaves first makes them wait to reconnect
        _terminate(list(self.workers.values()))
        _terminate([self.scheduler])


def _terminate(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _dask_command(*args: str) -> list[str]:
    # `python -m dask ...` is the `dask ...` CLI of this interpreter's environment
    return [sys.executable, "-m", "dask", *args]


def start_dask_processes_in(
    directory: Path,
    *,
    n_workers: int = 2,
    nthreads: int = 1,
    env: dict[str, str] | None = None,
    security: object = None,
    timeout: float = 90.0,
) -> DaskProcesses:
    """Start a scheduler and ``n_workers`` worker processes on 127.0.0.1 and
    wait until every worker has joined. The caller must call ``stop()``.

    ``env`` adds environment variables to the processes (e.g. ``DASK_CONFIG``
    for a TLS configuration); ``security`` is the client's
    :class:`~distributed.security.Security` for the readiness check."""
    directory.mkdir(parents=True, exist_ok=True)
    sched_file = directory / "scheduler.json"
    proc_env = dict(os.environ)
    # one BLAS thread per worker thread (what a Nanny would set)
    proc_env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc_env.pop("PYTHONWARNINGS", None)
    proc_env.update(env or {})

    def spawn(name: str, args: list[str]) -> subprocess.Popen:
        with open(directory / f"{name}.log", "wb") as log:  # the child keeps its own copy
            return subprocess.Popen(
                _dask_command(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=proc_env,
                cwd=directory,
                start_new_session=True,
            )

    scheduler = spawn(
        "scheduler",
        # --dashboard-address too: without it the HTTP server (/health, /metrics,
        # the dashboard) listens on every interface, even with --no-dashboard
        [
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(sched_file),
        ],
    )
    workers: dict[str, subprocess.Popen] = {}
    procs = DaskProcesses("", sched_file, scheduler, workers, directory)
    try:
        deadline = time.monotonic() + timeout
        address = _wait_for_scheduler_file(sched_file, scheduler, deadline, procs)
        procs.address = address
        for i in range(n_workers):
            name = f"worker-{i}"
            workers[name] = spawn(
                name,
                [
                    "worker",
                    address,
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--nthreads",
                    str(nthreads),
                    "--no-nanny",
                    "--name",
                    name,
                    "--death-timeout",
                    "60",
                    "--local-directory",
                    str(directory / name),
                ],
            )
        _wait_for_workers(procs, n_workers, deadline, security)
    except BaseException:
        procs.stop()
        raise
    return procs


def _wait_for_scheduler_file(
    path: Path, scheduler: subprocess.Popen, deadline: float, procs: DaskProcesses
) -> str:
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {scheduler.returncode}\n{procs.logs()}")
        if path.exists():
            try:
                return json.loads(path.read_text())["address"]
            except (ValueError, KeyError):
                pass  # being written
        time.sleep(0.05)
    raise TimeoutError(f"dask scheduler did not write {path} in time\n{procs.logs()}")


def _wait_for_workers(procs: DaskProcesses, n: int, deadline: float, security: object) -> None:
    from distributed import Client

    left = max(1.0, deadline - time.monotonic())
    with Client(procs.address, set_as_default=False, timeout=left, security=security) as c:
        while len(c.scheduler_info()["workers"]) < n:
            dead = [k for k, p in procs.workers.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"dask workers did not join ({dead} exited)\n{procs.logs()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """A scheduler and 2 single-thread worker processes on 127.0.0.1, shared by a module."""
    procs = start_dask_processes_in(tmp_path_factory.mktemp("dask-processes"))
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def start_dask_processes(tmp_path: Path) -> Iterator[Callable[..., DaskProcesses]]:
    """A factory ``start(n_workers=2, nthreads=1, env=None, security=None)`` of private clusters, all
    stopped at the end of the test (use it when the test damages the cluster)."""
    started: list[DaskProcesses] = []

    def start(
        *,
        n_workers: int = 2,
        nthreads: int = 1,
        env: dict[str, str] | None = None,
        security: object = None,
    ) -> DaskProcesses:
        procs = start_dask_processes_in(
            tmp_path / f"dask-{len(started)}",
            n_workers=n_workers,
            nthreads=nthreads,
            env=env,
            security=security,
        )
        started.append(procs)
        return procs

    try:
        yield start
    finally:
        for procs in started:
            procs.stop()
