"""Measures on real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1,
surviving a worker killed mid-computation, and ``connect`` specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
import yaml
import zarr
from distributed import Client, get_task_stream
from distributed.security import Security

import svcca_dask as sd
import svcca_dask._config
from svcca_dask.cluster import Connection, connect


def _layers(n: int = 2400, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 5))
    widths = {"conv1": 6, "block1": 9, "block2": 4, "fc": 7}
    return {
        k: latent @ rng.standard_normal((5, w)) + 0.6 * rng.standard_normal((n, w)) + 100.0
        for k, w in widths.items()
    }


def _all_measures(xs: dict, ys: dict) -> dict[str, object]:
    a, b = next(iter(xs.values())), list(ys.values())[1]
    return {
        "svcca": sd.svcca(a, b, keep=0.95).score,
        "cca": sd.cca(a, b).coefficients,
        "pwcca": sd.pwcca(a, b).score,
        "cka": sd.linear_cka(a, b).score,
        "matrix": sd.similarity_matrix(xs, ys, measure="svcca").scores,
        "self-matrix": sd.similarity_matrix(xs, measure="pwcca").scores,
    }


def test_processes_equal_threaded(dask_processes, tmp_path, monkeypatch):
    # small row chunks, so that the tree reduction merges partials from both workers
    monkeypatch.setattr(svcca_dask._config, "DEFAULT_CHUNK_BYTES", 2**14)
    raw = _layers()
    root = zarr.open_group(str(tmp_path / "acts.zarr"), mode="w")
    for k, v in raw.items():
        root.create_array(k, data=v.astype(np.float32), chunks=(500, v.shape[1]))
    # Zarr paths: the worker processes open the store themselves
    xs = {k: str(tmp_path / "acts.zarr" / k) for k in ["conv1", "block1"]}
    ys = {k: str(tmp_path / "acts.zarr" / k) for k in ["block1", "block2", "fc"]}

    threaded = _all_measures(xs, ys)  # no client: the threaded scheduler
    with Client(dask_processes.address) as client, get_task_stream(client) as stream:
        distributed = _all_measures(xs, ys)
    for key, ref in threaded.items():
        np.testing.assert_allclose(distributed[key], ref, rtol=0, atol=1e-12, err_msg=key)
    # the work ran on both worker processes, not in this process
    ran_on = {t["worker"] for t in stream.data}
    assert len(ran_on) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in ran_on)
    chunk_tasks = sum("moments_chunk" in str(t["key"]) for t in stream.data)
    assert chunk_tasks >= 6 * 5  # every comparison's 5 row chunks ran there


def _big_pair(n_chunks: int = 96, rows: int = 8000) -> tuple[da.Array, da.Array]:
    """Data generated on the workers (nothing to ship), deterministic per chunk."""
    rng = da.random.default_rng(7)
    latent = rng.standard_normal((n_chunks * rows, 8), chunks=(rows, 8))
    x = latent @ rng.standard_normal((8, 40), chunks=(8, 40)) + rng.standard_normal(
        (n_chunks * rows, 40), chunks=(rows, 40)
    )
    y = latent @ rng.standard_normal((8, 24), chunks=(8, 24)) + rng.standard_normal(
        (n_chunks * rows, 24), chunks=(rows, 24)
    )
    return x, y


def test_worker_sigkilled_during_comparison(start_dask_processes):
    procs = start_dask_processes(n_workers=2, nthreads=1)
    x, y = _big_pair()
    reference = sd.svcca(x, y, keep=0.99)  # threaded, no client

    with Client(procs.address) as client:
        addr = {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}
        victim = "worker-1"
        out: dict[str, object] = {}

        def run() -> None:
            try:
                out["result"] = sd.svcca(x, y, keep=0.99)
            except BaseException as err:  # surfaced by the assertions below
                out["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        # wait until the victim holds finished row-chunk statistics AND is executing
        # a task of the comparison: the kill then loses both (lambdas: pickled by
        # value, the processes cannot import this module)
        held_on_victim = lambda dask_scheduler, w=addr[victim]: sum(  # noqa: E731
            ts.state == "memory" and any(ws.address == w for ws in ts.who_has or ())
            for ts in dask_scheduler.tasks.values()
            if str(ts.key).startswith("moments_chunk")
        )
        executing = lambda dask_worker: len(dask_worker.state.executing)  # noqa: E731
        deadline = time.monotonic() + 60
        held = busy = 0
        while time.monotonic() < deadline and thread.is_alive():
            held = client.run_on_scheduler(held_on_victim)
            if held:
                busy = client.run(executing, workers=[addr[victim]])[addr[victim]]
                if busy:
                    break
            time.sleep(0.005)
        running_at_kill = thread.is_alive()
        chunk_states = client.run_on_scheduler(
            lambda dask_scheduler: [
                ts.state
                for ts in dask_scheduler.tasks.values()
                if str(ts.key).startswith("moments_chunk")
            ]
        )
        procs.kill_worker(victim)
        thread.join(timeout=120)

        assert running_at_kill, "the comparison finished before the worker could be killed"
        assert held > 0 and busy > 0  # the victim held results and was computing
        # killed before every row chunk had been reduced
        assert chunk_states.count("memory") < len(chunk_states), chunk_states
        assert procs.workers[victim].returncode == -9  # SIGKILL, no clean shutdown
        assert not thread.is_alive() and "error" not in out, out.get("error")
        # the scheduler saw the loss, and the survivor finished the comparison
        assert [info["name"] for info in client.scheduler_info()["workers"].values()] == [
            "worker-0"
        ]
    result = out["result"]
    np.testing.assert_allclose(result.coefficients, reference.coefficients, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.score, reference.score, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# connect()


def test_connect_address_and_scheduler_file(dask_processes, capsys):
    x = _layers(n=600)["conv1"]
    ref = sd.linear_cka(x, x[:, :3]).score
    for spec in (dask_processes.address, str(dask_processes.scheduler_file)):
        with connect(spec) as conn:
            assert isinstance(conn, Connection) and conn.cluster is None
            assert conn.scheduler_address == dask_processes.address
            assert len(conn.client.scheduler_info()["workers"]) == 2
            np.testing.assert_allclose(sd.linear_cka(x, x[:, :3]).score, ref, atol=1e-12)
        err = capsys.readouterr().err
        assert f"connected to Dask scheduler {dask_processes.address}" in err
    # closing a connection to a running scheduler leaves it running
    assert dask_processes.scheduler.poll() is None


def test_connect_local_prints_dashboard_and_closes(capsys):
    with connect(
        "local", n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    ) as conn:
        link = conn.dashboard_link
        assert conn.cluster is not None and link.startswith("http://127.0.0.1:")
        x = _layers(n=600)["fc"]
        r = sd.cca(x, x)
        np.testing.assert_allclose(r.coefficients, 1.0, atol=1e-8)  # ran on the LocalCluster
        cluster = conn.cluster
    err = capsys.readouterr().err
    assert "started Dask scheduler" in err and f"dashboard: {link}" in err
    assert cluster.status.name == "closed"  # the cluster we started is shut down


def test_no_heartbeat_traceback_from_a_closing_worker():
    """The race at shutdown (a heartbeat in flight meets the closed scheduler):
    its traceback is dropped once the worker closes, kept while it runs."""
    import logging

    from svcca_dask._quiet_close import HEARTBEAT_FAILED

    seen: list[str] = []

    class Record(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("distributed.worker")
    handler = Record(level=logging.ERROR)
    log.addHandler(handler)
    try:
        with connect(
            "local",
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address="127.0.0.1:0",
            quiet=True,
        ) as conn:
            (worker,) = conn.cluster.workers.values()
            assert "svcca-dask-quiet-close" in worker.plugins
            log.error("%s.", HEARTBEAT_FAILED)  # a running worker's failure is shown
        assert worker.status.name == "closed"
        log.error("%s.", HEARTBEAT_FAILED)  # the closed worker's is not
        log.error("another error")
    finally:
        log.removeHandler(handler)
    assert seen == [f"{HEARTBEAT_FAILED}.", "another error"]


def test_connect_local_processes_listen_on_loopback():
    with connect(
        "local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", quiet=True
    ) as conn:
        assert conn.scheduler_address.startswith("tcp://127.0.0.1:")
        workers = conn.client.scheduler_info()["workers"]
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)


def test_connect_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown cluster spec 'yarn'"):
        connect("yarn")
    with pytest.raises(FileNotFoundError, match="no scheduler file"):
        connect(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="pass security="):
        connect("tls://127.0.0.1:8786")
    with pytest.raises(ValueError, match="n_workers: options for starting a cluster"):
        connect("tcp://127.0.0.1:8786", n_workers=2)
    with pytest.raises(ValueError, match="jobs= is a slurm/pbs option"):
        connect("local", jobs=2)


@pytest.mark.parametrize(
    ("spec", "module", "extra"),
    [
        ("slurm", "dask_jobqueue", "slurm"),
        ("pbs", "dask_jobqueue", "pbs"),
        ("kubernetes", "dask_kubernetes.operator", "kubernetes"),
    ],
)
def test_connect_missing_extra_names_it(spec, module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.setitem(sys.modules, module.split(".")[0], None)
    with pytest.raises(ImportError, match=rf"pip install 'svcca-dask\[{extra}\]'"):
        connect(spec)


# --------------------------------------------------------------------------- #
# the cluster/ folder

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def _listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections() if c.status == "LISTEN"}


def test_by_hand_processes_listen_on_loopback_only(dask_processes):
    pids = [dask_processes.scheduler.pid, *(p.pid for p in dask_processes.workers.values())]
    for pid in pids:
        # scheduler/worker comms and their HTTP servers (dashboard, /health, /metrics)
        assert _listening(pid) == {"127.0.0.1"}, (pid, _listening(pid))


def test_connect_local_listens_on_loopback_only():
    with connect(
        "local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", quiet=True
    ) as conn:
        assert conn.scheduler_address.startswith("tcp://127.0.0.1:")
        worker_pids = conn.client.run(os.getpid)
        assert all(a.startswith("tcp://127.0.0.1:") for a in worker_pids)
        for pid in [os.getpid(), *worker_pids.values()]:
            assert _listening(pid) <= {"127.0.0.1"}, (pid, _listening(pid))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _make_certs(directory: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    subprocess.run(
        ["bash", str(CLUSTER / "tls" / "make-certs.sh"), str(directory)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_tls_config_from_cluster_folder(start_dask_processes, tmp_path):
    certs = tmp_path / "tls"
    _make_certs(certs)
    text = (
        (CLUSTER / "tls" / "dask-tls.yaml").read_text().replace("/etc/svcca-dask/tls", str(certs))
    )
    config_dir = tmp_path / "dask-config"
    config_dir.mkdir()
    (config_dir / "dask-tls.yaml").write_text(text)
    with dask.config.set(_flatten(yaml.safe_load(text))):
        security = Security()  # the client's side of the same file
    # the scheduler and worker get TLS from the config file alone
    procs = start_dask_processes(
        n_workers=1, env={"DASK_CONFIG": str(config_dir)}, security=security
    )
    assert procs.address.startswith("tls://127.0.0.1:")

    x = _layers(n=800)
    reference = sd.svcca(x["conv1"], x["fc"]).score
    with connect(procs.address, security=security, quiet=True):
        np.testing.assert_allclose(sd.svcca(x["conv1"], x["fc"]).score, reference, atol=1e-12)

    with pytest.raises(OSError):  # no plain TCP
        Client(procs.address.replace("tls://", "tcp://"), timeout=3, set_as_default=False)
    other = tmp_path / "other-ca"
    _make_certs(other)
    outsider = Security(
        tls_ca_file=str(other / "ca.pem"),
        tls_client_cert=str(other / "node.pem"),
        tls_client_key=str(other / "node-key.pem"),
        require_encryption=True,
    )
    with pytest.raises(OSError):  # a certificate from another CA is refused
        Client(procs.address, timeout=3, security=outsider, set_as_default=False)


def test_jobqueue_config_makes_a_slurm_job_script(capsys):
    import dask_jobqueue  # noqa: F401  (the [test] extra installs it: a missing one fails here)

    cfg = yaml.safe_load((CLUSTER / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    settings = {f"jobqueue.slurm.{k}": v for k, v in cfg.items()}
    settings["jobqueue.slurm.interface"] = "lo"  # this machine has no ib0; keeps it on loopback
    settings["jobqueue.slurm.scheduler-options"] = {"dashboard_address": "127.0.0.1:0"}
    with dask.config.set(settings), connect("slurm", dashboard_address="127.0.0.1:0") as conn:
        script = conn.cluster.job_script()
        address = conn.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")  # scheduler on the configured interface
    assert "#SBATCH --cpus-per-task=16" in script and "#SBATCH -t 04:00:00" in script
    assert "export OMP_NUM_THREADS=1" in script  # one BLAS thread per worker thread
    assert "--nworkers 4" in script and "--nthreads 4" in script  # 16 cores / 4 processes
    assert address in script and "--interface lo" in script
    assert "started Dask scheduler" in capsys.readouterr().err


def test_compose_and_kubernetes_files_bind_no_public_address():
    compose = yaml.safe_load((CLUSTER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"scheduler", "worker"}
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)  # loopback only
    anchor = compose["x-node"]["volumes"][0]
    assert anchor["read_only"] and anchor["source"].startswith("${SVCCA_STORES")
    assert all(s["volumes"] == [anchor] for s in services.values())  # the same shared stores
    assert "tcp://scheduler:8786" in services["worker"]["command"]

    k8s = yaml.safe_load((CLUSTER / "kubernetes" / "daskcluster.yaml").read_text())
    assert (k8s["apiVersion"], k8s["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert k8s["spec"]["scheduler"]["service"]["type"] == "ClusterIP"  # not exposed outside
    worker_args = k8s["spec"]["worker"]["spec"]["containers"][0]["args"]
    assert worker_args[:2] == ["dask", "worker"] and "127.0.0.1:0" in worker_args
    for path in CLUSTER.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".yaml", ".sh", ""):
            assert "0.0.0.0" not in path.read_text(), path
