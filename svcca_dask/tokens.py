"""Token layers: ``(n, T, d)`` activations of sequence models, padding masked.

A transformer layer's activations are ``(n_sequences, n_tokens, n_features)``
(layout ``"NTC"``, from ``layout=`` or a Zarr array's ``dimension_names``
``("sample", "token", "feature")``). The measures reduce them to 2-D rows
before the pass, like conv layers:

``conv="samples"``
    every token a sample: ``(n * T, d)``, or with ``mask=`` only the tokens
    the mask keeps (padding excluded from both sides alike);
``conv="mean"``
    the mean over each sequence's (kept) tokens: ``(n, d)``.

``mask`` is an ``(n, T)`` boolean array (NumPy, Dask, Zarr, or a
``"store.zarr/layer"`` path, as an attention mask is stored): True keeps a
token. A 2-D side (a label or a per-sequence output) against a token layer
holds for each of its sequence's kept tokens with ``"samples"``.

Nothing is read when the reduction is planned, except the mask's per-sequence
counts with ``"samples"`` (the row count of each chunk: ``n x T`` booleans).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .inputs import ArrayLike, as_dask
from .scheduler import compute

__all__ = ["TOKEN_LAYOUTS", "is_token_layer", "token_features"]

#: The ``layout=`` of token layers.
TOKEN_LAYOUTS = ("NTC",)

_ROLES = {
    "N": ("sample", "samples", "sequence", "sequences", "batch"),
    "T": ("token", "tokens", "position", "positions", "time"),
    "C": ("feature", "features", "hidden", "channel", "channels", "neuron", "neurons"),
}


def is_token_layer(x: Any) -> bool:
    """Whether an (opened) input is 3-D."""
    return len(getattr(x, "shape", ())) == 3


def _check_layout(x: Any, layout: str | None, name: str) -> None:
    from .conv.layout import stored_dimension_names

    names = stored_dimension_names(x)
    if names is not None:
        roles = []
        for dim in names:
            role = next((r for r, opts in _ROLES.items() if dim.lower() in opts), None)
            roles.append(role or "?")
        if "".join(roles) != "NTC":
            raise ValueError(
                f"{name} is a 3-D token layer whose dimension_names {names} are not "
                "('sample', 'token', 'feature'): store it samples first, tokens second"
            )
        if layout is not None and layout.upper() != "NTC":
            raise ValueError(f"{name} names its dimensions {names} (NTC), not {layout!r}")
        return
    if layout is None or not isinstance(layout, str) or layout.upper() not in TOKEN_LAYOUTS:
        raise ValueError(
            f"{name} is a 3-D token layer of shape {tuple(x.shape)}: pass layout='NTC' "
            "(sequences, tokens, features) or store it with dimension_names=('sample', "
            f"'token', 'feature'); got layout={layout!r}"
        )


def _mask_of(mask: ArrayLike, like: da.Array) -> da.Array:
    """The ``(n, T)`` boolean mask, chunked as the token layer ``like``."""
    m = as_dask(mask, name="mask", ndim=2)
    if m.dtype != bool:
        raise TypeError(f"mask must be boolean (True keeps a token), got dtype {m.dtype}")
    if tuple(m.shape) != tuple(like.shape[:2]):
        raise ValueError(
            f"mask has shape {tuple(m.shape)}; the token layer's (n, T) is {tuple(like.shape[:2])}"
        )
    return m.rechunk((like.chunks[0], -1))


def _repeat(block: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Each row of a 2-D side once per kept token of its sequence."""
    return np.repeat(block, reps[:, 0], axis=0)


def _select(block: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return block.reshape(-1, block.shape[-1])[keep.reshape(-1)]


def _masked_mean(block: np.ndarray, keep: np.ndarray, row0: np.ndarray) -> np.ndarray:
    keep = keep[..., 0]  # (m, T, 1) blocks: aligned with the (m, T, d) ones
    counts = keep.sum(axis=1)
    if np.any(counts == 0):
        rows = np.flatnonzero(counts == 0) + int(row0.flat[0])
        raise ValueError(
            f"conv='mean': sequences {', '.join(map(str, rows[:5]))} keep no token under the "
            "mask; drop them or fix the mask"
        )
    total = np.einsum("ntc,nt->nc", block.astype(np.float64), keep.astype(np.float64))
    return total / counts[:, None]


def token_features(
    x: Any, mode: str, *, mask: ArrayLike | None, name: str, counts: np.ndarray | None = None
) -> da.Array:
    """A 3-D token layer (or a 2-D side against one) as 2-D rows for ``mode``.

    ``counts`` (the mask's kept tokens per sequence) is needed for a 2-D side
    with ``"samples"``; :func:`prepare_tokens` computes it once for both sides.
    """
    arr = as_dask(x, name=name, ndim=(2, 3))  # chunked along samples only
    n = int(arr.shape[0])
    if arr.ndim == 2:
        if mode == "mean":
            return arr
        if counts is None:
            raise ValueError("a 2-D side against a token layer needs the token counts")
        blocks = da.from_array(counts, chunks=(arr.chunks[0],))
        return da.map_blocks(
            _repeat,
            arr,
            blocks[:, None],
            dtype=arr.dtype,
            chunks=(_chunk_rows(counts, arr.chunks[0]), arr.chunks[1]),
        )
    t, d = int(arr.shape[1]), int(arr.shape[2])
    if mask is None:  # every token
        return arr.mean(axis=1, dtype=np.float64) if mode == "mean" else arr.reshape(n * t, d)
    keep = _mask_of(mask, arr)
    if mode == "mean":
        starts = da.from_array(np.arange(n), chunks=(arr.chunks[0],))
        return da.map_blocks(
            _masked_mean,
            arr,
            keep[:, :, None],
            starts[:, None, None],
            dtype=np.float64,
            chunks=(arr.chunks[0], (d,)),
            drop_axis=1,
        )
    per_row = counts if counts is not None else compute(keep.sum(axis=1))[0]
    return da.map_blocks(
        _select,
        arr,
        keep[:, :, None],
        dtype=arr.dtype,
        chunks=(_chunk_rows(per_row, arr.chunks[0]), (d,)),
        drop_axis=1,
    )


def _chunk_rows(counts: np.ndarray, chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Rows each chunk of sequences becomes: the sum of its ``counts``."""
    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(int)
    return tuple(int(v) for v in np.add.reduceat(np.asarray(counts), starts))


def prepare_tokens(
    x: Any, y: Any, mode: str, layouts: tuple[Any, Any], mask: ArrayLike | None
) -> tuple[da.Array, da.Array]:
    """Both sides of a pair where one or both are token layers, as 2-D rows."""
    if mode not in ("samples", "mean"):
        raise ValueError(
            f"token layers (n, T, d) take conv='samples' (every token a sample) or "
            f"conv='mean' (mean over tokens), not conv={mode!r}"
        )
    sides = []
    for v, lay, name in ((x, layouts[0], "x"), (y, layouts[1], "y")):
        if is_token_layer(v):
            _check_layout(v, lay, name)
        sides.append(v)
    counts = None
    if mode == "samples":  # each sequence's kept tokens: the rows of each chunk
        tokens = as_dask(next(v for v in sides if is_token_layer(v)), name="x", ndim=3)
        if mask is not None:
            (counts,) = compute(_mask_of(mask, tokens).sum(axis=1))
        else:
            counts = np.full(int(tokens.shape[0]), int(tokens.shape[1]))
    return (
        token_features(sides[0], mode, mask=mask, name="x", counts=counts),
        token_features(sides[1], mode, mask=mask, name="y", counts=counts),
    )
