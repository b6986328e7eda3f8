"""Exact measures from a live loop: accumulate batches, merge ranks, save, resume.

A user with two models and a DataLoader who wants exact CKA or SVCCA on a
million tokens without writing them anywhere feeds each batch's activations
to an :class:`Accumulator`. It keeps the same one-pass statistics as the
measures (count, means and centred co-moment in float64, merged with the
Chan/Pebay update of :mod:`svcca_dask.stats`), so its result equals the
measure on the concatenated data to rounding, whatever the batch sizes.

The minibatch CKA of the peer libraries averages per-batch estimates, so its
answer moves with the batch size; these statistics are the whole data's.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .folds import check_folds, fold_bounds, held_out
from .matrix import FROM_STATS, MATRIX_MEASURES
from .results import SimilarityMatrix
from .rules import warn_notes
from .stats import Moments, moments_chunk, moments_combine, pair_stats

__all__ = ["Accumulator"]

#: Format marker of a saved accumulator's Zarr group.
_FORMAT = "svcca-dask-accumulator"


def _host(batch: Any, name: str) -> np.ndarray:
    """A batch as a float64 NumPy array: a CPU tensor of any float dtype
    (bfloat16 included), an array, anything NumPy takes."""
    if hasattr(batch, "detach") and hasattr(batch, "device"):  # a PyTorch tensor
        if batch.device.type != "cpu":
            raise TypeError(
                f"{name} is a tensor on {batch.device}: move it to the CPU first ({name}.cpu())"
            )
        import torch

        return batch.detach().to(torch.float64).numpy()
    arr = np.asarray(batch)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _rows(batch: np.ndarray, mask: Any, name: str) -> np.ndarray:
    """A batch as 2-D rows: a token batch ``(b, T, d)`` keeps the tokens ``mask`` keeps."""
    if batch.ndim == 3:
        if mask is None:
            return batch.reshape(-1, batch.shape[-1])
        keep = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(
            bool
        )
        if keep.shape != batch.shape[:2]:
            raise ValueError(
                f"mask has shape {keep.shape}; {name}'s (batch, tokens) is {batch.shape[:2]}"
            )
        return batch[keep]
    if batch.ndim == 2:
        return batch
    raise ValueError(
        f"{name} must be (batch, features) or token activations (batch, tokens, "
        f"features), got shape {batch.shape}"
    )


class Accumulator:
    """Exact similarity measures accumulated batch by batch.

    Parameters
    ----------
    measures : sequence of str, default ("cka",)
        Measures :meth:`result` computes: ``"svcca"``, ``"cca"``, ``"pwcca"``,
        ``"cka"``, ``"shape"`` (as :func:`svcca_dask.similarity_matrices`).
    folds : int, optional
        Held-out scores (:mod:`svcca_dask.folds`) over ``folds`` contiguous
        blocks of the rows; needs ``n_samples``, so that the blocks are those
        of the one-pass measure on the same rows.
    n_samples : int, optional
        The rows that will be fed, with ``folds``.
    max_features : int, default 8192
        Largest total width of the layers (the co-moment is ``d x d`` float64).
    **options
        The measures' options (``keep``, ``epsilon``, ``side``, ``debiased``,
        ``alpha``, ``metric``), checked now, used by :meth:`result`.

    Examples
    --------
    >>> acc = sd.Accumulator(measures=["cka", "svcca"])          # doctest: +SKIP
    >>> for batch in loader:                                     # doctest: +SKIP
    ...     acc.update(model_a(batch), model_b(batch))
    >>> acc.result()["cka"].score                                # doctest: +SKIP

    Dicts of layers give layer x layer matrices: ``acc.update({"fc1": a1,
    "fc2": a2}, {"fc1": b1})``; ``acc.update(xs)`` alone compares ``xs`` with
    itself. Token batches ``(b, T, d)`` take ``mask=`` (``(b, T)``, True keeps
    a token). Ranks accumulate separately and :meth:`merge`; :meth:`save` and
    :meth:`load` resume from a Zarr folder (never pickle).
    """

    def __init__(
        self,
        *,
        measures: Sequence[str] = ("cka",),
        folds: int | None = None,
        n_samples: int | None = None,
        max_features: int = 8192,
        **options: Any,
    ) -> None:
        measures = tuple(dict.fromkeys([measures] if isinstance(measures, str) else measures))
        unknown = [m for m in measures if m not in FROM_STATS]
        if not measures or unknown:
            raise ValueError(
                f"measures must name some of {', '.join(MATRIX_MEASURES)}; got {list(measures)}"
            )
        taken = {o for m in measures for o in MATRIX_MEASURES[m]}
        if set(options) - taken:
            raise TypeError(
                f"no measure of {', '.join(measures)} takes option "
                f"{', '.join(sorted(set(options) - taken))}; options: {', '.join(sorted(taken))}"
            )
        check_folds(folds)
        if folds is not None and (n_samples is None or n_samples < 4 * folds):
            raise ValueError(
                "folds= needs n_samples= (the rows that will be fed, at least 4 per "
                "fold): the folds are contiguous blocks of them"
            )
        self.measures, self.options, self.folds = measures, dict(options), folds
        self.n_samples, self.max_features = n_samples, int(max_features)
        self.rows: tuple[Hashable, ...] | None = None  # the x layers (or "x")
        self.columns: tuple[Hashable, ...] | None = None  # the y layers (or "y"), None: xs
        self.sizes: tuple[int, ...] | None = None
        self.pair = False  # update(x, y): results are pairs, not matrices
        self.parts: list[dict[str, Any] | None] = [None] * (folds or 1)
        self.n = 0

    # ----------------------------------------------------------------- feeding

    def _layers(
        self, xs: Any, ys: Any
    ) -> tuple[tuple[Hashable, ...], tuple[Hashable, ...] | None, list[Any]]:
        if self.n and isinstance(xs, Mapping) == self.pair:
            raise TypeError("feed every batch the same way: two arrays, or dicts of layers")
        if isinstance(xs, Mapping):
            if ys is not None and not isinstance(ys, Mapping):
                raise TypeError("xs is a dict of layers, so ys must be one too (or None)")
            rows = tuple(xs)
            cols = None if ys is None else tuple(ys)
            return rows, cols, [*xs.values(), *(() if ys is None else ys.values())]
        if ys is None:
            raise TypeError(
                "update(x, y) takes two arrays, or dicts of layers (update(xs) or update(xs, ys))"
            )
        return ("x",), ("y",), [xs, ys]

    def update(self, xs: Any, ys: Any = None, *, mask: Any = None) -> None:
        """Add one batch: the same rows of every layer.

        Parameters
        ----------
        xs, ys : array, tensor, or dict of name -> array
            ``(batch, features)`` activations (or ``(batch, tokens, features)``
            with ``mask``), NumPy or CPU torch in any float dtype.
        mask : array of bool, shape (batch, tokens), optional
            Token batches: the tokens kept (an attention mask).
        """
        rows, cols, batches = self._layers(xs, ys)
        names = [f"xs[{r!r}]" for r in rows] + [f"ys[{c!r}]" for c in cols or ()]
        blocks = [_rows(_host(b, n), mask, n) for b, n in zip(batches, names, strict=True)]
        sizes = tuple(int(b.shape[1]) for b in blocks)
        if self.sizes is None:
            if sum(sizes) > self.max_features:
                raise ValueError(
                    f"the layers have {sum(sizes)} features together, more than "
                    f"max_features={self.max_features} (a d x d float64 co-moment)"
                )
            self.rows, self.columns, self.sizes = rows, cols, sizes
            self.pair = not isinstance(xs, Mapping)
        elif (rows, cols, sizes) != (self.rows, self.columns, self.sizes):
            raise ValueError(
                f"this batch's layers {rows}, {cols} of widths {sizes} differ from the "
                f"first batch's {self.rows}, {self.columns} of widths {self.sizes}"
            )
        m = int(blocks[0].shape[0])
        if any(int(b.shape[0]) != m for b in blocks):
            raise ValueError(
                f"every layer of a batch needs the same rows; got {[b.shape[0] for b in blocks]}"
            )
        if m == 0:
            return
        bounds = fold_bounds(self.n_samples, self.folds) if self.folds else [(0, self.n + m)]
        if self.folds and self.n + m > self.n_samples:  # type: ignore[operator]
            raise ValueError(f"more rows than n_samples={self.n_samples}")
        for k, (a, b) in enumerate(bounds):
            lo, hi = max(a, self.n), min(b, self.n + m)
            if hi > lo:  # this fold's rows of the batch
                self._add(k, [blk[lo - self.n : hi - self.n] for blk in blocks], names, lo)
        self.n += m

    def _add(self, fold: int, blocks: list[np.ndarray], names: list[str], row_start: int) -> None:
        part = moments_chunk(*blocks, names=names, row_start=row_start, norms=True)
        acc = self.parts[fold]
        self.parts[fold] = part if acc is None else moments_combine([acc, part], inplace=True)

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s rows (another rank's, or another worker's), after this one's.

        Folds merge fold by fold, so each rank must have been fed its share
        of each fold; without folds the rows' order does not matter.
        """
        if other.n == 0:
            return self
        if self.n and (other.rows, other.columns, other.sizes) != (
            self.rows,
            self.columns,
            self.sizes,
        ):
            raise ValueError("the accumulators hold different layers")
        if (other.folds, other.measures) != (self.folds, self.measures):
            raise ValueError("the accumulators differ in folds or measures")
        if not self.n:
            self.rows, self.columns, self.sizes = other.rows, other.columns, other.sizes
            self.pair = other.pair
        self.parts = [
            b if a is None else a if b is None else moments_combine([a, b])
            for a, b in zip(self.parts, other.parts, strict=True)
        ]
        self.n += other.n
        return self

    # ----------------------------------------------------------------- results

    def _moments(self, part: dict[str, Any]) -> Moments:
        return Moments(
            n=int(part["n"]),
            mean=part["mean"],
            comoment=part["m2"],
            sizes=self.sizes,
            norms=part.get("q"),
        )  # type: ignore[arg-type]

    def result(self) -> dict[str, Any]:
        """Each measure's result: a pair's result (``update(x, y)``), or a
        :class:`~svcca_dask.SimilarityMatrix` (dicts of layers). Warnings (too
        few samples) are raised as the measures raise them."""
        if self.n < 2 or self.sizes is None:
            raise ValueError(f"{self.n} rows accumulated; at least 2 are needed")
        parts = [p for p in self.parts if p is not None]
        whole = self._moments(parts[0] if len(parts) == 1 else moments_combine(parts))
        folds = None
        if self.folds:
            if self.n != self.n_samples:
                raise ValueError(
                    f"{self.n} rows accumulated of the n_samples={self.n_samples} the folds were cut for"
                )
            folds = [
                (
                    self._moments(moments_combine([p for j, p in enumerate(parts) if j != i])),
                    self._moments(parts[i]),
                )
                for i in range(self.folds)
            ]
        rows = self.rows or ()
        cols = self.columns if self.columns is not None else rows
        offset = 0 if self.columns is None else len(rows)
        out: dict[str, Any] = {}
        for m in self.measures:
            opts = {k: v for k, v in self.options.items() if k in MATRIX_MEASURES[m]}
            results = {}
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    names = ("x", "y") if self.pair else (f"xs[{r!r}]", f"ys[{c!r}]")
                    results[(r, c)] = self._pair(m, whole, folds, i, offset + j, names, opts)
            if self.pair:
                out[m] = results[("x", "y")]
                warn_notes(getattr(out[m], "warnings", ()))
                continue
            scores = np.array([[results[(r, c)].score for c in cols] for r in rows])
            out[m] = SimilarityMatrix(
                scores=scores,
                rows=rows,
                columns=cols,
                measure=m,
                results=results,
                n_samples=self.n,
                tile_rows=1,
                tiles=1,
            )
            flagged = [n for res in results.values() for n in getattr(res, "warnings", ())[:1]]
            if flagged:
                warn_notes([f"{m}: {len(flagged)} of {len(results)} pairs, e.g. {flagged[0]}"])
        return out

    def _pair(
        self,
        measure: str,
        whole: Moments,
        folds: Any,
        i: int,
        j: int,
        names: tuple[str, str],
        opts: dict[str, Any],
    ) -> Any:
        def fit(p: Any) -> Any:
            return FROM_STATS[measure](p, names=names, **opts)

        if folds is None:
            return fit(pair_stats(whole, i, j))
        if measure not in ("svcca", "cca", "pwcca"):
            raise ValueError(f"folds= applies to svcca, cca and pwcca, not {measure}")
        splits = [(pair_stats(a, i, j), pair_stats(b, i, j)) for a, b in folds]
        return held_out(fit, pair_stats(whole, i, j), splits)

    # ----------------------------------------------------------------- storage

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics to a local Zarr folder, whole or not at all
        (written beside it, then renamed over it)."""
        import zarr

        path = os.fspath(path)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        g = zarr.open_group(tmp, mode="w")
        g.attrs.update(
            {
                "format": _FORMAT,
                "measures": list(self.measures),
                "options": self.options,
                "folds": self.folds,
                "n_samples": self.n_samples,
                "max_features": self.max_features,
                "rows": None if self.rows is None else [str(r) for r in self.rows],
                "columns": None if self.columns is None else [str(c) for c in self.columns],
                "sizes": None if self.sizes is None else list(self.sizes),
                "n": self.n,
                "pair": self.pair,
                "parts": [None if p is None else int(p["n"]) for p in self.parts],
            }
        )
        for k, p in enumerate(self.parts):
            if p is not None:
                for key in ("mean", "m2", "q", "v"):
                    g.create_array(f"{k}/{key}", data=np.asarray(p[key]))
        old = f"{path}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Accumulator:
        """An accumulator saved by :meth:`save`, to feed on or read."""
        import zarr

        g = zarr.open_group(os.fspath(path), mode="r")
        a = dict(g.attrs)
        if a.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)} is not a saved svcca-dask Accumulator")
        acc = cls(
            measures=a["measures"],
            folds=a["folds"],
            n_samples=a["n_samples"],
            max_features=a["max_features"],
            **a["options"],
        )
        acc.rows = None if a["rows"] is None else tuple(a["rows"])
        acc.columns = None if a["columns"] is None else tuple(a["columns"])
        acc.sizes = None if a["sizes"] is None else tuple(a["sizes"])
        acc.n, acc.pair = int(a["n"]), bool(a["pair"])
        ends = np.cumsum([0, *(acc.sizes or ())]).tolist()
        edges = tuple(itertools.pairwise(ends))  # each layer's columns
        for k, n in enumerate(a["parts"]):
            if n is not None:
                part = {key: g[f"{k}/{key}"][...] for key in ("mean", "m2", "q", "v")}
                acc.parts[k] = {"n": int(n), **part, "edges": edges}
        return acc
