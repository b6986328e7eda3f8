"""similarity_matrix: equal to pair-by-pair calls, each layer read once (per tile row)."""

from __future__ import annotations

import collections
import itertools
import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import svcca_dask as sd
from svcca_dask import linalg
from svcca_dask.matrix import _plan_tiles

PAIR = {"svcca": sd.svcca, "cca": sd.cca, "pwcca": sd.pwcca, "cka": sd.linear_cka}


def _layers(prefix: str, widths: list[int], *, n: int = 1200, seed: int = 0, shift: float = 0.0):
    """Layers that share a latent signal (so scores are neither 0 nor 1)."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(99).standard_normal((n, 6))
    return {
        f"{prefix}{i}": latent @ rng.standard_normal((6, w))
        + 0.7 * rng.standard_normal((n, w))
        + shift
        for i, w in enumerate(widths)
    }


class CountingArray:
    """An array-like that logs every non-empty row range read from it."""

    def __init__(self, a: np.ndarray, log: list, name: str):
        self.a, self.log, self.name = a, log, name
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self._lock = threading.Lock()

    def __getitem__(self, idx):
        rows = idx[0] if isinstance(idx, tuple) else idx
        if isinstance(rows, slice) and (rows.stop or 0) > (rows.start or 0):
            with self._lock:
                self.log.append((self.name, rows.start))
        return self.a[idx]


def _counted(raw: dict, log: list, chunk: int = 300) -> dict:
    return {
        k: da.from_array(CountingArray(v, log, k), chunks=(chunk, -1), name=f"counting-{k}")
        for k, v in raw.items()
    }


@pytest.mark.parametrize(
    ("measure", "options"),
    [
        ("svcca", {}),
        ("svcca", {"keep": 3}),
        ("cca", {"epsilon": 1e-8}),
        ("pwcca", {"side": "y"}),
        ("cka", {}),
    ],
)
def test_matrix_equals_pair_by_pair(measure, options):
    xs = _layers("a", [5, 8, 3], shift=1e3)  # a large mean: the merge must stay centred
    ys = _layers("b", [6, 4], seed=1)
    m = sd.similarity_matrix(xs, ys, measure=measure, **options)
    f = PAIR[measure]
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            ref = f(xs[a], ys[b], **options)
            # the joint pass gives each pair the statistics a pair call accumulates
            np.testing.assert_allclose(m.scores[i, j], ref.score, rtol=0, atol=1e-12)
            assert m.results[(a, b)].score == m.scores[i, j]
            if measure != "cka":
                np.testing.assert_allclose(
                    m.results[(a, b)].coefficients, ref.coefficients, rtol=0, atol=1e-10
                )
    assert m.rows == ("a0", "a1", "a2") and m.columns == ("b0", "b1")  # xs order x ys order
    assert m.scores.shape == (3, 2)
    assert (m.tile_rows, m.tiles) == (1, 1)  # everything in one pass
    assert 0.05 < m.scores.min() and m.scores.max() < 0.999  # a non-trivial comparison


def test_self_matrix_symmetric_with_unit_diagonal():
    xs = _layers("a", [5, 8, 3, 4])
    m = sd.similarity_matrix(xs, measure="cca")
    m_same = sd.similarity_matrix(xs, xs, measure="cca")
    np.testing.assert_array_equal(m.scores, m_same.scores)  # ys=None means ys=xs
    np.testing.assert_allclose(np.diag(m.scores), 1.0, atol=1e-8)  # a layer against itself
    np.testing.assert_allclose(m.scores, m.scores.T, atol=1e-12)  # CCA is symmetric
    ref = sd.cca(xs["a1"], xs["a3"]).score
    np.testing.assert_allclose(m.score("a1", "a3"), ref, rtol=0, atol=1e-12)


def test_each_layer_read_once_and_shared_layers_stacked_once():
    log: list = []
    raw = _layers("l", [5, 8, 3, 6], n=1200)
    arrs = _counted(raw, log)
    log.clear()
    m = sd.similarity_matrix(arrs, measure="cka")
    reads = collections.Counter(log)
    assert set(reads.values()) == {1}  # every chunk of every layer read exactly once
    assert len(reads) == 4 * 4  # 4 layers x 4 row chunks

    # the same array on both sides, under other names: still one read per chunk
    log.clear()
    xs = {"first": arrs["l0"], "second": arrs["l1"]}
    ys = {"again": arrs["l0"], "other": arrs["l2"]}
    m2 = sd.similarity_matrix(xs, ys, measure="cka")
    reads = collections.Counter(log)
    assert set(reads.values()) == {1} and {name for name, _ in reads} == {"l0", "l1", "l2"}
    np.testing.assert_allclose(m2.score("first", "again"), 1.0, atol=1e-12)  # l0 vs l0
    np.testing.assert_allclose(m2.score("second", "other"), m.score("l1", "l2"), atol=1e-12)

    # pair by pair reads each layer once per pair it is in
    log.clear()
    for a in raw:
        for b in raw:
            sd.linear_cka(arrs[a], arrs[b])
    # l0 is in 7 of the 16 calls (l0 against itself reads it once): 7 reads of its 4 chunks
    assert collections.Counter(name for name, _ in log)["l0"] == 4 * 7


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_matrix_reads_each_layer_once_per_tile_row(symmetric):
    log: list = []
    raw = _layers("l", [5, 8, 3, 6, 4], n=1200, shift=50.0)
    arrs = _counted(raw, log)
    if symmetric:
        xs = ys = arrs
    else:
        xs = {k: arrs[k] for k in ["l0", "l1", "l2"]}
        ys = {k: arrs[k] for k in ["l3", "l4"]}
    full = sd.similarity_matrix(xs, ys, measure="svcca", keep=4)
    log.clear()
    tiled = sd.similarity_matrix(xs, ys, measure="svcca", keep=4, max_width=14)
    assert tiled.tile_rows > 1 and full.tile_rows == 1  # the tiled path was taken
    # tiles change nothing but the grouping of the statistics
    np.testing.assert_allclose(tiled.scores, full.scores, rtol=0, atol=1e-12)
    for a in xs:
        for b in ys:
            ref = sd.svcca(raw[a], raw[b], keep=4).score
            np.testing.assert_allclose(tiled.score(a, b), ref, rtol=0, atol=1e-12)

    # reads: per layer, (number of tile rows that use it) x (4 row chunks), each chunk once a row
    reads = collections.Counter(log)
    per_layer = collections.Counter(name for name, _ in log)
    idx = {k: i for i, k in enumerate(dict.fromkeys([*xs, *ys]))}
    widths = [raw[k].shape[1] for k in idx]
    plan = _plan_tiles([idx[k] for k in xs], [idx[k] for k in ys], widths, 14)
    assert len(plan) == tiled.tile_rows
    for k, i in idx.items():
        rows_using = sum(any(i in tile for tile in tiles) for tiles, _ in plan)
        assert per_layer[k] == 4 * rows_using  # once per tile row, never once per tile
    assert max(reads.values()) <= len(plan)
    # every tile fits in max_width
    assert all(sum(widths[i] for i in tile) <= 14 for tiles, _ in plan for tile in tiles)


def test_plan_covers_every_pair_exactly_once():
    for widths, rows, cols, limit in [
        ([3, 7, 2, 5, 6, 1, 4], range(7), range(7), 13),  # widest pair: 7 + 6
        ([3, 7, 2, 5, 6, 1, 4], range(4), range(4, 7), 13),
        ([3, 7, 2, 5, 6, 1, 4], [0, 1, 2, 3], [2, 3, 4], 14),  # sides that share layers
        ([7, 2, 3], range(3), range(3), 10),  # a layer over half the limit next to a group
        ([3, 2, 7], range(2), [2], 10),
    ]:
        plan = _plan_tiles(list(rows), list(cols), widths, limit)
        assert all(sum(widths[k] for k in t) <= limit for tiles, _ in plan for t in tiles)
        homes = [pair for _, h in plan for pair in h]
        needed = {frozenset((i, j)) for i in rows for j in cols}
        assert sorted(map(sorted, homes)) == sorted(map(sorted, needed))  # each pair one home
        for tiles, h in plan:
            for pair, t in h.items():
                assert pair <= set(tiles[t])  # the home tile holds both layers


def test_zarr_paths_and_mixed_chunkings(tmp_path):
    xs = _layers("a", [4, 6], n=900)
    ys = _layers("b", [5], n=900, seed=3)
    root = zarr.open_group(str(tmp_path / "acts.zarr"), mode="w")
    for k, v in {**xs, **ys}.items():
        root.create_array(k, data=v, chunks=(200 if k.startswith("a") else 350, v.shape[1]))
    paths_x = {k: str(tmp_path / "acts.zarr" / k) for k in xs}
    paths_y = {k: str(tmp_path / "acts.zarr" / k) for k in ys}
    m = sd.similarity_matrix(paths_x, paths_y, measure="pwcca")
    for a in xs:
        ref = sd.pwcca(xs[a], ys["b0"]).score
        np.testing.assert_allclose(m.score(a, "b0"), ref, rtol=0, atol=1e-12)


def test_return_results_false_keeps_scores_only():
    xs = _layers("a", [3, 4])
    m = sd.similarity_matrix(xs, measure="cka", return_results=False)
    assert m.results == {}
    with pytest.raises(KeyError, match="return_results=False"):
        m["a0", "a1"]
    assert np.isfinite(m.scores).all()


def test_bad_input_messages():
    xs = _layers("a", [3, 4], n=300)
    with pytest.raises(ValueError, match="unknown measure 'svd'"):
        sd.similarity_matrix(xs, measure="svd")
    with pytest.raises(TypeError, match="takes no option keep"):
        sd.similarity_matrix(xs, measure="cka", keep=0.9)
    with pytest.raises(TypeError, match="must map layer names"):
        sd.similarity_matrix([xs["a0"]])
    with pytest.raises(ValueError, match="is empty"):
        sd.similarity_matrix(xs, {})
    with pytest.raises(ValueError, match="same number of samples"):
        sd.similarity_matrix(xs, {"short": xs["a0"][:200]})
    with pytest.raises(ValueError, match="more than max_width=6"):
        sd.similarity_matrix(xs, measure="cka", max_width=6)
    with pytest.raises(NotImplementedError, match=r"conv='dft'.*per pair"):
        sd.similarity_matrix(xs, measure="cka", conv="dft")
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad = xs["a1"].copy()
        bad[5, 1] = np.nan
        sd.similarity_matrix({"ok": xs["a0"], "bad": bad}, measure="cka")


@pytest.mark.filterwarnings("ignore::svcca_dask.SampleSizeWarning")  # small data, on purpose
@pytest.mark.parametrize("conv", ["mean", "samples", "flatten"])
def test_conv_layers_pass_through_conv_features(conv):
    rng = np.random.default_rng(5)
    n = 400
    latent = rng.standard_normal((n, 3, 1, 1))
    hw = (4, 4) if conv != "mean" else (6, 6)  # "mean" compares layers of any spatial size
    xs = {
        "c1": latent * rng.standard_normal((1, 3, 4, 4)) + rng.standard_normal((n, 3, 4, 4)),
        "c2": latent[:, :2] * rng.standard_normal((1, 2, *hw)) + rng.standard_normal((n, 2, *hw)),
    }
    ys = {"d1": latent * rng.standard_normal((1, 3, 4, 4)) + rng.standard_normal((n, 3, 4, 4))}
    if conv != "samples":
        ys["fc"] = latent[:, :, 0, 0] @ rng.standard_normal((3, 5))  # 2-D layers as they are
    m = sd.similarity_matrix(xs, ys, measure="cca", conv=conv, layout="NCHW")
    for a in xs:
        for b in ys:
            fa = sd.conv_features(xs[a], conv=conv, layout="NCHW")
            fb = sd.conv_features(ys[b], conv=conv, layout="NCHW")
            ref = sd.cca(fa, fb).score  # the same reduction, pair by pair
            # (flatten: CCA of up to 48 + 48 features on 400 samples amplifies rounding)
            np.testing.assert_allclose(m.score(a, b), ref, rtol=0, atol=1e-10)
            direct = sd.cca(xs[a], ys[b], conv=conv, layout="NCHW").score  # the measure's conv=
            np.testing.assert_allclose(m.score(a, b), direct, rtol=0, atol=1e-10)
    assert m.n_samples == (n * 16 if conv == "samples" else n)


def test_conv_layers_need_conv():
    x = np.zeros((10, 3, 4, 4))
    with pytest.raises(ValueError, match="conv"):
        sd.similarity_matrix({"c": x}, measure="cka")


def test_cross_blocks_equal_the_joint_comoment_blocks():
    from svcca_dask.matrix import _cross_regions, _CrossBlocks
    from svcca_dask.stats import moments_chunk, moments_combine

    rng = np.random.default_rng(11)
    sizes = (3, 5, 4, 2)  # layers 0, 1 on the x side; 2, 3 on the y side
    z = rng.standard_normal((700, sum(sizes))) * rng.uniform(0.1, 10, sum(sizes)) + 1e4
    layers = np.split(z, np.cumsum(sizes)[:-1], axis=1)
    bounds = [0, 1, 90, 333, 334, 700]  # uneven chunks, one of a single row
    regions = _cross_regions(sizes, 2)
    parts = [
        moments_chunk(*[v[a:b] for v in layers], regions=regions)
        for a, b in itertools.pairwise(bounds)
    ]
    out = moments_combine([moments_combine(parts[:2]), moments_combine(parts[2:])])
    blocks = _CrossBlocks.from_out(out)
    assert blocks.n_x == 2 and list(blocks.edges) == [0, 3, 8, 12, 14]
    out = {"own": blocks.own, "cross": blocks.cross, "n": blocks.n, "mean": blocks.mean}
    zc = z - z.mean(0)
    full = zc.T @ zc  # the joint co-moment, two-pass in memory
    e = np.cumsum((0, *sizes))
    scale = np.abs(full).max()
    for k in range(4):  # own blocks: centred despite the 1e4 shift
        np.testing.assert_allclose(
            out["own"][k], full[e[k] : e[k + 1], e[k] : e[k + 1]], atol=1e-9 * scale
        )
    np.testing.assert_allclose(
        out["cross"], full[: e[2], e[2] :], atol=1e-9 * scale
    )  # x-y block only
    assert out["cross"].shape == (8, 6) and out["n"] == 700
    np.testing.assert_allclose(out["mean"], z.mean(0), rtol=1e-14)


@settings(derandomize=True, deadline=None, max_examples=400)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=9),
    max_width=st.integers(4, 30),
    data=st.data(),
)
def test_plan_properties(widths, max_width, data):
    ids = list(range(len(widths)))
    rows = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=6), label="rows")
    if data.draw(st.booleans(), label="same layers on both sides"):
        cols = data.draw(st.permutations(rows), label="cols")
    else:
        cols = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=6), label="cols")
    needed = {frozenset((i, j)) for i in rows for j in cols}
    # similarity_matrix refuses pairs wider than max_width before planning
    assume(all(sum(widths[k] for k in pair) <= max_width for pair in needed))
    plan = _plan_tiles(rows, cols, widths, max_width)
    homes = [pair for _, h in plan for pair in h]
    assert len(homes) == len(set(homes)) and set(homes) == needed  # each pair once
    for tiles, h in plan:
        for pair, t in h.items():
            assert pair <= set(tiles[t])  # its home tile holds both layers
        for tile in tiles:
            assert sum(widths[k] for k in tile) <= max_width  # memory bound
            assert len(tile) == len(set(tile))  # a layer stacked once per tile


@pytest.mark.parametrize("measure", ["svcca", "pwcca"])
def test_pairs_share_each_layers_eigh_and_whitening(measure, monkeypatch):
    import svcca_dask.matrix as matrix

    calls = collections.Counter()

    def counting(name, fn):
        def wrapped(c):
            calls[name] += 1
            return fn(c)

        return wrapped

    monkeypatch.setattr(matrix, "top_eigh", counting("eigh", linalg.top_eigh))
    monkeypatch.setattr(matrix, "whitening", lambda eps: counting("whiten", linalg.whitening(eps)))
    xs = _layers("a", [5, 8, 3])
    ys = _layers("b", [6, 4], seed=1)
    m = sd.similarity_matrix(xs, ys, measure=measure)
    # once per distinct layer, not twice per pair (12)
    assert calls == ({"eigh": 5, "whiten": 5} if measure == "svcca" else {"whiten": 5})
    ref = PAIR[measure](xs["a1"], ys["b0"])  # unshared: the same numbers
    np.testing.assert_allclose(m["a1", "b0"].coefficients, ref.coefficients, rtol=0, atol=1e-12)


def test_several_measures_share_one_pass():
    log: list = []
    raw = _layers("l", [6, 9, 4], n=1200)
    layers = _counted(raw, log)
    log.clear()
    mats = sd.similarity_matrices(layers, measures=["svcca", "pwcca", "cka"], keep=0.9, side="y")
    reads = collections.Counter(log)
    assert set(reads.values()) == {1} and len(reads) == 3 * 4  # three measures, one read per chunk
    assert list(mats) == ["svcca", "pwcca", "cka"]
    for m, opts in (("svcca", {"keep": 0.9}), ("pwcca", {"side": "y"}), ("cka", {})):
        alone = sd.similarity_matrix(raw, measure=m, **opts)
        np.testing.assert_allclose(
            mats[m].scores, alone.scores, rtol=1e-12
        )  # same numbers as one measure
    with pytest.raises(TypeError, match="no measure of svcca, cka takes option side"):
        sd.similarity_matrices(raw, measures=["svcca", "cka"], side="y")
    with pytest.raises(TypeError, match="measure='cka' takes no option keep"):
        sd.similarity_matrix(raw, measure="cka", keep=0.9)


def test_on_pair_reports_every_pair_once_tile_row_by_tile_row():
    from dask.callbacks import Callback

    rng = np.random.default_rng(0)
    xs = {f"l{i}": rng.standard_normal((300, 4)) for i in range(6)}
    events: list = []

    class Passes(Callback):
        def _start(self, dsk):
            events.append("pass")

    with Passes():
        m = sd.similarity_matrix(
            xs, measure="cka", max_width=8, on_pair=lambda r, c: events.append((r, c))
        )
    assert m.tile_rows > 1
    pairs = [e for e in events if e != "pass"]
    assert sorted(pairs) == sorted(itertools.product(xs, xs))
    last_pass = len(events) - 1 - events[::-1].index("pass")
    assert events.index(pairs[0]) < last_pass  # the first pairs are done before the last pass
