"""safetensors files, shard lists and globs: one tensor's rows, mapped lazily.

A safetensors file is an 8-byte header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw little-endian data
(the format's specification). A tensor is therefore a mapped region of the
file (:class:`~svcca_dask.inputs.layer.MemmapFile`), in every dtype the
format has, ``BF16`` included (widened per chunk); shards of one tensor
(``"shards/*.safetensors/name"`` or a list of paths) are concatenated along
rows. Reading the header ourselves, rather than through the ``safetensors``
package's ``safe_open``, is what gives bfloat16 without PyTorch and a reader
that pickles as a path.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dask.array as da
import numpy as np

from ..backend import Backend
from ..layer import BF16, Layer, MemmapFile, Request, numpy_dtype, widened
from ..paths import Path, natural_key

__all__ = ["SafetensorsBackend", "read_header"]

_SUFFIX = ".safetensors"


class SafetensorsBackend(Backend):
    name = "safetensors"
    accepts = (
        "safetensors files, shard lists and globs of one tensor "
        "('acts.safetensors/name', 'shards/*.safetensors/name', or a list of paths with key=)"
    )

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, Path):
            return all(f.endswith(_SUFFIX) for f in obj.files)
        return (
            isinstance(obj, (list, tuple))
            and bool(obj)
            and all(
                isinstance(f, (str, os.PathLike)) and os.fspath(f).endswith(_SUFFIX) for f in obj
            )
        )

    def open(self, obj: Any, request: Request) -> Layer:
        if isinstance(obj, Path):
            files, key = list(obj.files), obj.key if obj.key is not None else request.key
        else:
            files, key = [os.fspath(f) for f in obj], request.key
        parts, dtypes = [], set()
        for f in files:
            source, dtype = _tensor(f, key, name=request.name)
            parts.append(widened(source.as_dask(kind="safetensors"), dtype))
            dtypes.add(str(dtype))
        if len(dtypes) > 1:
            raise ValueError(
                f"{request.name}: the shards of {key!r} differ in dtype ({sorted(dtypes)})"
            )
        if len({p.shape[1:] for p in parts}) > 1:
            raise ValueError(
                f"{request.name}: the shards of {key!r} differ in shape beyond the "
                f"first axis ({[p.shape for p in parts]})"
            )
        data = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
        where = files[0] if len(files) == 1 else f"{len(files)} files like {files[0]}"
        return Layer(data, request.name, "safetensors", f"{where}/{key}")


def read_header(path: str) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (tensor name to ``dtype``, ``shape``,
    ``data_offsets``) and where its data begins."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if size <= 0 or size > os.path.getsize(path):
            raise ValueError(f"{path} is not a safetensors file (header size {size})")
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _tensor(path: str, key: str | None, *, name: str) -> tuple[MemmapFile, np.dtype | str]:
    header, start = read_header(path)
    if key is None or key not in header:
        what = "name one of its tensors" if key is None else f"it has no tensor {key!r}"
        shown = sorted(header, key=natural_key)
        raise KeyError(
            f"{name}: {path}: {what} ('{path}/<tensor>' or key=; tensors: "
            f"{', '.join(shown[:20])}{' ...' if len(shown) > 20 else ''})"
        )
    entry = header[key]
    dtype = numpy_dtype(entry["dtype"])
    raw = np.dtype("<u2") if dtype == BF16 else np.dtype(dtype).newbyteorder("<")
    begin, end = entry["data_offsets"]
    shape = tuple(int(s) for s in entry["shape"])
    if end - begin != int(np.prod(shape)) * raw.itemsize:
        raise ValueError(
            f"{name}: tensor {key!r} of {path}: its byte range does not match its shape"
        )
    return MemmapFile(path, offset=start + begin, dtype=raw, shape=shape), dtype
