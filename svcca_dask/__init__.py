"""svcca-dask: SVCCA, PWCCA and linear CKA of neural-network activations at scale.

Activations are ``(n_samples, n_features)`` arrays, or conv layers ``(n, C, H,
W)`` / ``(n, H, W, C)``, in any form :func:`open_layer` opens (NumPy and
memmaps, CPU tensors, Dask, Zarr, xarray, HDF5, npy/npz, safetensors, Hugging
Face datasets, memmap shards; paths and URLs), streamed without a copy.
Every measure is computed from co-moment statistics accumulated in one
streaming pass over row chunks, on Dask's threaded scheduler or the current
``distributed`` client.

What a user calls is here. The layers underneath stay importable from their
modules: :mod:`svcca_dask.stats` (co-moments and their merge),
:mod:`svcca_dask.measures` (``*_from_stats``), :mod:`svcca_dask.conv` (the
DFT path's statistics and ``*_from_dft_stats``), :mod:`svcca_dask.svd`,
:mod:`svcca_dask.rules`, :mod:`svcca_dask.store`.
"""

from .accumulator import Accumulator
from .cka import linear_cka
from .cluster import Connection, connect
from .conv import DFT, conv_features
from .inputs import Layer, RowOrderError, open_layer
from .matrix import similarity_matrices, similarity_matrix
from .measures import cca, pwcca, svcca
from .results import (
    CCAResult,
    CKAResult,
    DFTCCAResult,
    DFTPWCCAResult,
    DFTSVCCAResult,
    PWCCAResult,
    ShapeResult,
    SimilarityMatrix,
    SVCCAResult,
)
from .rules import SampleSizeWarning
from .sensitivity import class_sensitivity
from .shape import shape_distance
from .store import (
    ActivationStore,
    IncompleteLayerError,
    LayerData,
    LayerInfo,
    create_store,
    list_layers,
    open_store,
    read_layer,
    select_layers,
)
from .svd import RandomizedSVD

__version__ = "0.1.0"

__all__ = [
    "DFT",
    "Accumulator",
    "ActivationStore",
    "CCAResult",
    "CKAResult",
    "Connection",
    "DFTCCAResult",
    "DFTPWCCAResult",
    "DFTSVCCAResult",
    "IncompleteLayerError",
    "Layer",
    "LayerData",
    "LayerInfo",
    "PWCCAResult",
    "RandomizedSVD",
    "RowOrderError",
    "SVCCAResult",
    "SampleSizeWarning",
    "ShapeResult",
    "SimilarityMatrix",
    "__version__",
    "cca",
    "class_sensitivity",
    "connect",
    "conv_features",
    "create_store",
    "linear_cka",
    "list_layers",
    "open_layer",
    "open_store",
    "pwcca",
    "read_layer",
    "select_layers",
    "shape_distance",
    "similarity_matrices",
    "similarity_matrix",
    "svcca",
]
