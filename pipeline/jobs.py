"""TOML job specs: which stores, layers, pairs, measures, options, cluster, output.

A job file::

    output = "results"                    # folder for the results (required)
    measures = ["svcca", "cka"]           # svcca, pwcca, cca, cka (default: svcca)
    pairs = "same-name"                   # "same-name", "all", or [["a/fc", "b/fc"], ...]
    against = "last"                      # store pairs: "last", "previous" or a store name
    target = "labels"                     # instead of pairs: each layer against each class
    layers = ["layer*", "fc"]             # names or glob patterns (default: every layer)
    cluster = "local"                     # "local", "threads", "tcp://host:8786", ...

    [stores]                              # name = path (relative to the job file)
    a = "acts_a.zarr"
    b = "acts_b.zarr"

    [options]                             # passed to the measures that take them
    keep = 0.99
    epsilon = 1e-10
    conv = "mean"                         # conv layers (default: the measures' 'dft')

A store may be a glob (``ckpt = "ckpt/step-*.zarr"``): one store per match,
named by the match (``step-000100``) and ordered naturally (step-100 before
step-1000), matched again at every run, so that a rerun picks up new
checkpoints and, being idempotent, computes only the new pairs.

Pairs: with two or more stores, ``same-name`` pairs each layer with the layer
of the same name in every other store (store pairs in the order given), and
``all`` pairs every selected layer of one store with every selected layer of
the other; with one store, ``all`` is its layer x layer matrix (``same-name``
needs two stores). An explicit list names ``"store/layer"`` on both sides.

``against`` replaces "every pair of stores" by a plan for checkpoint sets:
``"last"`` pairs each store with the last one (in order; with ``pairs =
"all"`` the last one with itself too: the final panel of the paper's
learning-dynamics figure), ``"previous"`` each store with the one before it,
and a store name each store with that one. When a newer checkpoint becomes
the last, the results against the old one stay in the table (their
``y_store`` names it, their ``against`` column the plan); rows of other
options never do.

``target`` replaces pairs by class sensitivity (:func:`svcca_dask.class_sensitivity`):
each selected layer of every store against each class, ``"labels"`` as
one-hot indicators of the store's labels, ``"<layer>"`` the columns of a
``(n, n_classes)`` layer of each store (logits), ``"<store>/<layer>"`` one
store's layer for all. A row's ``y_layer`` names the class (``labels[3]``,
``logits[3]``); all of a store's pairs are one pass.

Everything is checked up front (:func:`load_job`): a key that is not one of
the above is an error (with the closest valid key), stores must be complete
activation stores, an unknown layer or a pattern that selects nothing lists
the available ones, and paired layers must have the same number of samples.
"""

from __future__ import annotations

import difflib
import inspect
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .plans import expand, store_pairs, target_pairs

__all__ = [
    "MEASURES",
    "OPTIONS",
    "Job",
    "JobError",
    "Pair",
    "call_options",
    "keyword_of",
    "load_job",
    "parse_job",
]

#: Job measure name -> ``svcca_dask`` function name.
MEASURES: dict[str, str] = {
    "svcca": "svcca",
    "pwcca": "pwcca",
    "cca": "cca",
    "cka": "linear_cka",
    "shape": "shape_distance",
}

#: Options a job may set, and what each must be.
OPTIONS: dict[str, str] = {
    "keep": "a fraction of variance in (0, 1] or a number of directions (int >= 1)",
    "epsilon": "a finite float >= 0",
    "conv": "a conv-layer reduction: 'dft' (the measures' default), 'samples', 'mean' or 'flatten'",
    "layout": "'NCHW' or 'NHWC' (default: from the store's dimension names)",
    "side": "'x', 'y' or 'smaller' (PWCCA)",
    "debiased": "true or false: debiased CKA (unbiased HSIC estimates)",
    "alpha": "a number in [0, 1]: the shape metric's alignment (0 CCA, 1 Procrustes)",
    "metric": "'angular' or 'euclidean' (the shape metric's distance)",
    "folds": "an int >= 2: held-out scores over that many sample blocks (cca, svcca, pwcca)",
    "missing_chunks": "'error' (default) or 'fill': what a chunk a plain Zarr array never stored means",
    "rows": "'check' (default) or 'trust': whether the stores' recorded data orders and sample ids must agree",
    "svd": "SVCCA's SVD step: 'auto' (default), 'covariance', 'randomized' or 'tsqr'",
    "dft_memory_limit": "conv='dft': bytes or a size like '2GiB' for the statistics (DFT memory_limit)",
    "n_components": "svd='randomized': directions computed first (int >= 1)",
    "n_power_iter": "svd='randomized': power iterations (int >= 0)",
    "n_oversamples": "svd='randomized': extra random directions (int >= 0)",
    "seed": "svd='randomized': seed of the random test matrix (int)",
}

#: Options that are parts of an option object of the API rather than
#: keywords of the measures: they go into ``conv=DFT(...)`` or
#: ``svd=RandomizedSVD(...)`` (see :func:`call_options`), for the measures
#: that take ``conv`` or ``svd``.
_PART_OF = {
    "dft_memory_limit": "conv",
    "n_components": "svd",
    "n_power_iter": "svd",
    "n_oversamples": "svd",
    "seed": "svd",
}
_RANDOMIZED = ("n_components", "n_power_iter", "n_oversamples", "seed")


def keyword_of(option: str) -> str:
    """The measure keyword an option sets: ``conv`` or ``svd`` for the parts of
    ``DFT(...)`` and ``RandomizedSVD(...)``, else the option itself."""
    return _PART_OF.get(option, option)


def call_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of a measure call from plain option values (a job's or the CLI's).

    ``dft_memory_limit`` becomes ``conv=DFT(memory_limit=...)`` and the
    randomized options ``svd=RandomizedSVD(...)``; every other option is passed
    as it is. The plain values are what results are keyed and reported by.
    """
    from svcca_dask import DFT, RandomizedSVD

    opts = dict(options)
    limit = opts.pop("dft_memory_limit", None)
    if limit is not None:
        if opts.get("conv", "dft") != "dft":
            raise ValueError(f"dft_memory_limit applies to conv='dft', not conv={opts['conv']!r}")
        opts["conv"] = DFT(memory_limit=limit)
    randomized = {k: opts.pop(k) for k in _RANDOMIZED if k in opts}
    if randomized:
        if opts.get("svd", "randomized") != "randomized":
            raise ValueError(
                f"{', '.join(sorted(randomized))} apply to svd='randomized', not "
                f"svd={opts['svd']!r}"
            )
        opts["svd"] = RandomizedSVD(**randomized)
    return opts


_TOP_KEYS = (
    "output",
    "stores",
    "layers",
    "pairs",
    "against",
    "target",
    "measures",
    "options",
    "cluster",
    "storage_options",
)


class JobError(ValueError):
    """A job spec that is not valid; the message says what to change."""


@dataclass(frozen=True, order=True)
class Pair:
    """One pair of layers: ``x_store/x_layer`` against ``y_store/y_layer``."""

    x_store: str
    x_layer: str
    y_store: str
    y_layer: str

    def __str__(self) -> str:
        return f"{self.x_store}/{self.x_layer} ~ {self.y_store}/{self.y_layer}"


@dataclass(frozen=True)
class Job:
    """A validated job.

    Attributes
    ----------
    output : str
        Absolute path of the results folder.
    stores : dict of str to str
        Store name -> absolute path.
    layers : dict of str to list of str
        Store name -> selected layers.
    pairs : list of Pair
    measures : list of str
    options : dict
    cluster : str or dict
    source : str
        Where the spec came from (a file path, or "<dict>").
    storage_options : dict of str to dict
        Store name -> its fsspec options (URL stores only).
    against : str or None
        The store-pair plan: "last", "previous", a store name, or None
        (every pair of stores).
    target : str or None
        Class sensitivity's target ("labels", a layer, "store/layer"), or None.
    target_columns : dict
        ``(store, y_layer)`` of each class column -> ``(layer, class)``: the
        target layer (or ``labels``) it comes from and its class.
    """

    output: str
    stores: dict[str, str]
    layers: dict[str, list[str]]
    pairs: list[Pair]
    measures: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    cluster: str | dict[str, Any] = "local"
    source: str = "<dict>"
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    against: str | None = None
    target: str | None = None
    target_columns: dict[tuple[str, str], tuple[str, Any]] = field(default_factory=dict)

    def open(self, store: str) -> Any:
        """The :class:`~svcca_dask.store.ActivationStore` ``store`` names."""
        from svcca_dask.store import open_store

        return open_store(self.stores[store], storage_options=self.storage_options.get(store))

    def layer_input(self, store: str, layer: str) -> Any:
        """What a measure reads for ``store/layer``: the path, or with
        storage options the Zarr array opened with them (each store its own)."""
        opts = self.storage_options.get(store)
        if not opts:
            return self.layer_path(store, layer)
        return self.open(store).group[layer]

    def layer_path(self, store: str, layer: str) -> str:
        """``"path/to/store.zarr/layer"`` of a store name and layer."""
        return f"{self.stores[store].rstrip('/')}/{layer}"

    def params(self) -> dict[str, Any]:
        """The job's parameters, JSON-ready."""
        return {
            "source": self.source,
            "output": self.output,
            "stores": dict(self.stores),
            "layers": {k: list(v) for k, v in self.layers.items()},
            "pairs": [[f"{p.x_store}/{p.x_layer}", f"{p.y_store}/{p.y_layer}"] for p in self.pairs],
            "measures": list(self.measures),
            "options": dict(self.options),
            "cluster": self.cluster,
            "against": self.against,
            "target": self.target,
            # which options each store has, never their values (credentials)
            "storage_options": {k: sorted(v) for k, v in self.storage_options.items()},
        }


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a TOML job file; relative paths are relative to the file.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    JobError
        If the spec is not valid (the message says where and what to change).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no job file {path!r}") from None
    except tomllib.TOMLDecodeError as err:
        raise JobError(f"{path}: not valid TOML: {err}") from None
    return parse_job(spec, base_dir=os.path.dirname(os.path.abspath(path)), source=path)


def _planned(plan: Any, *args: Any, **kwargs: Any) -> Any:
    """A :mod:`pipeline.plans` function's result; what it refuses, as a JobError."""
    try:
        return plan(*args, **kwargs)
    except ValueError as err:
        raise JobError(str(err)) from None


def _unknown_key(key: str, valid: tuple[str, ...] | list[str], where: str) -> JobError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return JobError(f"{where}: unknown key {key!r}{hint} (valid keys: {', '.join(valid)})")


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise JobError(f"{where} must be a string or a non-empty list of strings, got {value!r}")


def parse_job(spec: Mapping[str, Any], *, base_dir: str = ".", source: str = "<dict>") -> Job:
    """Validate a job spec (the parsed TOML) against the stores it names.

    Parameters
    ----------
    spec : mapping
        The job, as :func:`tomllib.load` returns it.
    base_dir : str
        Relative store and output paths are relative to this folder.
    source : str
        Where the spec came from, for messages.

    Raises
    ------
    JobError
    """
    from svcca_dask.store import IncompleteLayerError, open_store, select_layers
    from svcca_dask.store.format import is_url

    where = source
    for key in spec:
        if key not in _TOP_KEYS:
            raise _unknown_key(key, _TOP_KEYS, where)

    def absolute(p: str) -> str:
        if is_url(p):  # s3://, gs://...: as it is (credentials from the environment)
            return p
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))

    # output
    if "output" not in spec:
        raise JobError(
            f"{where}: 'output' is missing: the folder for the results, e.g. output = 'results'"
        )
    if not isinstance(spec["output"], str) or not spec["output"]:
        raise JobError(f"{where}: output must be a folder path, got {spec['output']!r}")
    output = absolute(spec["output"])

    # stores
    raw_stores = spec.get("stores")
    if raw_stores is None:
        raise JobError(f"{where}: 'stores' is missing, e.g. [stores] a = 'acts_a.zarr'")
    if isinstance(raw_stores, list):
        named = {}
        for p in _str_list(raw_stores, f"{where}: stores"):
            stem = os.path.splitext(os.path.basename(p.rstrip("/")))[0]
            if stem in named:
                raise JobError(
                    f"{where}: two stores are both named {stem!r}; give names in a table: [stores] a = '...'"
                )
            named[stem] = p
        raw_stores = named
    if not isinstance(raw_stores, Mapping) or not raw_stores:
        raise JobError(f"{where}: stores must be a table of name = path, got {raw_stores!r}")
    shared = spec.get("storage_options", {})
    if not isinstance(shared, Mapping):
        raise JobError(f"{where}: storage_options must be a table, got {shared!r}")
    stores: dict[str, str] = {}
    storage: dict[str, dict[str, Any]] = {}
    opened: dict[str, Any] = {}
    for name, p in raw_stores.items():
        if "/" in name or not name:
            raise JobError(f"{where}: store name {name!r} must be non-empty and contain no '/'")
        own: Any = {}
        if isinstance(p, Mapping):  # a = { path = "s3://...", storage_options = {...} }
            unknown = sorted(set(p) - {"path", "storage_options"})
            if unknown or "path" not in p or not isinstance(p.get("storage_options", {}), Mapping):
                raise JobError(
                    f"{where}: stores.{name} as a table takes path and storage_options, "
                    f"got {sorted(p)}"
                )
            p, own = p["path"], p.get("storage_options", {})
        if not isinstance(p, str):
            raise JobError(f"{where}: stores.{name} must be a path string, got {p!r}")
        for store, path in _planned(expand, name, absolute(p), where):
            if store in stores:
                raise JobError(f"{where}: two stores are both named {store!r} ({path})")
            stores[store] = path
            if is_url(path) and (shared or own):
                storage[store] = {**shared, **own}
            try:
                opened[store] = open_store(path, storage_options=storage.get(store))
            except (FileNotFoundError, ValueError) as err:
                raise JobError(f"{where}: stores.{store}: {err}") from None

    for name, path in stores.items():
        if not is_url(path) and os.path.commonpath([output, path]) == path:
            raise JobError(
                f"{where}: output {spec['output']!r} is inside store {name!r} ({path}); a "
                "store holds activations only: write the results to a folder of their own"
            )

    # layers
    raw_layers = spec.get("layers", "**")
    layers: dict[str, list[str]] = {}
    for name, s in opened.items():
        if isinstance(raw_layers, Mapping):
            for key in raw_layers:
                if key not in stores:
                    raise _unknown_key(key, list(stores), f"{where}: layers")
            patterns = raw_layers.get(name, "**")
        else:
            patterns = raw_layers
        patterns = _str_list(patterns, f"{where}: layers")
        try:
            layers[name] = select_layers(s.layer_names(), patterns, where=f"store {name!r}")
        except ValueError as err:
            raise JobError(f"{where}: layers: {err}") from None

    # pairs
    raw_pairs = spec.get("pairs", "same-name")
    names = list(stores)
    against = spec.get("against")
    target = spec.get("target")
    planned = _planned(store_pairs, names, against, all_pairs=raw_pairs == "all", where=where)
    pairs: list[Pair] = []
    columns: dict[tuple[str, str], tuple[str, Any]] = {}
    if target is not None:
        if "pairs" in spec or against is not None:
            raise JobError(
                f"{where}: target = {target!r} pairs each layer with each class itself; "
                "remove pairs and against (or run them as another job)"
            )
        found, columns = _planned(target_pairs, target, opened, layers, where)
        pairs = [Pair(*p) for p in found]
    elif isinstance(raw_pairs, list) and against is not None:
        raise JobError(
            f"{where}: against = {against!r} plans store pairs for pairs = 'same-name' or "
            "'all'; an explicit list of pairs names them itself"
        )
    elif raw_pairs == "same-name":
        if len(names) < 2:
            raise JobError(
                f"{where}: pairs = 'same-name' needs two or more stores; with one store use "
                "pairs = 'all' (its layer x layer matrix) or an explicit list"
            )
        for a, b in planned:
            common = [layer for layer in layers[a] if layer in layers[b]]
            pairs.extend(Pair(a, layer, b, layer) for layer in common)
        if not pairs:
            raise JobError(
                f"{where}: pairs = 'same-name' found no layer name selected in two stores "
                f"(selected: {', '.join(f'{k}: {v}' for k, v in layers.items())})"
            )
    elif raw_pairs == "all":
        for a, b in planned:
            pairs.extend(Pair(a, la, b, lb) for la in layers[a] for lb in layers[b])
    elif isinstance(raw_pairs, list) and raw_pairs:
        for item in raw_pairs:
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)
            ):
                raise JobError(
                    f"{where}: each explicit pair is ['store/layer', 'store/layer'], got {item!r}"
                )
            sides = []
            for ref in item:
                store, sep, layer = ref.partition("/")
                if not sep or store not in stores:
                    raise JobError(
                        f"{where}: pair entry {ref!r} must be 'store/layer' with a store of "
                        f"[stores] ({', '.join(stores)})"
                    )
                if layer not in opened[store].layer_names():
                    raise JobError(
                        f"{where}: pair entry {ref!r}: store {store!r} has no layer {layer!r}; "
                        f"available: {', '.join(opened[store].layer_names())}"
                    )
                sides.append((store, layer))
            pairs.append(Pair(sides[0][0], sides[0][1], sides[1][0], sides[1][1]))
    else:
        raise JobError(
            f"{where}: pairs must be 'same-name', 'all', or a list of ['store/layer', "
            f"'store/layer'] pairs, got {raw_pairs!r}"
        )
    pairs = list(dict.fromkeys(pairs))

    # measures
    measures = _str_list(spec.get("measures", ["svcca"]), f"{where}: measures")
    for m in measures:
        if m not in MEASURES:
            close = difflib.get_close_matches(m, list(MEASURES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise JobError(
                f"{where}: unknown measure {m!r}{hint} (measures: {', '.join(MEASURES)})"
            )
    measures = list(dict.fromkeys(measures))

    # options
    if not isinstance(spec.get("options", {}), Mapping):
        raise JobError(f"{where}: options must be a table, e.g. [options] keep = 0.99")
    options = dict(spec.get("options", {}))
    for key, value in options.items():
        if key not in OPTIONS:
            raise _unknown_key(key, list(OPTIONS), f"{where}: options")
        _check_option(key, value, where)
    _check_supported(options, measures, where)
    if target is not None:
        from svcca_dask.matrix import MATRIX_MEASURES

        takes = {o for m in measures for o in MATRIX_MEASURES[m]} | {
            "conv",
            "layout",
            "missing_chunks",
            "rows",
        }
        other = sorted(k for k in options if k not in takes)
        if other or options.get("conv") == "samples":
            raise JobError(
                f"{where}: target jobs compute every class in one pass, which takes "
                f"{', '.join(sorted(takes))} (conv 'dft', 'mean' or 'flatten'); remove "
                f"{', '.join(other) or 'conv = samples'}"
            )

    # cluster
    cluster = spec.get("cluster", "local")
    if not isinstance(cluster, (str, Mapping)):
        raise JobError(
            f"{where}: cluster must be a string ('local', 'threads', a scheduler address) or "
            f"a table, got {cluster!r}"
        )
    cluster = cluster if isinstance(cluster, str) else dict(cluster)

    # every layer a pair uses: complete, same samples, 2-D unless conv is set
    used: dict[tuple[str, str], Any] = {}
    for p in pairs:
        for store, layer in ((p.x_store, p.x_layer), (p.y_store, p.y_layer)):
            if (store, layer) in columns:
                layer = columns[(store, layer)][0]
                used[(p.y_store, p.y_layer)] = opened[store].info(layer)
                continue
            if (store, layer) in used:
                continue
            info = opened[store].info(layer)
            try:
                opened[store].read(layer)
            except IncompleteLayerError as err:
                raise JobError(f"{where}: store {store!r}: {err}") from None
            if len(info.shape) not in (2, 4):
                raise JobError(
                    f"{where}: layer {store}/{layer} has dims {info.dims}: the measures take "
                    "2-D (sample, neuron) layers and 4-D conv layers"
                )
            if len(info.shape) == 4 and not _takes_conv(measures):
                raise JobError(
                    f"{where}: layer {store}/{layer} is a conv layer {info.dims}, and this "
                    "version of svcca_dask has no conv= option; select 2-D layers"
                )
            if (
                len(info.shape) == 4
                and options.get("conv", "dft") == "dft"
                and (
                    options.get("svd", "auto") not in ("auto", "covariance")
                    or any(k in options for k in _RANDOMIZED)
                )
            ):
                raise JobError(
                    f"{where}: layer {store}/{layer} is a conv layer compared with conv='dft', "
                    "whose SVD step is per frequency: options.svd (and the randomized "
                    "options) apply only to 2-D layers and feature maps; select 2-D layers, "
                    "or set conv = 'flatten', 'samples' or 'mean'"
                )
            used[(store, layer)] = info
        nx, ny = used[(p.x_store, p.x_layer)].shape[0], used[(p.y_store, p.y_layer)].shape[0]
        if nx != ny:
            raise JobError(
                f"{where}: pair {p}: {nx} and {ny} samples; paired layers must hold the same "
                "samples in the same order"
            )
    return Job(
        output=output,
        stores=stores,
        layers=layers,
        pairs=pairs,
        measures=measures,
        options=options,
        cluster=cluster,
        source=source,
        storage_options=storage,
        against=against,
        target=target,
        target_columns=columns,
    )


def _check_option(key: str, value: Any, where: str) -> None:
    """One option, by the library's own rules (:mod:`svcca_dask.rules`, ``DFT``)."""
    from svcca_dask import DFT
    from svcca_dask.conv import CONV_MODES, LAYOUTS
    from svcca_dask.inputs import ROWS
    from svcca_dask.rules import check_epsilon, check_side, keep_pair
    from svcca_dask.shape import check_shape
    from svcca_dask.svd import SVD_METHODS

    def whole(low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    checks = {
        "keep": lambda: keep_pair(value),
        "epsilon": lambda: check_epsilon(value),
        "side": lambda: check_side(value),
        "dft_memory_limit": lambda: DFT(memory_limit=value),
        "alpha": lambda: check_shape(value, "angular"),
    }
    simple = {
        "conv": lambda: isinstance(value, str) and value in CONV_MODES,
        "layout": lambda: isinstance(value, str) and value.upper() in LAYOUTS,
        "svd": lambda: isinstance(value, str) and value in SVD_METHODS,
        "n_components": lambda: whole(1),
        "n_power_iter": lambda: whole(0),
        "n_oversamples": lambda: whole(0),
        "seed": lambda: whole(-(2**63)),
        "debiased": lambda: isinstance(value, bool),
        "metric": lambda: value in ("angular", "euclidean"),
        "folds": lambda: whole(2),
        "missing_chunks": lambda: value in ("error", "fill"),
        "rows": lambda: value in ROWS,
    }
    try:
        ok = checks[key]() is not False if key in checks else simple[key]()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise JobError(f"{where}: options.{key} must be {OPTIONS[key]}, got {value!r}")


def _takes_conv(measures: list[str]) -> bool:
    import svcca_dask

    return all(
        "conv" in inspect.signature(getattr(svcca_dask, MEASURES[m])).parameters for m in measures
    )


def _check_supported(options: Mapping[str, Any], measures: list[str], where: str) -> None:
    """Options the installed measures do not take are errors, not silently dropped."""
    import svcca_dask

    for key in options:
        takes = keyword_of(key)
        takers = [
            m
            for m in measures
            if takes in inspect.signature(getattr(svcca_dask, MEASURES[m])).parameters
        ]
        if not takers:
            raise JobError(
                f"{where}: options.{key} applies to none of the measures {measures} "
                "in this version of svcca_dask; remove it or add a measure that takes it"
            )
