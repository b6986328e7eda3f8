"""More than one host: the scheduler and two workers each in a Linux network
namespace of their own (its own address, reached over veth pairs on a bridge),
the client in the root namespace, the store on a path all of them see.

The processes are started as ``cluster/README.md`` shows for separate hosts
(``--interface eth0``); a worker is SIGKILLed mid-matrix and the result is the
same. Needs root and ``ip netns`` (CI runs as root); where namespaces cannot
be made the test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import svcca_dask as sd
from svcca_dask.store import create_store

TAG = f"sv{os.getpid() % 10000}"
SUBNET = f"10.77.{os.getpid() % 250}"
ROLES = ("s", "w0", "w1")  # scheduler, two workers: .2, .3, .4


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespaces():
    """A bridge with the root namespace on .1 and one namespace per role on it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip (CI runs as root)")
    bridge = f"{TAG}br"
    try:
        _ip("link", "add", bridge, "type", "bridge")
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot make a bridge for the namespaces: {err.stderr.strip()}")
    made: list[str] = []
    try:
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, role in enumerate(ROLES):
            ns = f"{TAG}{role}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"{ns}h", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", f"{ns}h", "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {role: (f"{TAG}{role}", f"{SUBNET}.{i + 2}") for i, role in enumerate(ROLES)}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def _spawn(ns: str, args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "dask", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def test_a_matrix_across_hosts_survives_losing_a_worker(namespaces, tmp_path):
    from distributed import Client

    rng = np.random.default_rng(0)
    s = create_store(tmp_path / "acts.zarr")  # the path every namespace sees
    z = rng.standard_normal((120_000, 8))
    for i in range(6):
        layer = z @ rng.standard_normal((8, 32)) + rng.standard_normal((120_000, 32))
        s.create_layer(f"l{i}", sample_shape=(32,), chunk_samples=5_000)
        s.append(f"l{i}", layer.astype(np.float32))
    xs = {f"l{i}": f"{s.path}/l{i}" for i in range(6)}
    reference = sd.similarity_matrix(xs, measure="svcca")  # threads, before any client

    sched_ns, sched_ip = namespaces["s"]
    sched_file = tmp_path / "scheduler.json"
    procs = [
        _spawn(
            sched_ns,
            [
                "scheduler",
                "--interface",
                "eth0",
                "--port",
                "8786",
                "--dashboard-address",
                f"{sched_ip}:0",
                "--scheduler-file",
                str(sched_file),
            ],
            tmp_path / "scheduler.log",
        )
    ]
    workers: dict[str, subprocess.Popen] = {}
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        assert address == f"tcp://{sched_ip}:8786"  # its namespace's address, not loopback
        for role in ("w0", "w1"):
            ns, ip = namespaces[role]
            workers[role] = _spawn(
                ns,
                [
                    "worker",
                    address,
                    "--interface",
                    "eth0",
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--name",
                    role,
                    "--death-timeout",
                    "60",
                    "--dashboard-address",
                    f"{ip}:0",
                ],
                tmp_path / f"{role}.log",
            )
            procs.append(workers[role])
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            hosts = sorted(
                w.split("//")[1].split(":")[0] for w in client.scheduler_info()["workers"]
            )
            assert hosts == [namespaces["w0"][1], namespaces["w1"][1]]  # two hosts
            first = sd.similarity_matrix(xs, measure="svcca")
            np.testing.assert_allclose(first.scores, reference.scores, rtol=0, atol=1e-12)

            out: dict[str, object] = {}

            def run() -> None:
                try:
                    out["m"] = sd.similarity_matrix(xs, measure="svcca")
                except BaseException as err:  # surfaced below
                    out["error"] = err

            thread = threading.Thread(target=run)
            thread.start()
            addr = {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}
            executing = lambda dask_worker: any(  # noqa: E731
                str(ts.key).startswith("moments_chunks") for ts in dask_worker.state.executing
            )
            victim = None
            while thread.is_alive() and victim is None and time.monotonic() < deadline + 60:
                busy = client.run(executing)
                victim = next((n for n, a in addr.items() if busy.get(a)), None)
                time.sleep(0.002)
            alive = thread.is_alive()
            assert victim is not None, "no worker was computing when the matrix ended"
            os.killpg(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait(timeout=30)
            thread.join(timeout=180)
        assert alive, "the matrix finished before the worker could be killed"
        assert "error" not in out, out.get("error")
        np.testing.assert_allclose(out["m"].scores, reference.scores, rtol=0, atol=1e-12)
    finally:
        _stop(procs)
