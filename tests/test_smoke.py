import numpy as np

import svcca_dask as sd


def test_identical_layers_score_one():
    x = np.random.default_rng(0).standard_normal((500, 8))
    r = sd.cca(x, x)
    np.testing.assert_allclose(r.coefficients, 1.0, atol=1e-8)  # x against itself: all ones
