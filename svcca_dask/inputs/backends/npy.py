"""``.npy`` files (memory-mapped) and ``.npz`` members (mapped inside the zip).

``np.savez`` stores members uncompressed, so a member's array lies whole at
an offset of the zip file and is mapped like an ``.npy`` file. A member of
``np.savez_compressed`` cannot be read in row chunks without inflating the
stream from its start for every chunk: it is refused, with the remedy.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from ..backend import Backend
from ..layer import Layer, MemmapFile, Request
from ..paths import Path

__all__ = ["NpyBackend"]

#: Size of a zip local file header before its name and extra field.
_ZIP_LOCAL_HEADER = 30


class NpyBackend(Backend):
    name = "npy"
    accepts = "'.npy' paths (memory-mapped), '.npz' members ('file.npz/member', or np.load(...) with key=)"

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, Path):
            return len(obj.files) == 1 and obj.suffix() in (".npy", ".npz")
        return type(obj).__name__ == "NpzFile" and type(obj).__module__.startswith("numpy")

    def open(self, obj: Any, request: Request) -> Layer:
        if isinstance(obj, Path) and obj.suffix() == ".npy":
            if obj.key is not None:
                raise FileNotFoundError(
                    f"{request.name}: {obj.head} is an .npy file: it holds one "
                    f"array, not {obj.key!r}"
                )
            arr = np.load(obj.head, mmap_mode="r")
            return _layer(_file_of(arr, obj.head), request, obj.head)
        path = obj.head if isinstance(obj, Path) else obj.zip.filename
        key = obj.key if isinstance(obj, Path) else None
        key = key if key is not None else request.key
        return _layer(npz_member(path, key, name=request.name), request, f"{path}/{key}")


def _layer(source: MemmapFile, request: Request, origin: str) -> Layer:
    return Layer(source.as_dask(kind="npy"), request.name, "npy", origin)


def _file_of(arr: np.ndarray, path: str) -> MemmapFile:
    if not isinstance(arr, np.memmap):  # an object array, or a 0-size one
        raise TypeError(f"{path} does not hold a numeric array that can be memory-mapped")
    if not arr.flags.c_contiguous:
        raise ValueError(
            f"{path} is stored in Fortran order; save it C-ordered (np.ascontiguousarray)"
        )
    return MemmapFile(path, offset=int(arr.offset), dtype=arr.dtype, shape=arr.shape)


def npz_member(path: str, key: str | None, *, name: str) -> MemmapFile:
    """The ``.npy`` member ``key`` of the zip ``path``, as a mapped region of the zip."""
    with zipfile.ZipFile(path) as zf:
        members = [m.removesuffix(".npy") for m in zf.namelist()]
        if key is None or key not in members:
            what = "name one of its members" if key is None else f"it has no member {key!r}"
            raise KeyError(
                f"{name}: {path} is an .npz archive: {what} ('{path}/<member>' or "
                f"key=; members: {', '.join(members)})"
            )
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"{name}: member {key!r} of {path} is compressed (np.savez_compressed), so its "
                "rows cannot be read in chunks without inflating it whole; save it with np.savez "
                "or as an .npy file"
            )
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(_ZIP_LOCAL_HEADER)
        name_len = int.from_bytes(head[26:28], "little")
        extra_len = int.from_bytes(head[28:30], "little")
        start = info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran and len(shape) > 1:
        raise ValueError(f"{name}: member {key!r} of {path} is Fortran-ordered; save it C-ordered")
    if os.path.getsize(path) < offset + int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise ValueError(f"{name}: member {key!r} of {path} is truncated")
    return MemmapFile(path, offset=offset, dtype=dtype, shape=tuple(shape))
