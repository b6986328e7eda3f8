"""The demo's stages: train, extract, run the jobs on a local cluster, analyse, report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import score_matrix as _matrix
from .checks import convergence_check, neuron_check
from .page import percent, write_demo_page
from .summary import (
    CONV_CLASSES,
    CONV_HEATMAP,
    DEFAULT_OUT,
    DEFAULT_THRESHOLD,
    DENSE_LAYER,
    NETS,
    DemoSummary,
)

__all__ = ["DEFAULT_OUT", "DemoSummary", "run_demo"]

log = logging.getLogger(__name__)


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


def _store_name(net: str, fraction: float) -> str:
    return f"{net}-{round(100 * fraction):03d}.zarr"


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
    from ..extract import extract_activations
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
    from ..jobs import load_job
    from ..runner import run_job

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

    from .. import report as rp
    from ..analysis import freeze_schedule
    from .models import (
        CHECKPOINTS,
        ConvNet,
        ResNet,
        accuracy,
        accuracy_with_projection,
        build_model,
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
    # machine OpenMP's waiting threads make training many times slower
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
                percent(f): _matrix(
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
            neuron = neuron_check(x, y, res)
            cca_pair = sd.cca(x, y)
            rng = np.random.default_rng(0)
            baseline = sd.cca(rng.standard_normal(x.shape), rng.standard_normal(y.shape))
        summary.checks["directions_shared"] = neuron
        summary.checks["lower_layers_converge_first"] = convergence_check(
            dyn["net1"], conv_layers, first=conv_layers[0], last=DENSE_LAYER
        )

        # Freeze Training schedule from net1's learning dynamics (diagonal)
        convergence = {
            name: {f: float(dyn["net1"][percent(f)][i, i]) for f in CHECKPOINTS}
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
        write_demo_page(
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
