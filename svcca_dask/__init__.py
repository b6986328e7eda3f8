"""svcca-dask: SVCCA, PWCCA and linear CKA of neural-network activations at scale.

Activations are ``(n_samples, n_features)`` arrays (NumPy, Dask, Zarr, or a
``"store.zarr/layer"`` path). Every measure is computed from co-moment
statistics accumulated in one streaming pass over row chunks, on Dask's
threaded scheduler or the current ``distributed`` client.
"""

from ._conv import (
    CONV_MODES,
    DFT,
    LAYOUTS,
    DFTCCAResult,
    DFTPWCCAResult,
    DFTStats,
    DFTSVCCAResult,
    cca_from_dft_stats,
    cka_from_dft_stats,
    conv_features,
    dft_stats,
    pwcca_from_dft_stats,
    svcca_from_dft_stats,
)
from ._matrix import SimilarityMatrix, similarity_matrices, similarity_matrix
from ._measures import (
    DEFAULT_MAX_FEATURES,
    CCAResult,
    CKAResult,
    PairStats,
    PWCCAResult,
    SVCCAResult,
    cca,
    cca_from_stats,
    cka_from_stats,
    linear_cka,
    pair_stats,
    pwcca,
    pwcca_from_stats,
    svcca,
    svcca_from_stats,
)
from ._stats import Moments, accumulate
from ._svd import SVD_METHODS, RandomizedSVD
from .cluster import Connection, connect
from .store import (
    ActivationStore,
    IncompleteLayerError,
    LayerData,
    LayerInfo,
    append_batch,
    create_store,
    list_layers,
    open_store,
    read_layer,
)

__version__ = "0.1.0"

__all__ = [
    "CONV_MODES",
    "DEFAULT_MAX_FEATURES",
    "DFT",
    "LAYOUTS",
    "SVD_METHODS",
    "ActivationStore",
    "CCAResult",
    "CKAResult",
    "Connection",
    "DFTCCAResult",
    "DFTPWCCAResult",
    "DFTSVCCAResult",
    "DFTStats",
    "IncompleteLayerError",
    "LayerData",
    "LayerInfo",
    "Moments",
    "PWCCAResult",
    "PairStats",
    "RandomizedSVD",
    "SVCCAResult",
    "SimilarityMatrix",
    "__version__",
    "accumulate",
    "append_batch",
    "cca",
    "cca_from_dft_stats",
    "cca_from_stats",
    "cka_from_dft_stats",
    "cka_from_stats",
    "connect",
    "conv_features",
    "create_store",
    "dft_stats",
    "linear_cka",
    "list_layers",
    "open_store",
    "pair_stats",
    "pwcca",
    "pwcca_from_dft_stats",
    "pwcca_from_stats",
    "read_layer",
    "similarity_matrices",
    "similarity_matrix",
    "svcca",
    "svcca_from_dft_stats",
    "svcca_from_stats",
]
