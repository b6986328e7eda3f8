"""The data order of an extraction: what two stores must share to be compared.

Every batch's inputs are digested in order (:class:`DataOrder`, recorded in
the store's provenance as ``data_order`` and, per batch, with its first row);
a batch key such as ``id``/``idx`` gives each row's sample id (:func:`sample_ids`,
stored as ``sample_id``); a DataLoader that shuffles is warned about. The
measures compare these before or during their pass
(:mod:`svcca_dask.inputs.rows`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Any

import numpy as np

__all__ = [
    "ID_KEYS",
    "DataOrder",
    "first_sample_hash",
    "input_bytes",
    "sample_ids",
    "warn_if_shuffled",
]

log = logging.getLogger("pipeline.extract")


def _torch() -> Any:
    import torch

    return torch


#: Keys of a dict batch that hold each sample's id (recorded as ``sample_id``).
ID_KEYS = ("sample_id", "sample_ids", "id", "ids", "idx", "index")


def sample_ids(batch: Any) -> np.ndarray | None:
    """The integer sample ids a dict batch carries (:data:`ID_KEYS`), or None."""
    if not isinstance(batch, dict):
        return None
    key = next((k for k in ID_KEYS if k in batch), None)
    if key is None:
        return None
    ids = np.asarray(batch[key].cpu() if hasattr(batch[key], "cpu") else batch[key])
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        log.warning(
            "the batches' %r are not one integer per sample; sample ids are not recorded", key
        )
        return None
    return ids.astype(np.int64)


def input_bytes(inputs: Any) -> bytes:
    """The raw bytes of a batch's inputs (a dict's ``input_ids``, or its first
    key), whatever their dtype (bfloat16 has no NumPy view), and their shape."""
    torch = _torch()
    if isinstance(inputs, dict):
        inputs = inputs["input_ids"] if "input_ids" in inputs else inputs[sorted(inputs)[0]]
    t = torch.as_tensor(inputs).detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    return raw.tobytes() + f"{tuple(t.shape)}{t.dtype}".encode()


def first_sample_hash(inputs: Any) -> str:
    first = inputs[0:1] if not isinstance(inputs, dict) else {k: v[0:1] for k, v in inputs.items()}
    return hashlib.sha256(input_bytes(first)).hexdigest()


class DataOrder:
    """A digest of every batch's inputs in order: the data order two stores
    must share to be compared (:mod:`svcca_dask.inputs.rows`). Each batch's own
    digest is kept with its first row, so a mismatch names the row."""

    def __init__(self) -> None:
        self.chain = hashlib.sha256()
        self.batches: list[list[Any]] = []

    def add(self, row: int, inputs: Any) -> None:
        digest = hashlib.blake2b(input_bytes(inputs), digest_size=8).hexdigest()
        self.batches.append([row, digest])
        self.chain.update(digest.encode())

    def provenance(self) -> dict[str, Any]:
        return {"data_order": self.chain.hexdigest(), "data_order_batches": self.batches}


def warn_if_shuffled(batches: Any) -> None:
    """A DataLoader that shuffles gives every extraction its own row order."""
    sampler = getattr(batches, "sampler", None)
    if sampler is not None and type(sampler).__name__ == "RandomSampler":
        warnings.warn(
            "the DataLoader shuffles (shuffle=True): this store's rows are in an order no other "
            "extraction will share, and comparing it with another store is refused. Extract "
            "with shuffle=False, or give the batches an 'id' key (recorded as sample_id)",
            UserWarning,
            stacklevel=3,
        )
