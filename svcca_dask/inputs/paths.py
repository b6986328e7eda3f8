"""A path names a file or folder, then (optionally) an array inside it.

``"acts.safetensors/blocks.3.hook"`` is the tensor ``blocks.3.hook`` of the
file ``acts.safetensors``; ``"store.zarr/fc1"`` is a Zarr array (a folder
itself); ``"shards/*.safetensors/resid"`` is that tensor of every matching
file. The split is where the path stops existing on disk: the longest prefix
that exists (or that a glob matches) is the file, the rest is the key. URLs
(``s3://...``) are left whole for the backends that take them.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from ..store.format import is_url

__all__ = ["Path", "natural_key", "split_path"]

_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Path:
    """A local path split into what exists and the key inside it.

    Attributes
    ----------
    text : str
        The path as given.
    files : tuple of str
        What exists: one file or folder, or every match of a glob, naturally ordered.
    key : str, optional
        The rest of the path: the array inside the file.
    """

    text: str
    files: tuple[str, ...]
    key: str | None

    @property
    def head(self) -> str:
        return self.files[0]

    def suffix(self) -> str:
        return os.path.splitext(self.head)[1].lower()


def natural_key(text: str) -> list[object]:
    """Sort key that puts ``shard_2`` before ``shard_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def split_path(text: str) -> Path | None:
    """The local ``text`` split into existing files and a key; None for a URL
    or a path of which no prefix exists."""
    if is_url(text):
        return None
    text = text.removeprefix("file://")
    parts = text.split("/")
    for cut in range(len(parts), 0, -1):
        head = "/".join(parts[:cut]) or "/"
        key = "/".join(parts[cut:]) or None
        if _GLOB.search(head):
            found = sorted(glob.glob(head), key=natural_key)
            if found:
                return Path(text, tuple(found), key)
        elif os.path.exists(head):
            return Path(text, (head,), key)
    return None
