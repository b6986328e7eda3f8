"""Small, fast pieces of the demo: models, compression by SVCCA projection, the CLI hook."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1500, 12)) @ rng.standard_normal((12, 12)) + 3.0
    y = x[:, :8] @ rng.standard_normal((8, 16)) + 0.3 * rng.standard_normal((1500, 16))
    return x, y


@pytest.mark.parametrize("k", [1, 4, 8])
def test_projection_keeps_top_variates_and_removes_the_rest(k: int) -> None:
    x, y = _pair()
    r = sd.svcca(x, y, keep=1.0)
    p = r.projection(k)
    np.testing.assert_allclose(p @ p, p, atol=1e-10)  # a projection is idempotent
    z = r.transform(x)
    z_hat = r.transform(r.x_mean + (x - r.x_mean) @ p)
    np.testing.assert_allclose(z_hat[:, :k], z[:, :k], atol=1e-8)  # top k variates kept
    np.testing.assert_allclose(z_hat[:, k:], 0.0, atol=1e-8)  # the others removed


def test_projection_is_least_squares_reconstruction_from_top_variates() -> None:
    x, y = _pair(1)
    r = sd.svcca(x, y, keep=1.0)  # x (12 features) is the smaller side: W spans it
    k = 5
    z = r.transform(x)[:, :k]
    coef, *_ = np.linalg.lstsq(z, x - r.x_mean, rcond=None)
    np.testing.assert_allclose((x - r.x_mean) @ r.projection(k), z @ coef, atol=1e-7)


def test_projection_rejects_bad_k() -> None:
    r = sd.cca(*_pair())
    with pytest.raises(ValueError, match="k must be an int"):
        r.projection(0)
    with pytest.raises(ValueError, match="k must be an int"):
        r.projection(len(r.coefficients) + 1)
    with pytest.raises(ValueError, match="side must be"):
        r.projection(1, side="z")  # type: ignore[arg-type]
