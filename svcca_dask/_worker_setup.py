"""What a ``distributed`` worker needs before it runs this package's tasks.

Blosc (the stores' codec) decodes with threads of its own, by default as many
as the machine has cores; a worker that runs one task per thread then has its
threads' decodes compete with each other, as on Dask's threaded scheduler
(where :func:`svcca_dask.scheduler.compute` limits Blosc to one thread per
task, benchmarks/RESULTS.md). :class:`OneBloscThread` sets one on every worker
of a client, present and future; :func:`prepare` registers it once per client.
A module of its own so that importing :mod:`svcca_dask` does not import
``distributed``; its class lives at module level, so workers unpickle it by
reference.
"""

from __future__ import annotations

import weakref
from typing import Any

from distributed import WorkerPlugin

__all__ = ["OneBloscThread", "prepare"]

_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()


class OneBloscThread(WorkerPlugin):
    """Blosc decodes with one thread on the worker (its task threads decode in parallel)."""

    name = "svcca-dask-one-blosc-thread"

    def setup(self, worker: Any) -> None:
        from numcodecs import blosc

        blosc.set_nthreads(1)


def prepare(client: Any) -> None:
    """Register :class:`OneBloscThread` on ``client``'s workers, once per client."""
    if client in _PREPARED:
        return
    client.register_plugin(OneBloscThread())
    _PREPARED.add(client)
