"""Run jobs: compute what a job asks, write results as they complete, skip what exists.

What a run writes, and how it is kept whole when killed, is in
:mod:`pipeline.output`: a row reaches the table only after its arrays are in
place. Each result's ``result_id`` hashes its inputs' fingerprints (store id,
layer, shape, write id) and the measure's options: a rerun reuses rows whose
id is unchanged and recomputes the others; ``force`` recomputes everything.

All math is in :mod:`svcca_dask`: pairs of the same store pair and measure
that form a full layer x layer product share one pass
(:func:`svcca_dask.similarity_matrices`); other pairs, and conv layers compared
with the per-frequency DFT (the measures' default for conv layers, whose
statistics depend on the pair), use the pair measures.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .jobs import MEASURES, Job, Pair, call_options, keyword_of
from .output import (
    COLUMNS,
    RESULTS_FORMAT,
    atomic_json,
    has_arrays,
    output_lock,
    prune,
    read_table,
    write_arrays,
    write_table,
)
from .progress import dask_progress, progress_bar

__all__ = ["COLUMNS", "RunReport", "compare_pair", "open_cluster", "run_job"]

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What a run did.

    Attributes
    ----------
    output : str
        The results folder.
    computed : int
        Results computed in this run.
    reused : int
        Results kept from an earlier run (same inputs and parameters).
    rows : list of dict
        The results table.
    passes : int
        Computations run (one per similarity matrix or per pair).
    kept : int
        Rows of an earlier ``against`` plan kept in the table (against the
        checkpoint that was last then).
    """

    output: str
    computed: int = 0
    reused: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    passes: int = 0
    kept: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        kept = f", {self.kept} kept from earlier references" if self.kept else ""
        return (
            f"{self.computed} result(s) computed, {self.reused} reused{kept}; "
            f"table: {os.path.join(self.output, 'results.csv')}"
        )


# --------------------------------------------------------------------------- #
# cluster


@contextlib.contextmanager
def open_cluster(spec: str | Mapping[str, Any] | None) -> Iterator[Any]:
    """The Dask client for a job's ``cluster`` (a context manager; yields None for threads).

    ``None``, ``"threads"`` or ``"none"``: Dask's threaded scheduler, no
    ``distributed``. A string: :func:`svcca_dask.cluster.connect` (``"local"``,
    a scheduler address, a scheduler file, ``"slurm"``...). A table: its
    ``spec`` key (default ``"local"``) and the rest as ``connect`` options
    (``n_workers``, ``threads_per_worker``, ``processes``,
    ``dashboard_address = "127.0.0.1:0"`` for any free port...).
    """
    if spec is None or spec in ("threads", "none"):
        yield None
        return
    import distributed  # noqa: F401  (sets its loggers up on import; quiet them below)

    from svcca_dask.cluster import connect

    if not logging.getLogger("pipeline").isEnabledFor(logging.INFO):
        logging.getLogger("distributed").setLevel(logging.WARNING)  # --verbose shows them
    if isinstance(spec, Mapping):
        options = dict(spec)
        text = options.pop("spec", "local")
    else:
        text, options = spec, {}
    with connect(text, **options) as conn:
        yield conn.client


# --------------------------------------------------------------------------- #
# measures


def _function(measure: str) -> Any:
    import svcca_dask

    return getattr(svcca_dask, MEASURES[measure])


def _measure_options(measure: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The job options that ``measure`` takes (by its signature; the parts of
    ``conv=DFT(...)`` and ``svd=RandomizedSVD(...)`` with ``conv`` and ``svd``)."""
    params = inspect.signature(_function(measure)).parameters
    return {k: v for k, v in sorted(options.items()) if keyword_of(k) in params}


def _result_arrays(result: Any) -> dict[str, np.ndarray]:
    arrays = {}
    if hasattr(result, "coefficients"):
        arrays["coefficients"] = np.asarray(result.coefficients)
    if hasattr(result, "weights"):
        arrays["weights"] = np.asarray(result.weights)
    if getattr(result, "fold_scores", None) is not None:
        arrays["fold_scores"] = np.asarray(result.fold_scores)
    return arrays


def _scalar_int(value: Any) -> int | None:
    """An int for a scalar count; None for a missing one or a per-frequency array (DFT)."""
    if value is None or np.ndim(value) != 0:
        return None
    return int(value)


def _row_fields(result: Any) -> dict[str, Any]:
    coefs = getattr(result, "coefficients", None)
    return {
        "score": float(result.score),
        "n_samples": int(result.n_samples),
        "n_coefficients": None if coefs is None else len(coefs),
        "x_kept": _scalar_int(getattr(result, "x_kept", None)),
        "y_kept": _scalar_int(getattr(result, "y_kept", None)),
        "warnings": "; ".join(getattr(result, "warnings", ())) or None,
    }


def compare_pair(
    x: Any,
    y: Any,
    *,
    measure: str = "svcca",
    options: Mapping[str, Any] | None = None,
    cluster: str | Mapping[str, Any] | None = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Compare two layers and return a JSON-ready dict (what ``svcca-dask compare`` prints).

    Parameters
    ----------
    x, y : str or array-like
        Layers, typically ``"store.zarr/layer"`` paths.
    measure : {"svcca", "pwcca", "cca", "cka"}
    options : mapping, optional
        Options of the measure (``keep``, ``epsilon``, ``conv``, ...); an
        option the measure does not take is an error.
    cluster : str or mapping, optional
        Run on a Dask cluster (see :func:`open_cluster`); default threads.
    progress : bool or None, default False
        Dask's progress bar on stderr (threaded scheduler); None: when stderr
        is a terminal.

    Returns
    -------
    dict
        ``score``, ``coefficients`` (a list; empty for CKA), ``measure``,
        ``x``, ``y``, ``n_samples``, ``options``, ``warnings`` (what makes
        the score unreliable, e.g. too few samples), and ``x_kept``/``y_kept``
        for SVCCA, ``weights`` for PWCCA.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    options = dict(options or {})
    fn = _function(measure)
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in options if keyword_of(k) not in params)
    if unknown:
        raise ValueError(
            f"measure {measure!r} takes no option {', '.join(unknown)} in this version of svcca_dask"
        )
    kwargs = call_options(options)  # checked here, before a cluster starts or data is read
    with (
        open_cluster(cluster) as client,
        dask_progress(progress if client is None else False, minimum=0.0),
    ):
        result = fn(x, y, **kwargs)
    out: dict[str, Any] = {
        "x": os.fspath(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__,
        "y": os.fspath(y) if isinstance(y, (str, os.PathLike)) else type(y).__name__,
        "measure": measure,
        "options": options,
        "score": float(result.score),
        "coefficients": np.asarray(getattr(result, "coefficients", [])).tolist(),
        "n_samples": int(result.n_samples),
    }
    for attr in ("x_kept", "y_kept"):
        if hasattr(result, attr):
            value = getattr(result, attr)
            out[attr] = int(value) if np.ndim(value) == 0 else np.asarray(value).tolist()
    if hasattr(result, "weights"):
        out["weights"] = np.asarray(result.weights).tolist()
    if getattr(result, "fold_scores", None) is not None:  # folds=: score is held out
        out["fold_scores"] = np.asarray(result.fold_scores).tolist()
        out["in_sample_score"] = float(result.in_sample_score)
    out["warnings"] = list(getattr(result, "warnings", ()))
    from svcca_dask.inputs import open_layer, rows_checked

    opened = {k: kwargs[k] for k in ("storage_options", "missing_chunks") if k in kwargs}
    sides = [open_layer(x, name="x", **opened), open_layer(y, name="y", **opened)]
    out["rows"] = rows_checked(sides, options.get("rows", "check"))
    return out


# --------------------------------------------------------------------------- #
# planning


@dataclass
class _Task:
    pair: Pair
    measure: str
    options: dict[str, Any]
    result_id: str


@dataclass
class _Group:
    """Tasks of one store pair and one conv reduction, all measures together:
    a full layer x layer product is one similarity-matrix pass for every measure."""

    x_store: str
    y_store: str
    conv: Any
    tasks: list[_Task]
    conv_layers: bool = False  # some layer of the group is 4-D
    target: bool = False  # class sensitivity: every layer x class in one pass

    @property
    def measures(self) -> list[str]:
        return list(dict.fromkeys(t.measure for t in self.tasks))

    def matrix_options(self) -> dict[str, Any]:
        """The options for :func:`svcca_dask.similarity_matrices` (every measure's
        job options, which agree: they come from one table), ``conv`` explicit."""
        opts: dict[str, Any] = {}
        for t in self.tasks:
            opts.update(t.options)
        opts.pop("conv", None)
        opts.pop("dft_memory_limit", None)  # the matrices take no DFT
        if self.conv_layers:
            opts["conv"] = self.conv
        return opts

    @property
    def matrix(self) -> bool:
        """Whether every measure's pairs are the same full layer x layer product."""
        if self.target:
            return True  # every layer against every class (the job checked the options)
        if self.conv_layers and self.conv == "dft":
            return False  # the per-frequency (DFT) statistics depend on the pair
        from svcca_dask.matrix import MATRIX_MEASURES

        takes = {o for m in self.measures for o in MATRIX_MEASURES[m]}
        takes |= {"conv", "dft_memory_limit", "layout", "missing_chunks", "rows"}
        if any(k not in takes for t in self.tasks for k in t.options):
            return False  # an option only the pair measures take (folds, svd, ...)
        pairs = {(t.pair.x_layer, t.pair.y_layer) for t in self.tasks}
        rows = {x for x, _ in pairs}
        cols = {y for _, y in pairs}
        per_measure = len(self.tasks) / len(self.measures)
        return (
            len(pairs) >= 2
            and len(pairs) == len(rows) * len(cols) == per_measure
            and all(
                {(t.pair.x_layer, t.pair.y_layer) for t in self.tasks if t.measure == m} == pairs
                for m in self.measures
            )
        )


def _default_conv(measure: str) -> Any:
    param = inspect.signature(_function(measure)).parameters.get("conv")
    return None if param is None else param.default


def _result_id(fingerprints: tuple[str, str], measure: str, options: Mapping[str, Any]) -> str:
    blob = json.dumps(
        {
            "x": fingerprints[0],
            "y": fingerprints[1],
            "measure": measure,
            "options": options,
            "format": RESULTS_FORMAT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _fingerprints(job: Job) -> Callable[[str, str], str]:
    """``fp(store, layer)``: the layer's fingerprint, each read once."""
    stores: dict[str, Any] = {}
    fps: dict[tuple[str, str], str] = {}

    def fp(store: str, layer: str) -> str:
        if (store, layer) in job.target_columns:  # a class column: its array's, and the class
            name, c = job.target_columns[(store, layer)]
            return f"{fp(store, name)}[{c!r}]"
        if (store, layer) not in fps:
            if store not in stores:
                stores[store] = job.open(store)
            fps[(store, layer)] = stores[store].fingerprint(layer)
        return fps[(store, layer)]

    return fp


def _plan(job: Job, fp: Callable[[str, str], str]) -> list[_Task]:
    tasks = []
    for measure in job.measures:
        opts = _measure_options(measure, job.options)
        for p in job.pairs:
            rid = _result_id((fp(p.x_store, p.x_layer), fp(p.y_store, p.y_layer)), measure, opts)
            tasks.append(_Task(p, measure, opts, rid))
    return tasks


def _earlier_plans(
    job: Job, rows: list[dict[str, Any]], current: set[str], fp: Callable[[str, str], str]
) -> list[dict[str, Any]]:
    """Rows an earlier run of an ``against`` plan computed that this plan has left
    (against the checkpoint that was last then): kept when they have this job's
    measure and options and their inputs are unchanged (or gone: a checkpoint
    set pruned of old states keeps their results)."""
    if job.against is None:
        return []
    kept = []
    for r in rows:
        if r["result_id"] in current or r.get("against") != job.against:
            continue
        if r["measure"] not in job.measures:
            continue
        opts = _measure_options(r["measure"], job.options)
        if r["options"] != json.dumps(opts, sort_keys=True):
            continue  # other options: stale, never mixed in
        sides = ((r["x_store"], r["x_layer"]), (r["y_store"], r["y_layer"]))
        if all(s in job.stores for s, _ in sides):
            try:
                rid = _result_id((fp(*sides[0]), fp(*sides[1])), r["measure"], opts)
            except (KeyError, ValueError):
                continue  # the layer is gone from a store still in the job
            if rid != r["result_id"]:
                continue  # its inputs were rewritten
        kept.append(r)
    return kept


def _groups(job: Job, tasks: list[_Task]) -> list[_Group]:

    stores = {name: job.open(name) for name in job.stores}
    groups: dict[tuple[str, str, str], _Group] = {}
    for t in tasks:
        conv = t.options.get("conv", _default_conv(t.measure))
        target = (t.pair.y_store, t.pair.y_layer) in job.target_columns
        key = (t.pair.x_store, t.pair.y_store, repr(conv), target)
        if key not in groups:
            groups[key] = _Group(t.pair.x_store, t.pair.y_store, conv, [], target=target)
        g = groups[key]
        g.tasks.append(t)
        p = t.pair
        for store, layer in ((p.x_store, p.x_layer), (p.y_store, p.y_layer)):
            if (store, layer) in job.target_columns:
                continue
            if len(stores[store].info(layer).shape) != 2:
                g.conv_layers = True
    return list(groups.values())


def _compute(job: Job, group: _Group, advance: Callable[[int], Any]) -> Iterator[tuple[_Task, Any]]:
    """Yield ``(task, result)`` of a group: one similarity-matrix pass, or one pass
    per pair; ``advance(k)`` as ``k`` more tasks are done (a matrix's pairs tile
    row by tile row, as the library finishes them; others one by one)."""
    import svcca_dask

    if group.target:
        rows = list(dict.fromkeys(t.pair.x_layer for t in group.tasks))
        cols = list(dict.fromkeys(t.pair.y_layer for t in group.tasks))
        name = job.target_columns[(group.y_store, cols[0])][0]
        classes = {job.target_columns[(group.y_store, c)][1]: c for c in cols}
        per_pair = Counter((t.pair.x_layer, t.pair.y_layer) for t in group.tasks)
        log.info("class sensitivity %s: %s against %s", ", ".join(group.measures), rows, name)
        mats = svcca_dask.class_sensitivity(
            {r: job.layer_input(group.x_store, r) for r in rows},
            job.layer_input(group.y_store, name),
            measures=group.measures,
            classes=list(classes),
            on_pair=lambda r, c: advance(per_pair.get((r, classes[c]), 0)),
            **group.matrix_options(),
        )
        by_column = {c: k for k, c in classes.items()}
        for t in group.tasks:
            yield t, mats[t.measure][(t.pair.x_layer, by_column[t.pair.y_layer])]
        return
    if group.matrix:
        per_pair = Counter((t.pair.x_layer, t.pair.y_layer) for t in group.tasks)
        rows = list(dict.fromkeys(t.pair.x_layer for t in group.tasks))
        cols = list(dict.fromkeys(t.pair.y_layer for t in group.tasks))
        xs = {r: job.layer_input(group.x_store, r) for r in rows}
        same = group.x_store == group.y_store and rows == cols
        ys = None if same else {c: job.layer_input(group.y_store, c) for c in cols}
        log.info(
            "similarity matrices %s: %s (%d x %d)",
            ", ".join(group.measures),
            group.x_store,
            len(rows),
            len(cols),
        )
        mats = svcca_dask.similarity_matrices(
            xs,
            ys,
            measures=group.measures,
            on_pair=lambda r, c: advance(per_pair.get((r, c), 0)),
            **group.matrix_options(),
        )
        for t in group.tasks:
            yield t, mats[t.measure][(t.pair.x_layer, t.pair.y_layer)]
        return
    for t in group.tasks:
        log.info("%s %s", t.measure, t.pair)
        x = job.layer_input(t.pair.x_store, t.pair.x_layer)
        y = job.layer_input(t.pair.y_store, t.pair.y_layer)
        result = _function(t.measure)(x, y, **call_options(t.options))
        advance(1)
        yield t, result


def _versions() -> dict[str, str]:
    import dask
    import distributed
    import zarr

    import svcca_dask

    return {
        "python": sys.version.split()[0],
        "svcca_dask": svcca_dask.__version__,
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "zarr": zarr.__version__,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- #
# running


def run_job(
    job: Job,
    *,
    force: bool = False,
    cluster: str | Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> RunReport:
    """Run a validated job (see :func:`pipeline.jobs.load_job`).

    Parameters
    ----------
    job : Job
    force : bool, default False
        Recompute every result, even those an earlier run wrote for the same
        inputs and parameters.
    cluster : str or mapping, optional
        Overrides ``job.cluster`` (see :func:`open_cluster`).
    progress : bool or None, default None
        A progress bar on stderr, one step per result, and Dask's progress bar
        for each pass longer than a second on the threaded scheduler. None:
        when stderr is a terminal.

    Returns
    -------
    RunReport

    Raises
    ------
    pipeline.output.OutputLockedError
        If another run is writing into the same output folder.
    """
    os.makedirs(job.output, exist_ok=True)
    with output_lock(job.output):
        return _run(job, force=force, cluster=cluster, progress=progress)


def _run(
    job: Job, *, force: bool, cluster: str | Mapping[str, Any] | None, progress: bool | None
) -> RunReport:
    """:func:`run_job`, with the output folder held."""
    import zarr

    group_path = os.path.join(job.output, "coefficients.zarr")
    if not os.path.isfile(os.path.join(group_path, "zarr.json")):
        zarr.open_group(
            group_path, mode="w", zarr_format=3, attributes={"results_format": RESULTS_FORMAT}
        )

    fp = _fingerprints(job)
    tasks = _plan(job, fp)
    table = [] if force else [r for r in read_table(job.output) if has_arrays(group_path, r)]
    previous = {r["result_id"]: r for r in table}
    rows = {t.result_id: previous[t.result_id] for t in tasks if t.result_id in previous}
    earlier = _earlier_plans(job, table, {t.result_id for t in tasks}, fp)
    report = RunReport(output=job.output, reused=len(rows), kept=len(earlier))
    todo = [t for t in tasks if t.result_id not in rows]

    meta_path = os.path.join(job.output, "job.json")
    meta = {
        "params": job.params(),
        "versions": _versions(),
        "results_format": RESULTS_FORMAT,
        "started": _now(),
        "state": "running",
        "force": force,
    }
    atomic_json(meta_path, meta)

    checked: dict[tuple[str, str], Any] = {}

    def rows_check(t: _Task) -> str:
        """How the pair's rows were known to line up (:func:`svcca_dask.inputs.rows_checked`)."""
        from svcca_dask.inputs import open_layer, rows_checked

        sides = []
        for store, layer in ((t.pair.x_store, t.pair.x_layer), (t.pair.y_store, t.pair.y_layer)):
            layer = job.target_columns.get((store, layer), (layer,))[0]
            if (store, layer) not in checked:
                checked[(store, layer)] = open_layer(
                    job.layer_input(store, layer),
                    missing_chunks=t.options.get("missing_chunks", "error"),
                )
            sides.append(checked[(store, layer)])
        return rows_checked(sides, t.options.get("rows", "check"))

    def ordered() -> list[dict[str, Any]]:
        return [rows[t.result_id] for t in tasks if t.result_id in rows] + earlier

    spec = job.cluster if cluster is None else cluster
    with (
        open_cluster(spec if todo else None) as client,  # no cluster when all is reused
        dask_progress(progress if client is None else False),
        # the bar starts after the cluster's start-up message, on a line of its own
        progress_bar(len(tasks), "run", enabled=progress) as bar,
    ):
        bar.update(len(rows))
        for group in _groups(job, todo):
            report.passes += 1 if group.matrix else len(group.tasks)
            for t, result in _compute(job, group, bar.update):
                p = t.pair
                attrs = {
                    "pair": [f"{p.x_store}/{p.x_layer}", f"{p.y_store}/{p.y_layer}"],
                    "measure": t.measure,
                    "options": t.options,
                    "score": float(result.score),
                }
                write_arrays(group_path, t.result_id, _result_arrays(result), attrs)
                rows[t.result_id] = {
                    "x_store": p.x_store,
                    "x_layer": p.x_layer,
                    "y_store": p.y_store,
                    "y_layer": p.y_layer,
                    "measure": t.measure,
                    "against": job.against,
                    **_row_fields(result),
                    "rows": rows_check(t),
                    "options": json.dumps(t.options, sort_keys=True),
                    "result_id": t.result_id,
                    "x_path": job.layer_path(p.x_store, p.x_layer),
                    "y_path": job.layer_path(
                        p.y_store, job.target_columns.get((p.y_store, p.y_layer), (p.y_layer,))[0]
                    ),
                    "computed_at": _now(),
                }
                report.computed += 1
                if not group.matrix:  # pair by pair: each result as it completes
                    write_table(job.output, ordered())
            write_table(job.output, ordered())  # a matrix pass: its results together
    report.rows = ordered()
    write_table(job.output, report.rows)
    prune(job.output, group_path, {r["result_id"] for r in report.rows})
    meta.update(state="finished", finished=_now(), computed=report.computed, reused=report.reused)
    atomic_json(meta_path, meta)
    return report
