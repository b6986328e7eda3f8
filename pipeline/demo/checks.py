"""The paper's findings, checked on the demo's own numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CONVERGENCE_MARGIN"]

#: "Lower layers converge first": at 35% of training, the first hidden layer's
#: SVCCA with its final state must exceed the last hidden layer's by this much
#: (and its own value at 0% by this much: the first layer did learn).
CONVERGENCE_MARGIN = 0.02


def neuron_check(x: np.ndarray, y: np.ndarray, res: Any) -> dict[str, Any]:
    """Top-neuron correlations against top aligned-direction correlations of two nets' layer.

    The two highest-norm neurons of each net (norm of the centred activation
    vector over the samples); the correlation of each net1 top neuron with
    net2's top neuron of the same rank and with its best-matching net2 neuron
    (one-pass :func:`svcca_dask.similarity_matrix` of single neurons with
    ``measure="cca"``: the absolute correlation).
    """
    import svcca_dask as sd

    top_x = np.argsort(-np.linalg.norm(x - x.mean(0), axis=0))[:2]
    top_y = np.argsort(-np.linalg.norm(y - y.mean(0), axis=0))[:2]
    live_y = [j for j in range(y.shape[1]) if np.ptp(y[:, j]) > 0]
    m = sd.similarity_matrix(
        {int(i): x[:, [i]] for i in top_x},
        {int(j): y[:, [j]] for j in live_y},
        measure="cca",
        return_results=False,
    )
    same_rank = [m.score(int(i), int(j)) for i, j in zip(top_x, top_y, strict=True)]
    best = [float(np.max(m.scores[r])) for r in range(len(top_x))]
    aligned = [float(c) for c in res.coefficients[:2]]
    return {
        "top_neurons": (top_x.tolist(), top_y.tolist()),
        "neuron_corr_same_rank": same_rank,
        "neuron_corr_best_match": best,
        "direction_corr": aligned,
        "holds": min(aligned) > max(best),
        "text": (
            f"top-2 SVCCA directions correlate {aligned[0]:.3f}, {aligned[1]:.3f}; net1's top-2 "
            f"neurons correlate {same_rank[0]:.3f}, {same_rank[1]:.3f} with net2's (best match "
            f"among all net2 neurons {best[0]:.3f}, {best[1]:.3f})"
        ),
    }


def convergence_check(
    dyn: dict[str, np.ndarray],
    layers: Sequence[str],
    *,
    first: str,
    last: str,
    margin: float = CONVERGENCE_MARGIN,
) -> dict[str, Any]:
    """ "Lower layers converge first", on the diagonals of the learning-dynamics matrices.

    Holds if at 35% of training the SVCCA of ``first`` (the first hidden
    layer, after its nonlinearity) with its final state exceeds that of
    ``last`` (the last hidden layer) by at least ``margin``, and exceeds its
    own value at 0% by at least ``margin`` (the first layer learned
    something: it is not similar to its final state by construction).

    Parameters
    ----------
    dyn : dict of checkpoint label -> ndarray, shape (len(layers), len(layers))
        ``{"0%": m0, "35%": m35, ...}``: layer at k% (rows) against layer at
        100% (columns).
    layers : sequence of str
    first, last : str
        Layer names (in ``layers``).
    margin : float

    Returns
    -------
    dict
        ``first``, ``last``, ``margin``, the diagonal ``curves`` (layer ->
        {checkpoint label: score}), ``holds`` and a one-line ``text``.
    """
    missing = [name for name in (first, last) if name not in layers]
    if missing or first == last:
        raise ValueError(
            f"first and last must be two of the layers {list(layers)}, got {first!r}, {last!r}"
        )
    curves = {
        name: {label: float(m[k, k]) for label, m in dyn.items()} for k, name in enumerate(layers)
    }
    a, b = curves[first], curves[last]
    holds = a["35%"] - b["35%"] >= margin and a["35%"] - a["0%"] >= margin
    return {
        "first": first,
        "last": last,
        "margin": margin,
        "curves": curves,
        "holds": bool(holds),
        "text": (
            f"SVCCA with the final state at 0/35/75%: {first} (first hidden layer) "
            + "/".join(f"{a[p]:.3f}" for p in ("0%", "35%", "75%"))
            + f", {last} (last hidden layer) "
            + "/".join(f"{b[p]:.3f}" for p in ("0%", "35%", "75%"))
            + f"; at 35% {first} leads by {a['35%'] - b['35%']:.3f} (needed: {margin})"
        ),
    }
