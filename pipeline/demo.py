"""``svcca-dask demo``: the project's main job, out of the box.

On scikit-learn's 8 x 8 digits, on CPU, in a few minutes:

1. trains two small conv nets (``net1``, ``net2``: same architecture, other
   seeds) and a small residual net (``resnet``), keeping checkpoints at 0, 35,
   75 and 100% of training (:mod:`pipeline.models`);
2. extracts every layer of every checkpoint into local activation stores with
   :func:`pipeline.extract.extract_activations`;
3. runs SVCCA jobs over the stores with :mod:`pipeline.runner` on a local
   Dask cluster (learning dynamics, net1 vs net2, class sensitivity);
4. derives the Freeze Training schedule from the learning dynamics and
   (optionally) trains with it; compresses a layer by projecting it on its
   top-k SVCCA directions (:meth:`svcca_dask.CCAResult.projection`);
5. writes a report folder: ``index.html``, the figures (PNG) and the tidy
   results table (:mod:`pipeline.report`).

All similarity math comes from :mod:`svcca_dask`; this module orchestrates.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_OUT", "DemoSummary", "add_parser", "run_demo"]

log = logging.getLogger(__name__)

#: Report folder when ``--out`` is not given.
DEFAULT_OUT = "demo-out"

#: The nets the demo trains: name -> (architecture, seed).
NETS: dict[str, tuple[str, int]] = {
    "net1": ("convnet", 1),
    "net2": ("convnet", 2),
    "resnet": ("resnet", 3),
}

#: Dense layer used for the neurons-vs-directions figure, the spectrum and compression.
DENSE_LAYER = "fc1"

#: Freeze Training: SVCCA with the final state at which a layer counts as converged.
DEFAULT_THRESHOLD = 0.99

#: "Lower layers converge first": at 35% of training, the first hidden layer's
#: SVCCA with its final state must exceed the last hidden layer's by this much
#: (and its own value at 0% by this much: the first layer did learn).
CONVERGENCE_MARGIN = 0.02

#: Reduction of conv layers in the layer x layer heatmaps (conv against dense
#: layers too, so one feature map per layer: one pass per matrix).
CONV_HEATMAP = "mean"

#: Reduction of conv layers against the 1-D class logits (the paper's DFT method).
CONV_CLASSES = "dft"


@dataclass
class DemoSummary:
    """What :func:`run_demo` measured (also written to ``summary.json``).

    Attributes
    ----------
    out : str
        The report folder.
    seconds : dict of str -> float
        Wall time of each stage and ``"total"``.
    accuracy : dict of str -> float
        Test accuracy of each trained net.
    checks : dict of str -> dict
        The acceptance checks: the numbers compared and whether they hold.
    schedule : dict of str -> float or None
        The Freeze Training schedule (fraction of training after which each
        layer of net1 freezes; None: trains to the end).
    freeze_training : dict or None
        Accuracy, compute and time of normal vs frozen training.
    compression : dict
        ``k`` and test accuracy with ``fc1`` projected on its top-k directions.
    """

    out: str
    seconds: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: dict[str, float | None] = field(default_factory=dict)
    freeze_training: dict[str, Any] | None = None
    compression: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"report: {Path(self.out) / 'index.html'}"]
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines.append(
            "test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in self.accuracy.items())
        )
        for name, c in self.checks.items():
            lines.append(f"check {name}: {'holds' if c['holds'] else 'FAILS'} ({c['text']})")
        if self.freeze_training:
            f = self.freeze_training
            lines.append(
                f"freeze training: accuracy {f['frozen_accuracy']:.3f} vs {f['normal_accuracy']:.3f}, "
                f"compute {f['frozen_gflop']:.1f} vs {f['normal_gflop']:.1f} GFLOP "
                f"({100 * f['frozen_gflop'] / f['normal_gflop']:.0f}%)"
            )
        return "\n".join(lines)


class _Stages:
    """Wall time of each stage, logged as it ends."""

    def __init__(self, progress: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        if self.progress:
            print(f"[demo] {name} ...", flush=True)
        yield
        self.seconds[name] = time.perf_counter() - t
        if self.progress:
            print(f"[demo] {name}: {self.seconds[name]:.1f} s", flush=True)

    def total(self) -> float:
        self.seconds["total"] = time.perf_counter() - self.start
        return self.seconds["total"]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pct(fraction: float) -> str:
    return f"{round(100 * fraction)}%"


def _diagonal(curves: dict[str, dict[str, float]], at: str) -> str:
    """``"conv1 0.981, conv2 0.955, ..."``: each layer's score at checkpoint ``at``."""
    return ", ".join(f"{name} {c[at]:.3f}" for name, c in curves.items())


def _store_name(net: str, fraction: float) -> str:
    return f"{net}-{round(100 * fraction):03d}.zarr"


# --------------------------------------------------------------------------- #
# stages


def _train_all(data: Any, *, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every net of :data:`NETS`; returns the models and their TrainResults."""
    from .models import build_model, train

    models, results = {}, {}
    for name, (arch, seed) in NETS.items():
        models[name] = build_model(arch, seed=seed)
        results[name] = train(models[name], data, epochs=epochs, seed=seed)
    return models, results


def _class_logits(model: Any, n_classes: int) -> Any:
    """``model`` wrapped so that each class's logit is the output of a module ``class_<c>``.

    Extracting ``class_*`` gives one ``(n, 1)`` layer per class: the targets
    of the class sensitivity job.
    """
    import torch
    from torch import nn

    class Column(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.c = c

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z[:, self.c : self.c + 1]

    class ClassLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            for c in range(n_classes):
                self.add_module(f"class_{c}", Column(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.net(x)
            return torch.cat([self.get_submodule(f"class_{c}")(z) for c in range(n_classes)], 1)

    return ClassLogits()


def _extract_all(
    models: dict[str, Any], results: dict[str, Any], data: Any, stores: Path
) -> dict[str, Path]:
    """Every layer of every checkpoint into ``stores/<net>-<pct>.zarr``, plus ``classes.zarr``.

    The samples are the training set sorted by class (so figures over samples
    show classes as contiguous runs); the labels go in each store.
    """
    from .extract import extract_activations
    from .models import layer_names

    x, y = data.x_train, data.y_train
    batch = 512

    def batches() -> list[tuple[Any, Any]]:
        return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]

    paths: dict[str, Path] = {}
    for net, model in models.items():
        final = {k: v.clone() for k, v in model.state_dict().items()}
        for fraction, state in sorted(results[net].checkpoints.items()):
            model.load_state_dict(state)
            path = stores / _store_name(net, fraction)
            extract_activations(
                model,
                batches(),
                path,
                layers=list(layer_names(model)),
                dataset_size=len(y),
                overwrite=True,
                progress=False,
                provenance={"demo": {"net": net, "fraction": fraction}},
            )
            paths[path.name] = path
        model.load_state_dict(final)
    path = stores / "classes.zarr"
    extract_activations(
        _class_logits(models["net1"], data.n_classes),
        batches(),
        path,
        layers="class_*",
        dataset_size=len(y),
        overwrite=True,
        progress=False,
        provenance={"demo": {"net": "net1", "fraction": 1.0, "what": "class logits"}},
    )
    paths[path.name] = path
    return paths


def _toml(spec: dict[str, Any]) -> str:
    """A job spec as TOML (strings, numbers, lists of them, and one level of tables)."""

    def value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list) and v and all(isinstance(i, list) for i in v):
            return "[\n" + "".join(f"    {value(i)},\n" for i in v) + "]"
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    top = [f"{k} = {value(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{json.dumps(kk)} = {value(vv)}" for kk, vv in v.items())
        for k, v in spec.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def _job_specs(layers: dict[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """The demo's jobs (paths relative to the report folder).

    ``learning_dynamics`` pairs every layer of each checkpoint of net1 and
    resnet (``layers[net]``) with every layer of the same net's final state;
    ``net1_vs_net2`` and ``class_sensitivity`` pair every layer of the final
    net1 with every layer of the final net2 and every class logit.
    """
    from .models import CHECKPOINTS

    def stem(net: str, fraction: float) -> str:
        return _store_name(net, fraction).removesuffix(".zarr")

    def product(a: str, b: str, la: Sequence[str], lb: Sequence[str]) -> list[list[str]]:
        return [[f"{a}/{x}", f"{b}/{y}"] for x in la for y in lb]

    dyn_stores, dyn_pairs = {}, []
    for net in ("net1", "resnet"):
        for f in CHECKPOINTS:
            dyn_stores[stem(net, f)] = f"stores/{_store_name(net, f)}"
        for f in CHECKPOINTS:
            dyn_pairs += product(stem(net, f), stem(net, 1.0), layers[net], layers[net])
    final1, final2 = stem("net1", 1.0), stem("net2", 1.0)
    return {
        "learning_dynamics": {
            "output": "jobs/learning_dynamics",
            "measures": ["svcca"],
            "pairs": dyn_pairs,
            "stores": dyn_stores,
            "options": {"keep": 0.99, "conv": CONV_HEATMAP},
        },
        "net1_vs_net2": {
            "output": "jobs/net1_vs_net2",
            "measures": ["svcca"],
            "pairs": "all",  # every layer of net1 with every layer of net2
            "stores": {final1: f"stores/{final1}.zarr", final2: f"stores/{final2}.zarr"},
            "options": {"keep": 0.99, "conv": CONV_HEATMAP},
        },
        "class_sensitivity": {
            "output": "jobs/class_sensitivity",
            "measures": ["svcca"],
            "pairs": "all",  # every layer of net1 with every class logit
            "stores": {final1: f"stores/{final1}.zarr", "classes": "stores/classes.zarr"},
            "options": {"keep": 0.99, "conv": CONV_CLASSES},
        },
    }


def _run_jobs(out: Path, specs: dict[str, dict[str, Any]], *, address: str) -> list[dict[str, Any]]:
    """Write each job as ``out/jobs/<name>.toml``, run it on the cluster at ``address``.

    Returns the rows of every job's results table, in job order.
    """
    from .jobs import load_job
    from .runner import run_job

    rows: list[dict[str, Any]] = []
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        path = out / "jobs" / f"{name}.toml"
        # the job files sit in out/jobs: their paths are relative to it
        rel = dict(spec, output=f"../{spec['output']}", cluster="local")
        rel["stores"] = {k: f"../{v}" for k, v in spec["stores"].items()}
        path.write_text(
            f"# svcca-dask run {path.name}  (from the report folder's jobs/)\n" + _toml(rel)
        )
        report = run_job(load_job(path), cluster={"spec": address, "quiet": True}, progress=False)
        rows.extend(dict(r, job=name) for r in report.rows)
    return rows


def _matrix(
    rows: Sequence[dict[str, Any]], x_store: str, y_store: str, xl: Sequence[str], yl: Sequence[str]
) -> np.ndarray:
    """The ``len(xl) x len(yl)`` scores of one pair of store names from result rows (NaN if absent)."""
    m = np.full((len(xl), len(yl)), np.nan)
    ix = {name: i for i, name in enumerate(xl)}
    iy = {name: j for j, name in enumerate(yl)}
    for r in rows:
        if r["x_store"] == x_store and r["y_store"] == y_store:
            i, j = ix.get(r["x_layer"]), iy.get(r["y_layer"])
            if i is not None and j is not None:
                m[i, j] = float(r["score"])
    return m


def _neuron_check(x: np.ndarray, y: np.ndarray, res: Any) -> dict[str, Any]:
    """Top-neuron correlations against top aligned-direction correlations of two nets' layer.

    The two highest-norm neurons of each net (norm of the centred activation
    vector over the samples); the correlation of each net1 top neuron with
    net2's top neuron of the same rank and with its best-matching net2 neuron
    (one-pass :func:`svcca_dask.similarity_matrix` of single neurons with
    ``measure="cca"``: the absolute correlation).
    """
    import svcca_dask as sd

    top_x = np.argsort(-np.linalg.norm(x - x.mean(0), axis=0))[:2]
    top_y = np.argsort(-np.linalg.norm(y - y.mean(0), axis=0))[:2]
    live_y = [j for j in range(y.shape[1]) if np.ptp(y[:, j]) > 0]
    m = sd.similarity_matrix(
        {int(i): x[:, [i]] for i in top_x},
        {int(j): y[:, [j]] for j in live_y},
        measure="cca",
        return_results=False,
    )
    same_rank = [m.score(int(i), int(j)) for i, j in zip(top_x, top_y, strict=True)]
    best = [float(np.max(m.scores[r])) for r in range(len(top_x))]
    aligned = [float(c) for c in res.coefficients[:2]]
    return {
        "top_neurons": (top_x.tolist(), top_y.tolist()),
        "neuron_corr_same_rank": same_rank,
        "neuron_corr_best_match": best,
        "direction_corr": aligned,
        "holds": min(aligned) > max(best),
        "text": (
            f"top-2 SVCCA directions correlate {aligned[0]:.3f}, {aligned[1]:.3f}; net1's top-2 "
            f"neurons correlate {same_rank[0]:.3f}, {same_rank[1]:.3f} with net2's (best match "
            f"among all net2 neurons {best[0]:.3f}, {best[1]:.3f})"
        ),
    }


def _convergence_check(
    dyn: dict[str, np.ndarray],
    layers: Sequence[str],
    *,
    first: str,
    last: str,
    margin: float = CONVERGENCE_MARGIN,
) -> dict[str, Any]:
    """ "Lower layers converge first", on the diagonals of the learning-dynamics matrices.

    Holds if at 35% of training the SVCCA of ``first`` (the first hidden
    layer, after its nonlinearity) with its final state exceeds that of
    ``last`` (the last hidden layer) by at least ``margin``, and exceeds its
    own value at 0% by at least ``margin`` (the first layer learned
    something: it is not similar to its final state by construction).

    Parameters
    ----------
    dyn : dict of checkpoint label -> ndarray, shape (len(layers), len(layers))
        ``{"0%": m0, "35%": m35, ...}``: layer at k% (rows) against layer at
        100% (columns).
    layers : sequence of str
    first, last : str
        Layer names (in ``layers``).
    margin : float

    Returns
    -------
    dict
        ``first``, ``last``, ``margin``, the diagonal ``curves`` (layer ->
        {checkpoint label: score}), ``holds`` and a one-line ``text``.
    """
    missing = [name for name in (first, last) if name not in layers]
    if missing or first == last:
        raise ValueError(
            f"first and last must be two of the layers {list(layers)}, got {first!r}, {last!r}"
        )
    curves = {
        name: {label: float(m[k, k]) for label, m in dyn.items()} for k, name in enumerate(layers)
    }
    a, b = curves[first], curves[last]
    holds = a["35%"] - b["35%"] >= margin and a["35%"] - a["0%"] >= margin
    return {
        "first": first,
        "last": last,
        "margin": margin,
        "curves": curves,
        "holds": bool(holds),
        "text": (
            f"SVCCA with the final state at 0/35/75%: {first} (first hidden layer) "
            + "/".join(f"{a[p]:.3f}" for p in ("0%", "35%", "75%"))
            + f", {last} (last hidden layer) "
            + "/".join(f"{b[p]:.3f}" for p in ("0%", "35%", "75%"))
            + f"; at 35% {first} leads by {a['35%'] - b['35%']:.3f} (needed: {margin})"
        ),
    }


def run_demo(
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    epochs: int = 12,
    threshold: float = DEFAULT_THRESHOLD,
    freeze_training: bool = True,
    workers: int = 1,
    threads: int = 2,
    progress: bool = True,
) -> DemoSummary:
    """Run the whole demo and write the report folder ``out``.

    Parameters
    ----------
    out : path, default DEFAULT_OUT
        Report folder (created; stores go in ``out/stores``).
    epochs : int, default 12
        Training epochs of each net.
    threshold : float, default DEFAULT_THRESHOLD
        Freeze Training: a layer has converged once its SVCCA with its final
        state reaches this.
    freeze_training : bool, default True
        Also train net1 again with the schedule and compare with normal training.
    workers, threads : int
        The local Dask cluster's worker processes and threads per worker.
        PyTorch trains on one thread (the nets are tiny).
    progress : bool, default True
        Print each stage and its wall time.

    Returns
    -------
    DemoSummary
    """
    import svcca_dask as sd
    from svcca_dask.cluster import connect
    from svcca_dask.store import open_store

    from . import report as rp
    from .models import (
        CHECKPOINTS,
        ConvNet,
        ResNet,
        accuracy,
        accuracy_with_projection,
        build_model,
        freeze_schedule,
        load_digits,
        set_determinism,
        train,
    )

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stores = out / "stores"
    stage = _Stages(progress)
    summary = DemoSummary(out=str(out))
    # one PyTorch thread: these nets are too small to gain from two, and on a busy
    # 2-core machine two threads made training 13x slower (OpenMP waits; measured)
    set_determinism(threads=1)

    with stage("train"):
        data = load_digits()
        models, trained = _train_all(data, epochs=epochs)
        summary.accuracy = {name: r.test_accuracy for name, r in trained.items()}
    with stage("extract"):
        _extract_all(models, trained, data, stores)

    conv_layers, res_layers = ConvNet.LAYERS, ResNet.LAYERS
    final = {net: _store_name(net, 1.0).removesuffix(".zarr") for net in NETS}
    specs = _job_specs({"net1": conv_layers, "resnet": res_layers})
    with contextlib.ExitStack() as stack:
        with stage("cluster"):
            conn = stack.enter_context(
                connect(
                    "local",
                    n_workers=workers,
                    threads_per_worker=threads,
                    dashboard_address="127.0.0.1:0",
                    quiet=True,
                    silence_logs=logging.ERROR,
                )
            )
        with stage("jobs"):
            rows = _run_jobs(out, specs, address=conn.scheduler_address)
        dyn = {
            net: {
                _pct(f): _matrix(
                    rows, _store_name(net, f).removesuffix(".zarr"), final[net], layers, layers
                )
                for f in CHECKPOINTS
            }
            for net, layers in (("net1", conv_layers), ("resnet", res_layers))
        }
        classes = [f"class_{c}" for c in range(data.n_classes)]
        sens = _matrix(rows, final["net1"], "classes", conv_layers, classes)
        nets = _matrix(rows, final["net1"], final["net2"], conv_layers, conv_layers)

        with stage("analyses"):
            s1 = open_store(stores / f"{final['net1']}.zarr")
            s2 = open_store(stores / f"{final['net2']}.zarr")
            x = np.asarray(s1.read(DENSE_LAYER).data.compute(), dtype=np.float64)
            y = np.asarray(s2.read(DENSE_LAYER).data.compute(), dtype=np.float64)
            labels = np.asarray(s1.labels().compute())
            res = sd.svcca(x, y, keep=0.99)
            neuron = _neuron_check(x, y, res)
            cca_pair = sd.cca(x, y)
            rng = np.random.default_rng(0)
            baseline = sd.cca(rng.standard_normal(x.shape), rng.standard_normal(y.shape))
        summary.checks["directions_shared"] = neuron
        summary.checks["lower_layers_converge_first"] = _convergence_check(
            dyn["net1"], conv_layers, first=conv_layers[0], last=DENSE_LAYER
        )

        # Freeze Training schedule from net1's learning dynamics (diagonal)
        convergence = {
            name: {f: float(dyn["net1"][_pct(f)][i, i]) for f in CHECKPOINTS}
            for i, name in enumerate(conv_layers)
        }
        summary.schedule = freeze_schedule(convergence, layers=conv_layers, threshold=threshold)

        # compression: fc1 of net1 projected on its top-k SVCCA directions (against net2)
        net1 = models["net1"]
        ks = sorted(
            {k for k in (1, 2, 4, 8, 16, 32, 64) if k <= res.coefficients.size}
            | {res.coefficients.size}
        )
        svcca_acc = [
            accuracy_with_projection(
                net1, DENSE_LAYER, res.projection(k), res.x_mean, data.x_test, data.y_test
            )
            for k in ks
        ]
        order = np.argsort(-np.linalg.norm(x - x.mean(0), axis=0))
        neuron_acc = [
            accuracy_with_projection(
                net1,
                DENSE_LAYER,
                np.diag(np.isin(np.arange(x.shape[1]), order[:k]).astype(float)),
                x.mean(0),
                data.x_test,
                data.y_test,
            )
            for k in ks
        ]
        summary.compression = {
            "layer": DENSE_LAYER,
            "k": ks,
            "svcca_accuracy": svcca_acc,
            "neuron_accuracy": neuron_acc,
            "uncompressed_accuracy": accuracy(net1, data.x_test, data.y_test),
            "kept_x": res.x_kept,
            "kept_y": res.y_kept,
        }

    if freeze_training:
        with stage("freeze training"):
            # normal training again, next to the frozen run, so that their wall times
            # are measured under the same load (the weights are those of net1: seeded)
            arch, seed = NETS["net1"]
            normal = train(build_model(arch, seed=seed), data, epochs=epochs, seed=seed)
            frozen = train(
                build_model(arch, seed=seed),
                data,
                epochs=epochs,
                seed=seed,
                schedule=summary.schedule,
            )
            summary.freeze_training = {
                "normal_accuracy": normal.test_accuracy,
                "frozen_accuracy": frozen.test_accuracy,
                "normal_gflop": normal.compute_gflop,
                "frozen_gflop": frozen.compute_gflop,
                "normal_seconds": normal.seconds,
                "frozen_seconds": frozen.seconds,
                "reproduced_net1": normal.test_accuracy == trained["net1"].test_accuracy,
            }

    with stage("report"):
        summary.seconds = dict(stage.seconds)
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=float))
        _write_report(
            out,
            summary,
            rows=rows,
            dyn=dyn,
            sens=sens,
            nets=nets,
            x=x,
            y=y,
            labels=labels,
            res=res,
            neuron=neuron,
            cca_pair=cca_pair,
            baseline=baseline,
            threshold=threshold,
            convergence=convergence,
            rp=rp,
        )
    stage.total()
    summary.seconds = dict(stage.seconds)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2, default=float))
    return summary


def _write_report(out: Path, summary: DemoSummary, **k: Any) -> None:
    """Figures and ``index.html`` of the demo (see :func:`run_demo`)."""
    from .models import CHECKPOINTS, ConvNet, ResNet
    from .runner import COLUMNS

    rp = k["rp"]
    res, neuron = k["res"], k["neuron"]
    x, y = k["x"], k["y"]
    (ix, iy) = neuron["top_neurons"]
    rp.plot_neurons_vs_directions(
        (x[:, ix], y[:, iy]),
        (res.transform(x, side="x")[:, :2], res.transform(y, side="y")[:, :2]),
        k["labels"],
        out / "fig1_neurons_vs_directions.png",
        layer=DENSE_LAYER,
        neuron_ids=(ix, iy),
        correlations=res.coefficients[:2],
    )
    for net, layers in (("net1", ConvNet.LAYERS), ("resnet", ResNet.LAYERS)):
        rp.plot_heatmaps(
            {f"{net} at {p}": m for p, m in k["dyn"][net].items()},
            out / f"fig2_learning_dynamics_{net}.png",
            rows=layers,
            cols=layers,
            row_label="layer at k% of training",
            col_label="layer at 100%",
            title=f"Learning dynamics of {net}: SVCCA of each checkpoint's layers with the final ones",
        )
    rp.plot_class_sensitivity(
        k["sens"],
        out / "fig3_class_sensitivity.png",
        layers=ConvNet.LAYERS,
        classes=[str(c) for c in range(k["sens"].shape[1])],
        title="net1 (final): each layer against each class's logit",
    )
    rp.plot_spectrum(
        k["cca_pair"].coefficients,
        k["baseline"].coefficients,
        out / "fig4_cca_spectrum.png",
        pair=f"{DENSE_LAYER}: net1 vs net2",
    )
    rp.plot_heatmaps(
        {"net1 vs net2 (final)": k["nets"]},
        out / "fig5_net1_vs_net2.png",
        rows=ConvNet.LAYERS,
        cols=ConvNet.LAYERS,
        row_label="net1 layer",
        col_label="net2 layer",
        title="Two nets, same architecture, other seeds",
    )
    comp = summary.compression
    rp.plot_accuracy_vs_k(
        {
            "top-k SVCCA directions (vs net2)": (comp["k"], comp["svcca_accuracy"]),
            "top-k highest-norm neurons": (comp["k"], comp["neuron_accuracy"]),
        },
        out / "fig6_compression.png",
        layer=DENSE_LAYER,
        reference=comp["uncompressed_accuracy"],
    )

    rows = k["rows"]
    columns = ["x_store", "x_layer", "y_store", "y_layer", "measure", "score"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["job", *COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    t = summary.seconds
    sched_rows = [
        {
            "layer": name,
            **{f"SVCCA at {_pct(f)}": k["convergence"][name][f] for f in CHECKPOINTS if f < 1.0},
            "freeze after": "never" if at is None else _pct(at),
        }
        for name, at in summary.schedule.items()
    ]
    ft = summary.freeze_training
    ft_text = "Freeze Training was not run (--no-freeze-training)."
    ft_table = None
    if ft is not None:
        ft_text = (
            "net1 trained again from the same initialization and batch order, following the "
            "schedule: each layer stops training (weights and batch-norm statistics frozen) "
            "at its time, and no gradient flows below the lowest layer still training. Compute "
            "is counted per layer (forward, plus twice the forward for a trained layer's "
            "backward, once for a frozen layer gradients pass through). A layer is a whole "
            "block (conv, batch norm and ReLU freeze together). Here Freeze Training reaches "
            f"test accuracy {ft['frozen_accuracy']:.3f} against {ft['normal_accuracy']:.3f} "
            f"with {100 * ft['frozen_gflop'] / ft['normal_gflop']:.0f}% of the training "
            "compute; a lower threshold freezes earlier and saves more, at some risk to "
            "accuracy."
        )
        ft_table = rp.html_table(
            [
                {
                    "training": "normal",
                    "test accuracy": ft["normal_accuracy"],
                    "compute (GFLOP)": ft["normal_gflop"],
                    "wall time (s)": ft["normal_seconds"],
                },
                {
                    "training": "Freeze Training",
                    "test accuracy": ft["frozen_accuracy"],
                    "compute (GFLOP)": ft["frozen_gflop"],
                    "wall time (s)": ft["frozen_seconds"],
                },
            ],
            floatfmt="{:.3f}",
        )
    checks = summary.checks
    lower = checks["lower_layers_converge_first"]
    curves, first = lower["curves"], lower["first"]
    res_curves = {
        name: {p: float(m[i, i]) for p, m in k["dyn"]["resnet"].items()}
        for i, name in enumerate(ResNet.LAYERS)
    }
    nets = k["nets"]
    pair_diag = {name: {"": float(nets[i, i])} for i, name in enumerate(ConvNet.LAYERS)}
    i_dense, i_logits = ConvNet.LAYERS.index(DENSE_LAYER), ConvNet.LAYERS.index("logits")
    sections = [
        rp.Section(
            "1. Top neurons vs top SVCCA directions (net1 vs net2)",
            f"Layer {DENSE_LAYER} of two conv nets that differ only in their random seed, over "
            "the training digits sorted by class (dashed lines: class boundaries). Top row: "
            "each net's two highest-norm neurons; they do not line up across the nets. Bottom "
            "row: the top two SVCCA directions (canonical variates) of each net; they "
            f"coincide. {_sentence(neuron['text'])}.",
            image="fig1_neurons_vs_directions.png",
        ),
        rp.Section(
            "2. Learning dynamics: the conv net",
            "Each panel: SVCCA of every layer of net1 at k% of training (rows, input at the "
            "top) with every layer at the end (columns). Every hidden layer is taken after "
            "its ReLU: before it, a layer is an affine map of the layer below (the first "
            "conv layer, of the pixels), and CCA, invariant to invertible linear maps, would "
            "score the first one 1 at every checkpoint. Conv layers are reduced to their "
            "spatial mean per channel (conv='mean'), so that conv and dense layers share one "
            "matrix pass. The diagonal (each layer against its own final state; its values "
            "are in the table of section 6) lights up from the input side, as in Raghu et "
            f"al. (2017, fig. 4): at 35% of training {_diagonal(curves, '35%')} (the two "
            "top hidden layers settle about together). "
            f"{_sentence(lower['text'])}. At 0% no layer is its final self "
            f"({_diagonal(curves, '0%')}); {first} starts highest because random 3x3 "
            "filters followed by a ReLU already keep much of what trained ones keep of the "
            f"pixels, and it gains {curves[first]['35%'] - curves[first]['0%']:.3f} by 35%. "
            "The logits are the exception to the order: ten outputs pinned to the ten "
            f"classes, they align with their final state early ({curves['logits']['35%']:.3f} "
            "at 35%). At 75% the lowest SVCCA of a layer with its final state is "
            f"{np.nanmin(np.diagonal(k['dyn']['net1']['75%'])):.3f}: training has converged.",
            image="fig2_learning_dynamics_net1.png",
        ),
        rp.Section(
            "2b. Learning dynamics: the residual net",
            "The same for the residual net: its stem (conv, batch norm, ReLU), the output of "
            "each residual block (after its ReLU) and the logits. The stem settles first, the "
            f"blocks later: at 35% {_diagonal(res_curves, '35%')}; at 0% "
            f"{_diagonal(res_curves, '0%')}. The last blocks and the logits are similar to "
            "each other (bright off-diagonal cells at the bottom right).",
            image="fig2_learning_dynamics_resnet.png",
        ),
        rp.Section(
            "3. Class sensitivity",
            "SVCCA of each layer of the final net1 with each class's logit (a 1-D target). "
            "Conv layers are compared with the DFT method (conv='dft'), as in the paper: "
            "against a target with no spatial extent only the zero frequency (the spatial "
            "sum of each channel) can correlate. Sensitivity to every class grows with "
            "depth; some digits (bright cells in the upper rows) are already told apart by "
            "low layers, others only by the dense layers.",
            image="fig3_class_sensitivity.png",
        ),
        rp.Section(
            "4. CCA coefficient spectrum against a random baseline",
            f"The canonical correlations of {DENSE_LAYER} of net1 and net2, against those of "
            "random Gaussian activations of the same shape (samples x neurons). With finite "
            "samples even unrelated activations have nonzero correlations; the nets' top "
            "directions are far above that floor, their tail falls to it.",
            image="fig4_cca_spectrum.png",
        ),
        rp.Section(
            "5. net1 vs net2, every layer pair",
            "SVCCA of every layer of net1 with every layer of net2 at the end of training "
            "(conv layers by their spatial mean per channel). Each layer against its "
            f"counterpart: {_diagonal(pair_diag, '')}. The brightest cells pair one net's "
            f"{DENSE_LAYER} with the other's logits ({nets[i_dense, i_logits]:.3f} and "
            f"{nets[i_logits, i_dense]:.3f}): the ten class dimensions are shared. "
            f"{DENSE_LAYER} against {DENSE_LAYER} scores lower although its top directions "
            "are shared (section 1): SVCCA keeps 99% of the variance "
            f"({summary.compression['kept_x']} and {summary.compression['kept_y']} "
            "directions) and averages the canonical correlations, "
            "which beyond the top few fall off toward the random floor (section 4). conv1, "
            "close to the pixels in "
            "both nets, matches well; the deeper conv layers agree less: two seeds find "
            "different features there, which serve the dense layers equally well.",
            image="fig5_net1_vs_net2.png",
        ),
        rp.Section(
            "6. Freeze Training schedule",
            f"From figure 2: a layer has converged at the first checkpoint where its SVCCA "
            f"with its final state reaches {k['threshold']}; layers freeze bottom-up (never "
            "before a lower layer) and the logits always train. " + ft_text,
            table_html=rp.html_table(sched_rows, floatfmt="{:.3f}") + (ft_table or ""),
        ),
        rp.Section(
            "7. Compression",
            f"net1 with {DENSE_LAYER} replaced by its projection on its top-k SVCCA directions "
            f"(SVCCA with net2's {DENSE_LAYER}, keep 0.99: {comp['kept_x']} and "
            f"{comp['kept_y']} directions kept; the projection is "
            "svcca_dask.SVCCAResult.projection), against keeping its k highest-norm neurons "
            "(the others at their mean). Fitted on the training digits, accuracy on the test "
            "digits. A handful of SVCCA directions keep the accuracy.",
            image="fig6_compression.png",
            table_html=rp.html_table(
                [
                    {"k": kk, "SVCCA directions": a, "top neurons": b}
                    for kk, a, b in zip(
                        comp["k"], comp["svcca_accuracy"], comp["neuron_accuracy"], strict=True
                    )
                ],
                floatfmt="{:.3f}",
            ),
        ),
        rp.Section(
            "8. Acceptance checks",
            "The paper's two findings, checked on this run's own output.",
            table_html=rp.html_table(
                [
                    {"check": name, "holds": "yes" if c["holds"] else "NO", "numbers": c["text"]}
                    for name, c in checks.items()
                ]
            ),
        ),
        rp.Section(
            "9. Results table",
            "Every score the jobs computed, one row per (layer pair, measure): the tidy "
            "table in results.csv (the first rows below).",
            table_html=rp.html_table(
                [{c: r[c] for c in columns} for r in rows],
                columns=columns,
                max_rows=30,
            ),
        ),
    ]
    acc = ", ".join(f"{n} {a:.3f}" for n, a in summary.accuracy.items())
    times = ", ".join(f"{n} {v:.1f} s" for n, v in t.items())
    rp.write_report(
        out,
        sections,
        title="svcca-dask demo: SVCCA on small nets trained on digits",
        intro=(
            "Two small conv nets (net1, net2: same architecture, other seeds) and a small "
            "residual net trained on scikit-learn's 8x8 digits on CPU, checkpoints at 0, 35, 75 "
            "and 100% of training; every layer of every checkpoint extracted into Zarr "
            "activation stores (stores/), compared with SVCCA on a local Dask cluster. "
            f"Test accuracy: {acc}.\n\nWall time of the stages: {times}."
        ),
        results={"results table (CSV)": "results.csv", "summary (JSON)": "summary.json"},
    )


# --------------------------------------------------------------------------- #
# command line


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``svcca-dask``."""
    p = subparsers.add_parser(
        "demo",
        help="the main job: train small nets, extract, compare on a local cluster, write a report",
        description=(
            "Train two small conv nets and a residual net on scikit-learn's digits (CPU), "
            "extract every layer of checkpoints at 0/35/75/100% of training into Zarr "
            "stores, run SVCCA jobs on a local Dask cluster, and write a report folder "
            "(index.html, figures, tidy results table). A few minutes on 2 cores."
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"report folder (default: {DEFAULT_OUT})")
    p.add_argument("--epochs", type=int, default=12, help="training epochs per net (default 12)")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="Freeze Training: SVCCA with the final state at which a layer counts as "
        f"converged (default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--freeze-training",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train net1 again with the Freeze Training schedule and compare (default: on)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="local Dask cluster: worker processes (default 1)"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="local Dask cluster: threads per worker (default 2)"
    )
    p.add_argument("--quiet", action="store_true", help="no stage timings on stdout")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    summary = run_demo(
        args.out,
        epochs=args.epochs,
        threshold=args.threshold,
        freeze_training=args.freeze_training,
        workers=args.workers,
        threads=args.threads,
        progress=not args.quiet,
    )
    print(summary.text())
    return 0
