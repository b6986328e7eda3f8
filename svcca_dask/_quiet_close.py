"""A worker plugin for the clusters :func:`svcca_dask.cluster.connect` starts:
no ``CommClosedError`` traceback when such a cluster shuts down after a run.

A module of its own so that importing :mod:`svcca_dask` does not import
``distributed``; its class lives at module level, so workers unpickle it by
reference.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from distributed import WorkerPlugin
from distributed.core import Status

__all__ = ["QuietClose"]

#: What a worker logs, with a traceback, when a heartbeat meets a closed scheduler.
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"

_CLOSING = (Status.closing, Status.closed, Status.closing_gracefully)


class _ClosingFilter(logging.Filter):
    """Drops the heartbeat-failure traceback when every worker of this process
    that the plugin set up is closing (workers of an in-process cluster share
    the logger, so one closed worker must not hide a running one's failures)."""

    def __init__(self) -> None:
        super().__init__()
        self.workers: weakref.WeakSet[Any] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(HEARTBEAT_FAILED):
            return True
        workers = list(self.workers)
        return not workers or any(w.status not in _CLOSING for w in workers)


_FILTER = _ClosingFilter()


class QuietClose(WorkerPlugin):
    """When a cluster shuts down after a finished run, a worker's heartbeat
    already in flight can meet the scheduler's closed connection; distributed
    then logs a ``CommClosedError`` traceback at ERROR (a race inside
    distributed: 1 of 7 successful ``svcca-dask run``s here, 1 in 4 in the
    issue's runs). This drops that one message while its worker is closing; a
    running worker's heartbeat failures are still logged. The filter is never
    removed: the heartbeat that fails outlives the plugins' teardown.
    """

    name = "svcca-dask-quiet-close"

    def setup(self, worker: Any) -> None:
        _FILTER.workers.add(worker)
        logging.getLogger("distributed.worker").addFilter(_FILTER)  # once: a no-op if there
