"""Extract a PyTorch model's activations into an activation store.

torch is an optional extra (``pip install 'svcca-dask[torch]'``): it is imported
only when an extraction runs.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from svcca_dask.store import (
    LABELS,
    MASK,
    SAMPLE_ID,
    ActivationStore,
    create_store,
    default_dims,
    open_store,
    select_layers,
)
from svcca_dask.store.format import is_url

from .data_order import ID_KEYS, DataOrder, first_sample_hash, sample_ids, warn_if_shuffled
from .progress import progress_bar

__all__ = [
    "extract_activations",
    "load_callable",
    "make_batches",
    "resolve_layers",
]

log = logging.getLogger(__name__)

Reuse = Literal["error", "first", "last", "each"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "activation extraction needs PyTorch: pip install 'svcca-dask[torch]'"
        ) from err
    return torch


def resolve_layers(model: Any, layers: str | Sequence[str]) -> list[str]:
    """Module names of ``model`` that ``layers`` names, in the model's order.

    Parameters
    ----------
    model : torch.nn.Module
    layers : str or sequence of str
        Names as ``model.named_modules()`` gives them (``"layer1.0.conv1"``,
        ``"fc"``), or glob patterns (``"layer*.0.conv1"``; see
        :func:`svcca_dask.store.select_layers`).

    Raises
    ------
    ValueError
        If a name or pattern matches no module; the message lists the
        available names.
    """
    available = [n for n, _ in model.named_modules() if n]
    top = [n for n in available if "." not in n]
    parent = next((n for n in top if any(a.startswith(n + ".") for a in available)), None)
    inside = f"; inside one, e.g. '{parent}.0', or with a glob, '{parent}.**'" if parent else ""
    for want in [layers] if isinstance(layers, str) else list(layers):
        if any(c in want for c in "*?[") or want in available:
            continue
        close = difflib.get_close_matches(want, available, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"{want!r} is not a layer of {type(model).__name__}; {hint}its top-level modules: "
            f"{', '.join(top)} (names as model.named_modules() gives them{inside})"
        )
    return select_layers(
        available,
        layers,
        where=f"{type(model).__name__} (names as model.named_modules() gives them)",
    )


_LABEL_KEYS = ("label", "labels", "y", "target")


def _split_batch(batch: Any) -> tuple[Any, Any, Any]:
    """``(inputs, labels or None, token mask or None)`` of one batch.

    A dict batch with ``input_ids`` is a Hugging Face style one: every key but
    the labels goes to the model as a keyword, and its ``attention_mask`` is
    the token mask."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("an empty batch: give inputs or (inputs, labels)")
        return batch[0], (batch[1] if len(batch) > 1 else None), None
    if isinstance(batch, dict):
        labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        mask = batch.get("attention_mask")
        if "input_ids" in batch:
            drop = (*_LABEL_KEYS, *ID_KEYS)
            return {k: v for k, v in batch.items() if k not in drop}, labels, mask
        for key in ("input", "inputs", "x", "image", "pixel_values"):
            if key in batch:
                return batch[key], labels, mask
        raise ValueError(
            f"a dict batch needs an 'input' (or 'x', 'image', 'input_ids') key; got {sorted(batch)}"
        )
    return batch, None, None


def _dims_of(arr: np.ndarray, tokens: Any) -> tuple[str, ...]:
    """A layer's dimension names: ``(sample, token, feature)`` for a 3-D output
    of a model fed a token mask with as many tokens, else :func:`default_dims`
    (``(sample, channel, length)`` for other 3-D outputs: Conv1d's)."""
    if tokens is not None and arr.ndim == 3 and arr.shape[1] == tokens.shape[1]:
        return ("sample", "token", "feature")
    return default_dims(arr.ndim)


def _n_samples(inputs: Any) -> int:
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    shape = getattr(inputs, "shape", None)
    if shape is None or len(shape) == 0:
        raise ValueError(
            f"batch inputs must be a tensor with a batch axis first, got {type(inputs).__name__}"
        )
    return int(shape[0])


def _dataset_size(batches: Any) -> int | None:
    ds = getattr(batches, "dataset", None)
    if ds is not None:
        try:
            return len(ds)
        except TypeError:
            return None
    return None


def make_batches(data: Any, *, batch_size: int = 64) -> Iterable[Any]:
    """Batches from ``data``: a DataLoader or iterable as is, a map-style Dataset in a DataLoader.

    A map-style dataset (``__getitem__`` and ``__len__``, not already batched)
    is wrapped in ``torch.utils.data.DataLoader(data, batch_size=batch_size)``
    (in order, no shuffling, so that a resumed extraction sees the same samples).
    """
    torch = _torch()
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, torch.Tensor):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TypeError(
            f"the dataset must be a DataLoader, a Dataset or an iterable of batches, got "
            f"{type(data).__name__}"
        )
    return data


def load_callable(spec: str, *, what: str = "callable") -> Callable[..., Any]:
    """Load ``"package.module:name"`` or ``"path/to/file.py:name"``.

    Raises
    ------
    ValueError
        If ``spec`` has no ``:name`` part, or the name is missing or not callable.
    """
    modname, sep, attr = spec.rpartition(":")
    if not sep or not modname or not attr:
        raise ValueError(
            f"{what} must look like 'module:callable' or 'file.py:callable', got {spec!r}"
        )
    if modname.endswith(".py") or os.sep in modname or "/" in modname:
        if not os.path.isfile(modname):
            raise FileNotFoundError(f"{what}: no file {modname!r}")
        name = "_svcca_dask_user_" + os.path.splitext(os.path.basename(modname))[0]
        spec_ = importlib.util.spec_from_file_location(name, modname)
        if spec_ is None or spec_.loader is None:
            raise ValueError(f"{what}: cannot import {modname!r}")
        module = importlib.util.module_from_spec(spec_)
        sys.modules[name] = module
        spec_.loader.exec_module(module)
    else:
        # as `python -m` does: modules in the current folder are importable
        # (a console script's sys.path lacks it)
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(modname)
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ValueError(f"{what}: {modname!r} has no callable {attr!r}")
    return obj


class _Hooks:
    """Forward hooks that collect one batch's outputs per layer."""

    def __init__(self, model: Any, names: list[str], reuse: Reuse) -> None:
        modules = dict(model.named_modules())
        self.names = names
        self.reuse = reuse
        self.calls: dict[str, list[Any]] = {n: [] for n in names}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                raise TypeError(
                    f"module {name!r} ({type(module).__name__}) returns a {type(output).__name__}, "
                    "not a tensor; hook one of its submodules instead"
                )
            if self.reuse == "error" and self.calls[name]:
                raise RuntimeError(
                    f"module {name!r} ({type(module).__name__}) is called more than once per "
                    "forward pass (a reused module); its activations are ambiguous. Pass "
                    "reuse='first', 'last', or 'each' (--reuse first|last|each on the command "
                    f"line; 'each' stores every call as '{name}.call0', '{name}.call1', ...)"
                )
            self.calls[name].append(output.detach())

        return hook

    def take(self) -> dict[str, Any]:
        """The outputs of the last forward pass, one entry per array to write."""
        out: dict[str, Any] = {}
        for name in self.names:
            calls = self.calls[name]
            if not calls:
                raise RuntimeError(
                    f"module {name!r} was not called in the forward pass; is it part of the model's forward()?"
                )
            if self.reuse == "each" and len(calls) > 1:
                for i, c in enumerate(calls):
                    out[f"{name}.call{i}"] = c
            elif self.reuse == "last":
                out[name] = calls[-1]
            else:
                out[name] = calls[0]
            self.calls[name] = []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _versions() -> dict[str, str]:
    import dask
    import zarr

    import svcca_dask

    v = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "svcca_dask": svcca_dask.__version__,
    }
    if "torch" in sys.modules:
        v["torch"] = sys.modules["torch"].__version__
    return v


def _to_numpy(t: Any, dtype: np.dtype, *, name: str = "output") -> np.ndarray:
    """A module's output as ``dtype`` on the host; values that ``float16`` cannot
    hold (beyond 65504) are refused rather than stored as infinity."""
    torch = _torch()
    if dtype == np.float16:
        finite = t[torch.isfinite(t)] if t.is_floating_point() else t
        top = float(finite.abs().max()) if finite.numel() else 0.0
        if top > float(np.finfo(np.float16).max):
            raise ValueError(
                f"layer {name!r} has values up to {top:.6g}, beyond float16's largest "
                f"({np.finfo(np.float16).max:.0f}): they would be stored as infinity. Extract "
                "with dtype='float32' (--dtype float32)"
            )
        return t.to(device="cpu", dtype=torch.float16).contiguous().numpy()
    return t.to(device="cpu", dtype=torch.float32).contiguous().numpy()


def extract_activations(
    model: Any,
    batches: Iterable[Any],
    store: str | os.PathLike[str] | ActivationStore,
    *,
    layers: str | Sequence[str],
    dtype: Literal["float32", "float16"] = "float32",
    labels: bool = True,
    device: Any = None,
    reuse: Reuse = "error",
    dataset_size: int | None = None,
    chunk_samples: int | None = None,
    dims: dict[str, Sequence[str]] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    provenance: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ActivationStore:
    """Run ``model`` over ``batches`` and append the named layers' outputs to a store.

    Forward hooks on the named modules collect each batch's outputs under
    ``torch.inference_mode()`` with the model in eval mode; each layer's batch
    is appended to its array (samples first, chunked along samples,
    ``dimension_names`` set), the labels to ``labels``. Provenance (model
    class, layers, dataset size, dtype, versions) goes in the group attributes.

    Resumable: when ``store`` exists (and ``overwrite`` is False), the run
    continues after the last sample every array completed, skipping the
    batches before it without running the model; the batches must come in the
    same order as before (no shuffling). A batch whose write was interrupted is
    not counted and is written again; so are batches still buffered (at most
    one chunk per layer) when the run stopped.

    Parameters
    ----------
    model : torch.nn.Module
    batches : iterable
        A DataLoader or any iterable of batches; a batch is a tensor of
        inputs, an ``(inputs, labels, ...)`` tuple, or a dict with ``input``
        (and ``label``) keys.
    store : str, path or ActivationStore
        The activation store to write (created if missing).
    layers : str or sequence of str
        Module names as ``model.named_modules()`` gives them, or glob patterns.
    dtype : {"float32", "float16"}, default "float32"
        Storage dtype of the activations.
    labels : bool, default True
        Store the batches' labels (when the batches carry them) in ``labels``.
    device : torch.device or str, optional
        Where the model runs; inputs are moved there. Default: the model's device.
    reuse : {"error", "first", "last", "each"}, default "error"
        A module called more than once per forward pass: refuse, keep the
        first or last call, or store every call as ``NAME.callK``.
    dataset_size : int, optional
        Samples in the dataset; by default ``len(batches.dataset)`` when the
        batches come from a DataLoader. Known, it makes a short run detectable.
    chunk_samples : int, optional
        Samples per chunk; default about 16 MiB per chunk as float64. Batches
        are buffered per layer and written in whole chunks.
    dims : dict, optional
        Dimension names per layer, overriding :func:`svcca_dask.store.default_dims`
        (e.g. ``{"blocks.3": ("sample", "token", "neuron")}``).
    overwrite : bool, default False
        Start over instead of resuming.
    progress : bool or None, default None
        A progress bar on stderr, one step per batch; None: when stderr is a
        terminal.
    provenance : dict, optional
        Extra JSON-serializable provenance to record.
    storage_options : dict, optional
        fsspec options when ``store`` is a URL (``"s3://bucket/acts.zarr"``);
        without them the standard variables (``AWS_ENDPOINT_URL``, ...) apply.

    Returns
    -------
    ActivationStore
        The store, every extracted layer complete.

    Raises
    ------
    ImportError
        Without torch (``pip install 'svcca-dask[torch]'``).
    ValueError
        A layer name matches no module (the message lists the available
        names), or an existing store was made with other layers or dtype.
    RuntimeError
        A module is reused and ``reuse="error"``.
    """
    torch = _torch()
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if reuse not in ("error", "first", "last", "each"):
        raise ValueError(f"reuse must be 'error', 'first', 'last' or 'each', got {reuse!r}")
    np_dtype = np.dtype(dtype)
    names = resolve_layers(model, layers)
    if dataset_size is None:
        dataset_size = _dataset_size(batches)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    dims = dict(dims or {})

    spec = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": names,
        "dtype": dtype,
        "reuse": reuse,
        "labels": bool(labels),
    }
    path = store.path if isinstance(store, ActivationStore) else os.fspath(store)
    fresh = overwrite or not _exists(path, storage_options)
    s = _open_or_create(path, spec=spec, overwrite=overwrite, storage_options=storage_options)
    prov = {**spec, "dataset_size": dataset_size, "versions": _versions(), **(provenance or {})}
    prov["finished"] = False
    s.update_provenance(**prov)

    arrays = [n for n in s.layer_names() if n in names or n.split(".call")[0] in names]
    tracked = arrays + [n for n in (LABELS, MASK, SAMPLE_ID) if n in s]
    done = min((s.complete_samples(n) for n in tracked), default=0)
    if any(not any(a == n or a.startswith(f"{n}.call") for a in arrays) for n in names):
        done = 0  # a layer never written: start over (its array gets the first samples)
    for n in tracked:  # every array back to the common complete count
        if s.complete_samples(n) != done or s.info(n).shape[0] != done:
            log.info("resume: truncating %s from %d to %d samples", n, s.complete_samples(n), done)
            s.truncate(n, done)
    if arrays:
        s.set_writing(tracked, True, expected_samples=dataset_size)
    if done:
        log.warning(
            "resuming %s after the %d samples every array completed (the model is not run "
            "on the batches before)",
            path,
            done,
        )

    hooks = _Hooks(model, names, reuse)
    was_training = model.training
    model.eval()
    total_batches = None
    try:
        total_batches = len(batches)  # type: ignore[arg-type]
    except TypeError:
        pass
    bar = progress_bar(
        total_batches, f"extract {os.path.basename(path.rstrip('/'))}", enabled=progress
    )
    seen = 0
    order = DataOrder()
    warn_if_shuffled(batches)
    created: set[str] = set(tracked)
    pending = _Pending(s)
    label_parts: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs, ys, tokens = _split_batch(batch)
                ids = sample_ids(batch)
                b = _n_samples(inputs)
                order.add(seen, inputs)
                if seen == 0:
                    _check_same_data(s, inputs, resuming=done > 0)
                if seen + b <= done:  # written by an earlier run
                    seen += b
                    bar.update(1)
                    continue
                skip = done - seen if seen < done else 0
                if isinstance(inputs, dict):
                    out = model(**{k: torch.as_tensor(v).to(device) for k, v in inputs.items()})
                else:
                    out = model(torch.as_tensor(inputs).to(device))
                del out
                outputs = hooks.take()
                wrote = False
                if tokens is not None:  # the token mask, buffered and resumed like a layer
                    mk = np.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens) != 0
                    if MASK not in created:
                        s.create_mask(mk.shape[1], expected_samples=dataset_size)
                        s.set_writing([MASK], True)
                        created.add(MASK)
                    wrote = pending.add(MASK, mk[skip:]) or wrote
                if ids is not None:  # each row's sample id, buffered and resumed like a layer
                    if SAMPLE_ID not in created:
                        s.create_sample_ids(expected_samples=dataset_size)
                        s.set_writing([SAMPLE_ID], True)
                        created.add(SAMPLE_ID)
                    wrote = pending.add(SAMPLE_ID, ids[skip:]) or wrote
                for name, t in outputs.items():
                    if t.ndim == 0 or t.shape[0] != b:
                        raise ValueError(
                            f"module {name!r} output has shape {tuple(t.shape)}, not batch-first "
                            f"with {b} samples; hook a module whose output is (batch, ...)"
                        )
                    arr = _to_numpy(t, np_dtype, name=name)[skip:]
                    if name not in created:
                        s.create_layer(
                            name,
                            sample_shape=arr.shape[1:],
                            dtype=np_dtype,
                            dims=dims.get(name.split(".call")[0], _dims_of(arr, tokens)),
                            chunk_samples=chunk_samples,
                            expected_samples=dataset_size,
                        )
                        s.set_writing([name], True)
                        created.add(name)
                    wrote = pending.add(name, arr) or wrote
                if labels and ys is not None:
                    yv = ys.cpu().numpy() if hasattr(ys, "cpu") else np.asarray(ys)
                    label_parts.append(yv[skip:])
                if label_parts and (wrote or LABELS not in created):
                    # labels go out whenever a layer writes, so their complete
                    # count never falls below the layers' (the resume point)
                    s.append_labels(np.concatenate(label_parts))
                    label_parts.clear()
                    if LABELS not in created:
                        s.set_writing([LABELS], True, expected_samples=dataset_size)
                        created.add(LABELS)
                seen += b
                bar.update(1)
    except BaseException:
        _keep_what_was_computed(s, pending, label_parts, remove_if_empty=fresh)
        raise
    else:
        pending.flush_all()
        if label_parts:
            s.append_labels(np.concatenate(label_parts))
    finally:
        hooks.remove()
        model.train(was_training)
        bar.close()

    finished = sorted(created)
    if dataset_size is not None and seen != dataset_size:
        raise RuntimeError(
            f"the batches held {seen} samples but the dataset has {dataset_size}; the store "
            "is left incomplete"
        )
    short = {n: s.complete_samples(n) for n in finished if s.complete_samples(n) != seen}
    if short:
        raise RuntimeError(
            f"arrays with other than the {seen} samples the batches held: {short}; a module "
            "called a varying number of times per forward (reuse='each')? The store is left "
            "incomplete"
        )
    for n in finished:
        s.set_writing([n], False, expected_samples=seen)
    s.update_provenance(dataset_size=seen, finished=True, arrays=finished, **order.provenance())
    return s


def _keep_what_was_computed(
    s: ActivationStore, pending: _Pending, label_parts: list[np.ndarray], *, remove_if_empty: bool
) -> None:
    """After an interruption (Ctrl-C, an error in a batch): write what the
    layers have buffered, so that a rerun resumes after it instead of from the
    last whole chunk; a store this run created that holds no sample is removed."""
    try:
        pending.flush_all()
        if label_parts:
            s.append_labels(np.concatenate(label_parts))
    except Exception:  # the store itself failed: the rerun resumes from what is counted
        log.warning("could not write the buffered batches of %s", s.path, exc_info=True)
    names = s.layer_names() + [n for n in (LABELS, MASK, SAMPLE_ID) if n in s]
    if remove_if_empty and not any(s.complete_samples(n) for n in names):
        if is_url(s.path):  # an object store: remove its keys
            import fsspec

            fs, root = fsspec.core.url_to_fs(s.path, **(s.storage_options or {}))
            fs.rm(root, recursive=True)
        else:
            shutil.rmtree(s.path, ignore_errors=True)


def _check_same_data(s: ActivationStore, inputs: Any, *, resuming: bool) -> None:
    """Refuse to resume over other data (a shuffled loader, another dataset).

    The first sample's hash is recorded in the provenance; a resumed run must
    start with the same sample.
    """
    digest = first_sample_hash(inputs)
    before = s.provenance.get("first_sample_sha256")
    if resuming and before is not None and before != digest:
        raise ValueError(
            f"{s.path!r} holds activations of other data: the first sample differs from the "
            "run being resumed. Keep the batches in the same order (DataLoader shuffle=False), "
            "or pass overwrite=True (--overwrite) to start over"
        )
    if before != digest:
        s.update_provenance(first_sample_sha256=digest)


class _Pending:
    """Per-layer buffers that reach the store in whole chunks.

    Appending every batch would rewrite a partly filled chunk once per batch
    (read, decompress, compress, write). Batches wait here until they fill the
    layer's next chunk; then every whole chunk is appended at once. A crash
    loses at most a chunk per layer of buffered work, which a resumed run
    recomputes (the complete counts only cover what was appended).
    """

    def __init__(self, store: ActivationStore) -> None:
        self.store = store
        self.parts: dict[str, list[np.ndarray]] = {}
        self.rows: dict[str, int] = {}
        self.chunk: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def add(self, name: str, arr: np.ndarray) -> bool:
        """Buffer ``arr`` for layer ``name``; True if whole chunks were written."""
        if name not in self.parts:
            self.parts[name], self.rows[name] = [], 0
            self.chunk[name] = int(self.store.info(name).chunks[0])
            self.done[name] = self.store.complete_samples(name)
        self.parts[name].append(arr)
        self.rows[name] += arr.shape[0]
        total = self.done[name] + self.rows[name]
        n = (total // self.chunk[name]) * self.chunk[name] - self.done[name]
        if n > 0:
            self._write(name, n)
            return True
        return False

    def _write(self, name: str, n: int) -> None:
        data = (
            np.concatenate(self.parts[name]) if len(self.parts[name]) > 1 else self.parts[name][0]
        )
        self.done[name] = self.store.append(name, data[:n])
        rest = data[n:]
        self.parts[name] = [rest] if rest.shape[0] else []
        self.rows[name] = rest.shape[0]

    def flush_all(self) -> None:
        for name in list(self.parts):
            if self.rows[name]:
                self._write(name, self.rows[name])


def _exists(path: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether a store (anything) is at ``path``, a folder or a URL."""
    if not is_url(path):
        return os.path.isdir(path) and bool(os.listdir(path))
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return bool(fs.exists(f"{root.rstrip('/')}/zarr.json"))


def _open_or_create(
    path: str, *, spec: dict[str, Any], overwrite: bool, storage_options: dict[str, Any] | None
) -> ActivationStore:
    if overwrite or not _exists(path, storage_options):
        return create_store(path, overwrite=overwrite, storage_options=storage_options)
    s = open_store(path, mode="r+", storage_options=storage_options)
    prev = s.provenance
    for key in ("model_class", "layers", "dtype", "reuse"):
        if key in prev and prev[key] != spec[key]:
            raise ValueError(
                f"{path!r} was extracted with {key}={prev[key]!r}, not {spec[key]!r}; resume "
                "with the same settings, or pass overwrite=True (--overwrite) to start over"
            )
    return s
