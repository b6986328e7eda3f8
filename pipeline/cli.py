"""The ``svcca-dask`` command line.

The subcommands: ``compare``, ``extract``, ``run``, ``layers``, ``report`` and
``freeze`` (here) and
``demo`` (:mod:`pipeline.demo`). Each module's ``add_parser(subparsers)``
adds its subparsers and sets each one's handler with
``parser.set_defaults(handler=fn)``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code (``None`` means 0). Heavy
packages (torch) are imported inside the handlers, so ``--help`` is quick.

Handlers raise exceptions to fail: :func:`main` prints ``svcca-dask <command>:
error: <message>`` on one line and exits with status 1 (argparse usage errors
exit with 2); ``--verbose`` adds the traceback and debug logs. Every
subcommand gets ``--verbose`` automatically. Without it, the libraries in
:data:`QUIET_LOGGERS` (Dask's ``distributed`` and the web servers under its
dashboard) log warnings and errors only, whichever subcommand starts a cluster.

Progress bars (tqdm for the steps the pipeline runs, Dask's own for a pass on
the threaded scheduler) go to stderr when it is a terminal; ``--progress``
forces them on (logs, CI), ``--no-progress`` off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from . import demo
from .analysis import DEFAULT_THRESHOLD

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

PROG = "svcca-dask"
log = logging.getLogger("pipeline")

#: ``--conv`` and ``--svd`` choices: the library's ``svcca_dask.conv.CONV_MODES`` and
#: ``svcca_dask.svd.SVD_METHODS``, written out so that ``--help`` does not import
#: the library (a test keeps them equal).
CONV_MODES = ("dft", "samples", "mean", "flatten")
SVD_METHODS = ("auto", "covariance", "randomized", "tsqr")

#: Libraries whose INFO logs stay out of the CLI's output unless ``--verbose``.
#: ``distributed`` sets its loggers to INFO when it is imported (inside a
#: handler, after :func:`main` configured logging), so a logger level set
#: beforehand would not hold: a filter on the handlers drops their records
#: below WARNING instead.
QUIET_LOGGERS: tuple[str, ...] = ("distributed", "bokeh", "tornado")


# --------------------------------------------------------------------------- #
# built-in subcommands


def add_parser(subparsers: Any) -> None:
    """Add the built-in subcommands: ``compare``, ``extract``, ``run``, ``layers``,
    ``report``, ``freeze``."""
    _add_compare(subparsers)
    _add_extract(subparsers)
    _add_run(subparsers)
    _add_layers(subparsers)
    _add_report(subparsers)
    _add_freeze(subparsers)


def _add_compare(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare two layers of activation stores",
        description=(
            "Compare two layers, each given as STORE.zarr/LAYER (any Zarr array path), "
            "and print the score. The pass runs on Dask's threads unless --cluster is given."
        ),
    )
    p.add_argument("x", help="first layer, e.g. acts_a.zarr/layer3")
    p.add_argument("y", help="second layer, e.g. acts_b.zarr/layer3")
    p.add_argument(
        "--measure",
        choices=("svcca", "pwcca", "cca", "cka", "shape"),
        default="svcca",
        help="similarity measure (default: svcca); shape: a distance (lower is more alike)",
    )
    p.add_argument(
        "--keep",
        type=_keep,
        default=None,
        help="SVCCA: fraction of variance in (0, 1] or number of directions (default 0.99)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="google/svcca's dead-feature threshold and ridge, finite and >= 0 (default: "
        "none: no ridge, rank-revealing whitening; 1e-10 reproduces google/svcca)",
    )
    p.add_argument(
        "--conv",
        choices=CONV_MODES,
        default=None,
        help="reduction of conv layers (n, C, H, W): dft (the default: per-frequency CCA, "
        "the SVCCA paper's method), samples (every position a sample), mean (spatial "
        "average, the cheapest), flatten (every channel and position a feature)",
    )
    p.add_argument(
        "--dft-memory-limit",
        default=None,
        metavar="SIZE",
        help="--conv dft: memory for the per-frequency statistics, e.g. 2GiB (default: a "
        "quarter of physical memory); less memory means more passes over the data",
    )
    p.add_argument(
        "--svd",
        choices=SVD_METHODS,
        default=None,
        help="SVCCA's SVD step (default auto: the covariance when it fits, else randomized)",
    )
    p.add_argument(
        "--n-components",
        type=int,
        default=None,
        metavar="K",
        help="--svd randomized: directions computed first (default min(d, 128))",
    )
    p.add_argument(
        "--n-power-iter",
        type=int,
        default=None,
        metavar="Q",
        help="--svd randomized: power iterations (default 2)",
    )
    p.add_argument(
        "--n-oversamples",
        type=int,
        default=None,
        metavar="P",
        help="--svd randomized: extra random directions (default 10)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="--svd randomized: seed of the random test matrix (default 0)",
    )
    p.add_argument(
        "--debiased",
        action="store_const",
        const=True,
        default=None,
        help="--measure cka: debiased CKA (unbiased HSIC; unrelated layers score near 0)",
    )
    p.add_argument(
        "--missing-chunks",
        choices=("error", "fill"),
        default=None,
        help="a chunk a plain Zarr array never stored: error (default: refused, "
        "naming the rows) or fill (Zarr's fill value, for write_empty_chunks=False)",
    )
    p.add_argument(
        "--rows",
        choices=("check", "trust"),
        default=None,
        help="check (default): refuse layers whose recorded data orders or sample "
        "ids differ; trust: compare them as they are",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="cca, svcca, pwcca: held-out score over K sample blocks (directions "
        "fit on the other K - 1)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="--measure shape: 0 any invertible map (CCA) ... 1 rotations (default 1)",
    )
    p.add_argument(
        "--metric",
        choices=("angular", "euclidean"),
        default=None,
        help="--measure shape: the distance (default angular, in [0, pi])",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="run on a Dask cluster: 'local' or a scheduler address (default: threads)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with score, coefficients and the inputs",
    )
    _add_progress(p)
    p.set_defaults(handler=_compare)


def _add_extract(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract a PyTorch model's activations into an activation store",
        description=(
            "Run a PyTorch model over a dataset with forward hooks on named layers and "
            "append each batch's activations to an activation store (Zarr). Resumes "
            "after an interruption. Needs torch: pip install 'svcca-dask[torch]'."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="'module:callable' or 'path/file.py:callable' returning a torch.nn.Module",
    )
    p.add_argument(
        "--data",
        required=True,
        help=(
            "'module:callable' or 'path/file.py:callable' returning the dataset: a DataLoader, "
            "any iterable of batches (inputs or (inputs, labels)), or a map-style Dataset"
        ),
    )
    p.add_argument("--layers", nargs="+", required=True, help="module names or glob patterns")
    p.add_argument("--out", required=True, help="the activation store to write, e.g. acts.zarr")
    p.add_argument(
        "--batch-size", type=int, default=64, help="batch size for a map-style Dataset (64)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage dtype of the activations (default float32; float16 halves the store)",
    )
    p.add_argument("--no-labels", action="store_true", help="do not store labels")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--overwrite", action="store_true", help="start over instead of resuming an existing store"
    )
    p.add_argument(
        "--reuse",
        choices=("error", "first", "last", "each"),
        default="error",
        help="a module called more than once per forward: refuse (default), keep the "
        "first or last call, or store each call as LAYER.callK",
    )
    _add_progress(p)
    p.set_defaults(handler=_extract)


def _add_run(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a TOML job: many layer pairs and measures, results to a folder",
        description=(
            "Run the comparisons a TOML job describes and write a results table "
            "(CSV, Parquet), coefficient arrays (Zarr) and the job's parameters. "
            "A rerun skips results that exist for the same inputs and parameters."
        ),
    )
    p.add_argument("job", help="the job file, e.g. job.toml")
    p.add_argument("--force", action="store_true", help="recompute every result")
    p.add_argument("--cluster", default=None, help="override the job's cluster")
    p.add_argument(
        "--report",
        action="store_true",
        help="then write the report (index.html and figures) to OUTPUT/report",
    )
    _add_progress(p)
    p.set_defaults(handler=_run)


def _add_report(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="figures and index.html for a results folder",
        description=(
            "Draw a results folder: learning dynamics and per-layer convergence for a "
            "checkpoint set, a heatmap per store pair and measure, class sensitivity, "
            "and the table, in index.html with one PNG per figure."
        ),
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="the output folder of a run")
    p.add_argument("--out", default=None, help="report folder (default: RESULTS_DIR/report)")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"score at which a layer counts as converged, in the text (default {DEFAULT_THRESHOLD})",
    )
    p.set_defaults(handler=_report)


def _add_freeze(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "freeze",
        help="the Freeze Training schedule of a checkpoint set's results, as JSON",
        description=(
            "From a run with against = 'last' (each checkpoint against the final one, "
            "same-name pairs): the fraction of training after which each layer may stop "
            "training (its score with its final state reaches the threshold; bottom-up)."
        ),
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="the output folder of a run")
    p.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help=f"default {DEFAULT_THRESHOLD}"
    )
    p.add_argument("--measure", default=None, help="default svcca (when the table has it)")
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated layer names, input to output (default: the table's order)",
    )
    p.add_argument(
        "--trainable-last",
        type=int,
        default=1,
        help="top layers that never freeze (default 1: the logits)",
    )
    p.set_defaults(handler=_freeze)


def _add_layers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "layers",
        help="list the layers of an activation store",
        description="List a store's layers with shape, dims, chunking, dtype and size.",
    )
    p.add_argument("store", help="the activation store, e.g. acts.zarr")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_layers)


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )


def _keep(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--keep takes a fraction like 0.99 or a number of directions like 20, got {text!r}"
        ) from None


# --------------------------------------------------------------------------- #
# handlers


def _compare(args: argparse.Namespace) -> int:
    from .runner import compare_pair

    names = (
        "keep",
        "epsilon",
        "conv",
        "dft_memory_limit",
        "svd",
        "n_components",
        "n_power_iter",
        "n_oversamples",
        "seed",
        "debiased",
        "alpha",
        "metric",
        "folds",
        "missing_chunks",
        "rows",
    )
    options: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    out = compare_pair(
        args.x,
        args.y,
        measure=args.measure,
        options=options,
        cluster=args.cluster,
        progress=args.progress,  # on stderr: --json output on stdout stays clean
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['score']:.6f}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from .extract import extract_activations, load_callable, make_batches, resolve_layers

    model = load_callable(args.model, what="--model")()
    resolve_layers(model, args.layers)  # wrong --layers fail before the data is loaded
    data = make_batches(load_callable(args.data, what="--data")(), batch_size=args.batch_size)
    store = extract_activations(
        model,
        data,
        args.out,
        layers=args.layers,
        dtype=args.dtype,
        labels=not args.no_labels,
        device=args.device,
        overwrite=args.overwrite,
        reuse=args.reuse,
        progress=args.progress,
    )
    for info in store.layers():
        print(info.summary())
    return 0


def _run(args: argparse.Namespace) -> int:
    from .jobs import load_job
    from .runner import run_job

    job = load_job(args.job)
    report = run_job(job, force=args.force, cluster=args.cluster, progress=args.progress)
    print(report.summary())
    if args.report:
        from .results_report import write_results_report

        print(f"report: {write_results_report(job.output)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .results_report import write_results_report

    print(write_results_report(args.results, args.out, threshold=args.threshold))
    return 0


def _freeze(args: argparse.Namespace) -> int:
    from .analysis import freeze_plan, load_results

    layers = None if args.layers is None else [n for n in args.layers.split(",") if n]
    plan = freeze_plan(
        load_results(args.results),
        threshold=args.threshold,
        measure=args.measure,
        layers=layers,
        trainable_last=args.trainable_last,
    )
    print(json.dumps(plan, indent=2))
    return 0


def _layers(args: argparse.Namespace) -> int:
    from svcca_dask.store import open_store

    store = open_store(args.store)
    infos = store.layers()
    if args.json:
        print(json.dumps([{**i.to_dict(), "plain": store.plain} for i in infos], indent=2))
        return 0
    kind = (
        "a plain Zarr group: completeness read from its chunks"
        if store.plain
        else "an activation store: completeness recorded by its writer"
    )
    print(f"{args.store}: {kind}")
    if not infos:
        print(f"{args.store}: no layers")
    for info in infos:
        print(info.summary())
    return 0


# --------------------------------------------------------------------------- #
# entry point


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with the subcommands of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "SVCCA, PWCCA and linear CKA of neural-network activations at scale: "
            "extract activations into Zarr stores, compare layers, run batch jobs."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logs, and tracebacks on errors"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    for sub in subparsers.choices.values():
        if not any("--verbose" in a.option_strings for a in sub._actions):
            sub.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="debug logs, and tracebacks on errors",
            )
    return parser


class _BelowWarning(logging.Filter):
    """Drops records below WARNING from the loggers in ``names`` and their children."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(
            record.name == name or record.name.startswith(name + ".") for name in self.prefixes
        )


@contextlib.contextmanager
def _quiet_libraries(names: Sequence[str] = QUIET_LOGGERS) -> Iterator[None]:
    """Keep the INFO and DEBUG logs of ``names`` off the root handlers while inside.

    Also off any handler those loggers have of their own (``distributed`` adds
    one when it is imported before logging is configured). The filter is
    removed on exit, so that embedding :func:`main` leaves logging as it was.
    """
    handlers = list(logging.getLogger().handlers)
    for name in names:
        handlers += logging.getLogger(name).handlers
    quiet = _BelowWarning(names)
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings raised while a command runs, printed as they come, once each, on
    stderr as ``svcca-dask COMMAND: warning: ...`` (a score with too few samples,
    say), whatever filters the embedding process set for the library's own."""
    import warnings

    from svcca_dask.rules import SampleSizeWarning

    shown: set[str] = set()

    def show(message: Any, category: Any, filename: str, lineno: int, *a: Any, **k: Any) -> None:
        text = " ".join(str(message).split())
        if text not in shown:
            shown.add(text)
            print(f"{PROG} {command}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=SampleSizeWarning)
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``svcca-dask``; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        with (
            contextlib.nullcontext() if verbose else _quiet_libraries(),
            _one_line_warnings(args.command),
        ):
            code = handler(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line unless --verbose
        if verbose:
            traceback.print_exc()
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0 if code is None else int(code)


#: What adds the subcommands, in the order ``--help`` lists them.
SUBCOMMANDS = (add_parser, demo.add_parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
