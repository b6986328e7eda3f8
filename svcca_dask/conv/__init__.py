"""Conv layers: layouts, spatial reductions, and the per-channel DFT path.

A conv layer's activations are 4-D, ``(n, C, H, W)`` ("NCHW", PyTorch) or
``(n, H, W, C)`` ("NHWC", TensorFlow/JAX). The layout comes from a Zarr
array's ``dimension_names`` (``sample``, ``channel``, ``height``, ``width``, in
any order with the sample axis first) or from ``layout=``; when neither says,
it is an error. The measures reduce 4-D layers in one of four ways (``conv=``;
2-D inputs ignore it):

``"dft"`` (the default)
    The SVCCA paper's method (Raghu et al. 2017, Sec. 3.2; google/svcca's
    ``dft_ccas.fourier_ccas``): a 2-D DFT over space per channel; when the
    spatial sizes differ, the common low-frequency band (``-s/2 <= k < s/2``
    of the smaller size ``s`` on each axis, as the reference code crops); one
    complex ``C x C`` covariance per frequency, accumulated in one pass; one
    CCA per frequency, batched; the coefficients of all frequencies pooled,
    each frequency with its multiplicity (a frequency and its conjugate carry
    conjugate coefficients and so the same correlations: only one of each
    pair is transformed, accumulated and solved), sorted descending; score =
    their mean. See :func:`dft_stats` and :func:`dft_measure`.
``"samples"``
    Every spatial position is a sample: ``(n * H * W, C)`` (Morcos et al.
    2018 do this for PWCCA). Both layers must share ``H, W``. A 2-D layer on
    the other side (class logits) is repeated for every position of its image.
``"mean"``
    Average over space: ``(n, C)``.
``"flatten"``
    Every (channel, position) is a feature: ``(n, C * H * W)``, in the stored
    order. Only for small layers, or with ``svd="randomized"``.

Why ``"dft"`` is the default: it is the method SVCCA was published with, the
only one of the four that is exact (equal to the CCA of the flattened layers
when the data is translation invariant, which image datasets nearly are)
while costing ``C x C`` problems instead of ``HWC x HWC``; it compares layers
of different spatial sizes (``"samples"`` cannot) and keeps the spatial
structure (``"mean"`` discards it, and is a lower bound). Its costs, which the
other modes avoid: per image about twice the flops of ``"samples"`` (one
Hermitian rank-n update per frequency), and statistics of ``F (Cx + Cy)^2``
complex numbers (``F ~ H W / 2`` frequencies): 6.6 GB for two 256-channel
56 x 56 layers, handled by frequency bands under a memory limit (one pass
over the data per band, :class:`DFT`). ``"mean"`` is the cheap choice for
quick layer x layer scans (and what :func:`svcca_dask.similarity_matrix`
supports in one pass).

Against a 2-D layer (class logits ``(n, k)``) the 2-D side is a 1 x 1 map with
no spatial extent: the common band is the DC frequency alone, and the result
is the CCA of the conv layer's spatial sums (equivalently means) with the
target, as the reference code does for ``(n, 1, 1, k)`` targets (its
docstring: a lower bound on the correlation of the target with the channels).

Dead features per frequency: a channel whose variance at a frequency is below
``epsilon`` times ``H * W`` times the largest variance of any single
activation of its layer (the variance a DFT coefficient of white noise that
strong would have) is dead there and dropped at that frequency, never NaN. A
frequency contributes ``min(live x channels, live y channels)``
correlations; the pooled list is completed with zeros up to ``min(Kx, Ky)``
(``K`` = live directions summed over frequencies with multiplicity), which is
what the CCA of the flattened layers gives when frequencies are
uncorrelated. A spatially constant channel, for instance, is live at DC only.

The first three are feature maps (:func:`conv_features`): a lazy 2-D Dask array
that every 2-D measure accepts. ``"dft"`` is not a feature map: it has its own
statistics (:class:`DFTStats`) and results (:class:`DFTCCAResult`, ...).

Modules: :mod:`~.layout` (axis roles), :mod:`~.features` (the feature maps),
:mod:`~.plan` (band, lanes, bands, task sizes), :mod:`~.transform` (the FFT
and the fold), :mod:`~.buffers` (memory reuse), :mod:`~.accumulate` (the
passes and :class:`DFTStats`), :mod:`~.cca` (the batched per-frequency CCA),
:mod:`~.measures` (pooled measures).
"""

from .accumulate import DFTStats, dft_stats
from .features import CONV_MODES, FEATURE_MAP_MODES, conv_features
from .layout import LAYOUTS, resolve_layout
from .measures import (
    cca_from_dft_stats,
    cka_from_dft_stats,
    dft_measure,
    pwcca_from_dft_stats,
    svcca_from_dft_stats,
)
from .plan import DFT

__all__ = [
    "CONV_MODES",
    "DFT",
    "FEATURE_MAP_MODES",
    "LAYOUTS",
    "DFTStats",
    "cca_from_dft_stats",
    "cka_from_dft_stats",
    "conv_features",
    "dft_measure",
    "dft_stats",
    "pwcca_from_dft_stats",
    "resolve_layout",
    "svcca_from_dft_stats",
]
