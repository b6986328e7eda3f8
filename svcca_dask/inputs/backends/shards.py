"""Folders of memmap shards with a JSON shape file (dictionary_learning's cache).

A folder holding ``shard_0.memmap``, ``shard_1.memmap``... each with a
``shard_0.meta`` (or ``.json``) beside it: ``{"shape": [rows, ...], "dtype":
"float32"}`` (dtype optional, float32 by default; ``"bfloat16"``, stored as
its 16-bit pattern, widened per chunk). The shards, in natural order, are
one layer's rows.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import dask.array as da
import numpy as np

from ..backend import Backend
from ..layer import BF16, Layer, MemmapFile, Request, numpy_dtype, widened
from ..paths import Path, natural_key

__all__ = ["ShardsBackend"]


class ShardsBackend(Backend):
    name = "memmap-shards"
    accepts = "folders of raw memmap shards with a JSON shape file beside each ('shard_0.memmap' + 'shard_0.meta')"

    def guess_can_open(self, obj: Any) -> bool:
        return isinstance(obj, Path) and len(obj.files) == 1 and bool(_shards(obj.head))

    def open(self, obj: Any, request: Request) -> Layer:
        folder = obj.head if obj.key is None else os.path.join(obj.head, obj.key)
        shards = _shards(folder)
        if not shards:
            raise FileNotFoundError(f"{request.name}: no '*.memmap' shards in {folder}")
        parts, kinds = [], set()
        for path in shards:
            meta = _meta(path, name=request.name)
            dtype = numpy_dtype(meta.get("dtype", "float32"))
            raw = "<u2" if dtype == BF16 else dtype
            source = MemmapFile(path, offset=0, dtype=raw, shape=tuple(meta["shape"]))
            expected = int(source.dtype.itemsize) * int(np.prod(source.shape))
            if os.path.getsize(path) < expected:
                raise ValueError(
                    f"{request.name}: {path} has {os.path.getsize(path)} bytes; its "
                    f"shape {source.shape} of {dtype} needs {expected}"
                )
            parts.append(widened(source.as_dask(kind="shards"), dtype))
            kinds.add((str(dtype), source.shape[1:]))
        if len(kinds) > 1:
            raise ValueError(
                f"{request.name}: the shards of {folder} differ in dtype or shape "
                f"beyond the first axis: {sorted(kinds)}"
            )
        data = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
        return Layer(data, request.name, "memmap-shards", f"{folder} ({len(shards)} shards)")


def _shards(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(glob.glob(os.path.join(folder, "*.memmap")), key=natural_key)


def _meta(path: str, *, name: str) -> dict[str, Any]:
    stem = path[: -len(".memmap")]
    for candidate in (stem + ".meta", stem + ".json", path + ".json"):
        if os.path.exists(candidate):
            with open(candidate) as fh:
                meta = json.load(fh)
            if not isinstance(meta, dict) or "shape" not in meta:
                raise ValueError(f"{name}: {candidate} must be a JSON object with a 'shape'")
            return meta
    raise FileNotFoundError(
        f"{name}: {path} has no shape file beside it ({stem}.meta or {stem}.json)"
    )
