"""Class sensitivity: each layer against each class's indicator or logit, in one pass."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd
from svcca_dask.store import create_store


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 4, n)
    onehot = np.eye(4)[labels]
    x = np.c_[onehot @ rng.standard_normal((4, 6)), rng.standard_normal((n, 3))]
    x += 0.3 * rng.standard_normal(x.shape)
    conv = np.repeat(x[:, :, None, None], 3, 2).repeat(3, 3) + 0.1 * rng.standard_normal(
        (n, 9, 3, 3)
    )
    return labels, onehot, x, conv


def test_each_class_is_its_indicator_pair(data):
    labels, onehot, x, conv = data
    m = sd.class_sensitivity(
        {"fc": x, "conv": conv}, labels, measures=["svcca", "cka", "pwcca"], layout="NCHW"
    )
    assert m["svcca"].rows == ("fc", "conv") and m["svcca"].columns == (0, 1, 2, 3)
    for c in range(4):
        y = onehot[:, [c]]
        assert m["svcca"][("fc", c)].score == pytest.approx(sd.svcca(x, y).score, abs=1e-12)
        assert m["cka"][("fc", c)].score == pytest.approx(sd.linear_cka(x, y).score, abs=1e-12)
        assert m["pwcca"][("fc", c)].score == pytest.approx(sd.pwcca(x, y).score, abs=1e-12)
        # a conv layer by DFT: only the DC term can correlate with the target
        dft = sd.svcca(conv, y, conv="dft", layout="NCHW").score
        assert m["svcca"][("conv", c)].score == pytest.approx(dft, abs=1e-8)
    # one unrelated layer scores low against every class
    noise = np.random.default_rng(1).standard_normal((len(labels), 5))
    low = sd.class_sensitivity(noise, labels, measures="svcca")["svcca"]
    assert low.rows == ("x",) and low.scores.max() < 0.2 < m["svcca"].scores.min()


def test_logits_columns_and_store_inputs(tmp_path, data):
    labels, onehot, x, _ = data
    logits = x @ np.random.default_rng(2).standard_normal((9, 4))
    s = create_store(tmp_path / "s.zarr")
    s.append("fc", x)
    s.append_labels(labels)
    s.append("logits", logits)
    by_path = sd.class_sensitivity({"fc": f"{s.path}/fc"}, f"{s.path}/labels", classes=[3, 1])
    assert by_path["svcca"].columns == (3, 1)
    assert by_path["svcca"][("fc", 1)].score == pytest.approx(
        sd.svcca(f"{s.path}/fc", onehot[:, [1]]).score, abs=1e-12
    )  # the store's float32 values
    named = sd.class_sensitivity(x, f"{s.path}/logits", classes=list("abcd"), measures="cca")["cca"]
    assert named.columns == ("a", "b", "c", "d")
    # logits affine in the layer: 1 by construction
    np.testing.assert_allclose(named.scores, 1.0, atol=1e-9)


def test_errors(data):
    labels, _, x, conv = data
    with pytest.raises(TypeError, match="1-D labels must be integers"):
        sd.class_sensitivity(x, labels.astype(float))
    with pytest.raises(ValueError, match="4 columns but 2 class names"):
        sd.class_sensitivity(x, np.eye(4)[labels], classes=[0, 1])
    with pytest.raises(ValueError, match="conv='samples' would repeat"):
        sd.class_sensitivity(conv, labels, conv="samples", layout="NCHW")
