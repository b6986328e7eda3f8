"""``svcca-dask demo``: the project's main job, out of the box.

On scikit-learn's 8 x 8 digits, on CPU, in about half a minute:

1. trains two small conv nets (``net1``, ``net2``: same architecture, other
   seeds) and a small residual net (``resnet``), keeping checkpoints at 0, 35,
   75 and 100% of training (:mod:`pipeline.demo.models`);
2. extracts every layer of every checkpoint into local activation stores with
   :func:`pipeline.extract.extract_activations`;
3. runs SVCCA jobs over the stores with :mod:`pipeline.runner` on a local
   Dask cluster (learning dynamics, net1 vs net2, class sensitivity);
4. derives the Freeze Training schedule from the learning dynamics and
   (optionally) trains with it; compresses a layer by projecting it on its
   top-k SVCCA directions (:meth:`svcca_dask.CCAResult.projection`);
5. writes a report folder: ``index.html``, the figures (PNG) and the tidy
   results table (:mod:`pipeline.report`).

Modules: :mod:`~.run` (the stages), :mod:`~.checks` (the paper's findings,
checked on the run's own numbers), :mod:`~.page` (figures and the page, its
prose in ``templates/sections.j2``). All similarity math comes from
:mod:`svcca_dask`; this package orchestrates.
"""

from __future__ import annotations

import argparse
from typing import Any

from .run import run_demo
from .summary import DEFAULT_OUT, DEFAULT_THRESHOLD, DemoSummary

__all__ = ["DEFAULT_OUT", "DemoSummary", "add_parser", "run_demo"]


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``svcca-dask``."""
    p = subparsers.add_parser(
        "demo",
        help="the main job: train small nets, extract, compare on a local cluster, write a report",
        description=(
            "Train two small conv nets and a residual net on scikit-learn's digits (CPU), "
            "extract every layer of checkpoints at 0/35/75/100% of training into Zarr "
            "stores, run SVCCA jobs on a local Dask cluster, and write a report folder "
            "(index.html, figures, tidy results table). About half a minute on 2 cores."
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
