"""Activation stores: Zarr v3 groups with one array per layer, samples first.

:mod:`~svcca_dask.store.format` holds the format and the completeness rule,
:mod:`~svcca_dask.store.select` the choice of layers by name or glob, and
:mod:`~svcca_dask.store.activation` the store itself (create, open, append, read).
"""

from .activation import (
    ActivationStore,
    LayerData,
    LayerInfo,
    create_store,
    list_layers,
    open_store,
    read_layer,
)
from .format import (
    FORMAT,
    LABELS,
    MASK,
    SAMPLE_ID,
    IncompleteLayerError,
    check_complete,
    default_dims,
    is_activation_store,
)
from .select import select_layers

__all__ = [
    "FORMAT",
    "LABELS",
    "MASK",
    "SAMPLE_ID",
    "ActivationStore",
    "IncompleteLayerError",
    "LayerData",
    "LayerInfo",
    "check_complete",
    "create_store",
    "default_dims",
    "is_activation_store",
    "list_layers",
    "open_store",
    "read_layer",
    "select_layers",
]
