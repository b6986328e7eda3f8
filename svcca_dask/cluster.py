"""Get a Dask ``distributed`` cluster and client from a short spec.

Every measure runs on the current ``distributed`` client when there is one,
else on Dask's threaded scheduler. :func:`connect` makes that client:

======================== ==================================================
spec                     what it does
======================== ==================================================
``"local"`` (default)    starts a :class:`~distributed.LocalCluster` on
                         127.0.0.1 (the embedded default)
``"tcp://host:8786"``    connects to a running scheduler (also ``tls://``)
``"path/scheduler.json"`` connects through a scheduler file
``"slurm"``, ``"pbs"``   starts a dask-jobqueue cluster (extras ``[slurm]``,
                         ``[pbs]``)
``"kubernetes"``         starts a dask-kubernetes operator ``KubeCluster``
                         (extra ``[kubernetes]``)
======================== ==================================================

The dashboard address is printed (to stderr) when the connection is made.
See ``cluster/README.md`` for deployments and how to secure them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Connection", "connect"]

#: Where the dashboard listens by default: loopback only (reach it with an SSH
#: tunnel or a port-forward), never every interface.
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"

_SCHEDULER_PROTOCOLS = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
_SPECS = "'local', 'tcp://host:8786', a scheduler file path, 'slurm', 'pbs' or 'kubernetes'"


@dataclass
class Connection:
    """A ``distributed`` client and, when :func:`connect` started it, its cluster.

    Use it as a context manager: leaving the block closes the client and any
    cluster it started (a cluster it only connected to is left running).

    Attributes
    ----------
    client : distributed.Client
        The default client while open: every measure runs on it.
    cluster : object or None
        The cluster object :func:`connect` started (``LocalCluster``,
        ``SLURMCluster``, ``PBSCluster``, ``KubeCluster``), ``None`` when it
        connected to a running scheduler.
    spec : str
        The spec it was made from.
    """

    client: Any
    cluster: Any | None
    spec: str

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard URL, or ``None`` when the scheduler runs without one."""
        services = self.client.scheduler_info().get("services", {})
        if "dashboard" not in services:  # e.g. `dask scheduler --no-dashboard`
            return None
        return self.client.dashboard_link

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address (``tcp://...``)."""
        return self.client.scheduler.address

    def close(self) -> None:
        """Close the client, then the cluster if :func:`connect` started it."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    spec: str | os.PathLike[str] = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    jobs: int | None = None,
    security: Any = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS,
    quiet: bool = False,
    **options: Any,
) -> Connection:
    """Start or join a Dask cluster and make its client the default.

    Parameters
    ----------
    spec : str or path, default "local"
        ``"local"``: a :class:`~distributed.LocalCluster` listening on
        127.0.0.1. ``"tcp://host:port"`` (or ``tls://``): a running scheduler.
        A path to a scheduler file (written by ``dask scheduler
        --scheduler-file``). ``"slurm"`` or ``"pbs"``: a dask-jobqueue
        ``SLURMCluster``/``PBSCluster`` (``pip install 'svcca-dask[slurm]'``).
        ``"kubernetes"``: a dask-kubernetes operator ``KubeCluster``
        (``pip install 'svcca-dask[kubernetes]'``).
    n_workers : int, optional
        Workers to start (local, slurm, pbs, kubernetes).
    threads_per_worker : int, optional
        Threads per worker (local only; jobqueue sizes workers with ``cores=``
        and ``processes=``).
    jobs : int, optional
        Batch jobs to submit (slurm, pbs); each job runs ``processes`` workers.
    security : distributed.security.Security, optional
        TLS settings for the scheduler and workers (required for ``tls://``).
    dashboard_address : str or None, default "127.0.0.1:8787"
        Where a started cluster serves its dashboard; loopback by default.
    quiet : bool, default False
        Do not print the dashboard address.
    **options
        Passed to the cluster class (``LocalCluster``, ``SLURMCluster``,
        ``PBSCluster``, ``KubeCluster``), e.g. ``cores=``, ``memory=``,
        ``queue=``, ``interface=`` for jobqueue, ``processes=False`` for a
        local cluster of threads, ``custom_cluster_spec=`` for Kubernetes.

    Returns
    -------
    Connection
        Close it (or use ``with``) to shut down what it started.

    Raises
    ------
    ImportError
        When the optional package for ``spec`` is missing; the message names
        the extra to install.
    ValueError
        For a spec that is none of the above.
    """
    from distributed import Client

    text = os.fspath(spec)
    cluster: Any = None
    if text == "local":
        from distributed import LocalCluster

        if jobs is not None:
            raise ValueError("jobs= is a slurm/pbs option: size a local cluster with n_workers=")
        if options.get("processes") is False:
            # in-process workers would talk over inproc://, whose addresses (and
            # dashboard link) carry the machine's IP: stay on tcp:// loopback
            options.setdefault("protocol", "tcp://")
        options.setdefault("host", "127.0.0.1")
        import dask

        # the nanny's MALLOC_TRIM_THRESHOLD_=65536 makes every large buffer a fresh,
        # page-faulted mapping: a third of a pass's time (benchmarks/RESULTS.md,
        # cluster); the plans keep a worker under half its limit without it
        with dask.config.set({_TRIM: None} if dask.config.get(_TRIM, None) == 65536 else {}):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                dashboard_address=dashboard_address,
                security=security,
                **options,
            )
    elif text.startswith(_SCHEDULER_PROTOCOLS):
        if text.startswith("tls://") and security is None:
            raise ValueError(
                f"{text} is a TLS scheduler: pass security=distributed.security.Security("
                "tls_ca_file=..., tls_client_cert=..., tls_client_key=..., require_encryption=True)"
            )
        _no_cluster_options(text, n_workers, threads_per_worker, jobs, options)
        client = Client(text, security=security)
        return _announce(Connection(client, None, text), started=False, quiet=quiet)
    elif text in ("slurm", "pbs"):
        try:
            import dask_jobqueue
        except ImportError as err:
            raise ImportError(
                f"spec {text!r} needs dask-jobqueue: pip install 'svcca-dask[{text}]'"
            ) from err
        cls = dask_jobqueue.SLURMCluster if text == "slurm" else dask_jobqueue.PBSCluster
        if threads_per_worker is not None:
            raise ValueError(
                f"threads_per_worker is not a {text} option: size workers with cores= and processes="
            )
        import dask

        # jobqueue takes the dashboard address in scheduler_options, and ignores
        # the configured scheduler-options when any are passed: merge them
        scheduler_options = {
            **(dask.config.get(f"jobqueue.{text}.scheduler-options", None) or {}),
            **options.pop("scheduler_options", {}),
        }
        if dashboard_address is not None:
            scheduler_options.setdefault("dashboard_address", dashboard_address)
        cluster = cls(scheduler_options=scheduler_options, security=security, **options)
        if jobs is not None:
            cluster.scale(jobs=jobs)
        elif n_workers is not None:
            cluster.scale(n=n_workers)
    elif text in ("kubernetes", "k8s"):
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as err:
            raise ImportError(
                "spec 'kubernetes' needs dask-kubernetes: pip install 'svcca-dask[kubernetes]'"
            ) from err
        if jobs is not None or threads_per_worker is not None:
            raise ValueError(
                "jobs= and threads_per_worker= are not kubernetes options: use n_workers= "
                "and size worker pods in the cluster spec (resources, --nthreads)"
            )
        if n_workers is not None:
            options["n_workers"] = n_workers
        cluster = KubeCluster(**options)
    elif text.endswith(".json") or os.path.isfile(text):
        if not os.path.isfile(text):
            raise FileNotFoundError(
                f"no scheduler file at {text!r}: start the scheduler with "
                f"`dask scheduler --scheduler-file {text}` (on a shared file system) first"
            )
        _no_cluster_options(text, n_workers, threads_per_worker, jobs, options)
        client = Client(scheduler_file=text, security=security)
        return _announce(Connection(client, None, text), started=False, quiet=quiet)
    else:
        raise ValueError(f"unknown cluster spec {text!r}: give {_SPECS}")
    try:
        client = Client(cluster, security=security)
        from ._quiet_close import QuietClose

        client.register_plugin(QuietClose())
    except BaseException:
        cluster.close()
        raise
    return _announce(Connection(client, cluster, text), started=True, quiet=quiet)


#: The nanny's setting that :func:`connect` leaves out for the local workers it starts.
_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _no_cluster_options(
    spec: str,
    n_workers: int | None,
    threads_per_worker: int | None,
    jobs: int | None,
    options: dict[str, Any],
) -> None:
    given = [
        k
        for k, v in (
            ("n_workers", n_workers),
            ("threads_per_worker", threads_per_worker),
            ("jobs", jobs),
        )
        if v is not None
    ] + sorted(options)
    if given:
        raise ValueError(
            f"{', '.join(given)}: options for starting a cluster, but {spec!r} joins a running "
            "scheduler; size its workers where they are started (dask worker --nworkers/--nthreads)"
        )


def _announce(conn: Connection, *, started: bool, quiet: bool) -> Connection:
    if not quiet:
        what = "started" if started else "connected to"
        link = conn.dashboard_link or "none (the scheduler runs without one)"
        print(
            f"svcca-dask: {what} Dask scheduler {conn.scheduler_address}; dashboard: {link}",
            file=sys.stderr,
        )
    return conn
