"""HDF5 datasets (h5py objects, or ``"file.h5/group/dataset"`` paths), read per chunk.

The reader holds the file's path and the dataset's name and opens the file
inside the task (once per process), so it pickles small and a worker on a
shared disk reads the rows itself.
"""

from __future__ import annotations

import os
from typing import Any

from ..backend import Backend, module_of, needs
from ..layer import Layer, Request, from_reader
from ..paths import Path

__all__ = ["H5pyBackend"]

_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


class H5pyBackend(Backend):
    name = "hdf5"
    accepts = "HDF5 datasets (h5py objects, or 'file.h5/group/dataset' paths)"
    extra = "hdf5"

    def guess_can_open(self, obj: Any) -> bool:
        if isinstance(obj, Path):
            return len(obj.files) == 1 and obj.suffix() in _SUFFIXES
        return module_of(obj) == "h5py" and hasattr(obj, "file")

    def open(self, obj: Any, request: Request) -> Layer:
        h5py = needs("h5py", "hdf5", "reading HDF5")
        if isinstance(obj, Path):
            path, key = obj.head, obj.key if obj.key is not None else request.key
        else:
            path = obj.file.filename
            key = obj.name if isinstance(obj, h5py.Dataset) else _join(obj.name, request.key)
        source = _H5Rows(path, key, name=request.name)
        st = os.stat(path)
        from dask.base import tokenize

        data = from_reader(
            source, kind="hdf5", token=tokenize(os.path.realpath(path), key, st.st_mtime_ns)
        )
        return Layer(data, request.name, "hdf5", f"{path}:{key}")


def _join(group: str, key: str | None) -> str | None:
    return None if key is None else f"{group.rstrip('/')}/{key}"


class _H5Rows:
    """Rows of one HDF5 dataset; the file opened lazily in each process."""

    def __init__(self, path: str, key: str | None, *, name: str) -> None:
        import h5py

        self.path, self.key = path, key
        with h5py.File(path, "r") as f:
            node = f.get(key) if key else None
            if not isinstance(node, h5py.Dataset):
                found: list[str] = []
                f.visititems(lambda k, v: found.append(k) if isinstance(v, h5py.Dataset) else None)
                what = "name one of its datasets" if key is None else f"it has no dataset {key!r}"
                raise KeyError(
                    f"{name}: {path}: {what} ('{path}/<dataset>' or key=; datasets: "
                    f"{', '.join(found[:20])})"
                )
            self.shape, self.dtype = tuple(node.shape), node.dtype
        self.ndim = len(self.shape)
        self._ds: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None}

    def __getitem__(self, key: Any) -> Any:
        if self._ds is None:
            import h5py

            self._ds = h5py.File(self.path, "r")[self.key]
        return self._ds[key]
