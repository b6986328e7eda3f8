"""TOML job specs: parsing, pair expansion, and validation errors."""

from __future__ import annotations

import numpy as np
import pytest

import svcca_dask as sd
from pipeline.jobs import JobError, Pair, load_job, parse_job
from svcca_dask.store import create_store


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        s = create_store(tmp_path / f"{name}.zarr")
        for layer, d in (("layer1", 4), ("layer2", 3), ("fc", 2)):
            s.append(layer, rng.standard_normal((20, d)))
        s.append("conv1", rng.standard_normal((20, 2, 3, 3)))
        s.append("seq", rng.standard_normal((20, 2, 3)))
    short = create_store(tmp_path / "short.zarr")
    short.append("fc", rng.standard_normal((10, 2)))
    return tmp_path


def write(tmp_path, text):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


BASE = """
output = "out"
[stores]
a = "a.zarr"
b = "b.zarr"
"""


def test_defaults_and_relative_paths(stores):
    job = load_job(write(stores, 'layers = "fc"\n' + BASE))
    assert job.output == str(stores / "out")  # relative to the job file
    assert job.stores == {"a": str(stores / "a.zarr"), "b": str(stores / "b.zarr")}
    assert job.measures == ["svcca"] and job.cluster == "local" and job.options == {}


def test_same_name_pairs(stores):
    job = load_job(write(stores, 'layers = ["layer*", "fc"]\n' + BASE))
    assert job.pairs == [Pair("a", n, "b", n) for n in ("fc", "layer1", "layer2")]
    per_store = load_job(write(stores, "layers = {a = ['fc'], b = ['fc', 'layer1']}\n" + BASE))
    assert per_store.layers == {"a": ["fc"], "b": ["fc", "layer1"]}
    assert per_store.pairs == [Pair("a", "fc", "b", "fc")]  # names selected in both stores


def test_all_pairs_two_stores_and_one_store(stores):
    job = load_job(write(stores, 'pairs = "all"\nlayers = ["layer?"]\n' + BASE))
    assert [(p.x_layer, p.y_layer) for p in job.pairs] == [
        ("layer1", "layer1"),
        ("layer1", "layer2"),
        ("layer2", "layer1"),
        ("layer2", "layer2"),
    ]  # every layer of a against every layer of b
    one = parse_job(
        {"output": "o", "stores": {"a": "a.zarr"}, "pairs": "all", "layers": ["fc", "layer1"]},
        base_dir=str(stores),
    )
    assert {(p.x_layer, p.y_layer) for p in one.pairs} == {
        ("fc", "fc"),
        ("fc", "layer1"),
        ("layer1", "fc"),
        ("layer1", "layer1"),
    }  # one store: its layer x layer matrix


def test_explicit_pairs_and_options(stores):
    job = load_job(
        write(
            stores,
            'pairs = [["a/layer1", "b/fc"], ["b/layer2", "a/layer2"]]\n'
            'measures = ["svcca", "cka", "pwcca", "cca"]\n'
            'cluster = "tcp://127.0.0.1:8786"\n' + BASE + "[options]\nkeep = 5\nepsilon = 1e-8\n",
        )
    )
    assert job.pairs == [Pair("a", "layer1", "b", "fc"), Pair("b", "layer2", "a", "layer2")]
    assert job.options == {"keep": 5, "epsilon": 1e-8}
    assert job.cluster == "tcp://127.0.0.1:8786"
    assert job.params()["pairs"] == [["a/layer1", "b/fc"], ["b/layer2", "a/layer2"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mesures = ['svcca']\n" + BASE, r"unknown key 'mesures'; did you mean 'measures'\?"),
        (BASE.replace('output = "out"', ""), "'output' is missing"),
        ("measures = ['svca']\n" + BASE, r"unknown measure 'svca'; did you mean 'svcca'\?"),
        (
            "layers = ['layer9']\n" + BASE,
            r"'layer9' is not a layer of store 'a'; available: .*layer1",
        ),
        ("layers = ['blk*']\n" + BASE, r"'blk\*' matches no layer of store 'a'"),
        (BASE + "[options]\nkep = 0.9\n", r"options: unknown key 'kep'; did you mean 'keep'\?"),
        (BASE + "[options]\nkeep = 1.5\n", "options.keep must be a fraction"),
        (BASE + "[options]\nkeep = 0\n", "options.keep must be"),
        (BASE + "[options]\nside = 'left'\n", "options.side must be"),
        ("pairs = 'some'\n" + BASE, "pairs must be 'same-name', 'all', or a list"),
        ("pairs = [['a/fc', 'c/fc']]\n" + BASE, "with a store of \\[stores\\]"),
        ("pairs = [['a/fc', 'b/nope']]\n" + BASE, "store 'b' has no layer 'nope'; available"),
        ("pairs = [['a/fc']]\n" + BASE, "each explicit pair"),
        ('output = "o"\n[stores]\na = "a.zarr"\n', "'same-name' needs two or more stores"),
        ("layers = ['seq']\n" + BASE, r"seq has dims .*take 2-D .* and 4-D conv layers"),
        (BASE + "[options]\nconv = 'avg'\n", "options.conv must be a conv-layer reduction"),
        (BASE + 'c = "missing.zarr"\n', "stores.c: no activation store"),
        ('pairs = [["a/fc", "s/fc"]]\n' + BASE + 's = "short.zarr"\n', "20 and 10 samples"),
        ("cluster = 3\n" + BASE, "cluster must be"),
        ("options = [1]\n" + BASE, "options must be a table"),
        ("layers = {c = 'fc'}\n" + BASE, r"layers: unknown key 'c'"),
        ("output = [\n", "not valid TOML"),
    ],
)
def test_validation_errors(stores, text, message):
    with pytest.raises(JobError, match=message):
        load_job(write(stores, text))


def test_incomplete_store_refused_up_front(stores):
    s = create_store(stores / "c.zarr")
    s.append("fc", np.ones((20, 2)), expected_samples=40)
    with pytest.raises(JobError, match="incomplete"):
        load_job(write(stores, 'layers = "fc"\n' + BASE + 'c = "c.zarr"\n'))


def test_all_layers_by_default_conv_layers_included(stores):
    job = load_job(
        write(stores, "layers = ['conv?', 'fc']\n" + BASE + "[options]\nconv = 'mean'\n")
    )
    assert job.layers["a"] == ["conv1", "fc"]
    with pytest.raises(JobError, match="seq"):  # the 3-D layer is refused up front
        load_job(write(stores, BASE))


def test_missing_job_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no job file"):
        load_job(tmp_path / "nope.toml")


def test_option_no_measure_takes_is_an_error(stores):
    with pytest.raises(JobError, match=r"options\.keep applies to none of the measures"):
        load_job(write(stores, "measures = ['cka']\n" + BASE + "[options]\nkeep = 0.9\n"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("epsilon = inf", "options.epsilon must be a finite float >= 0"),
        ("epsilon = -1.0", "options.epsilon must be a finite float >= 0"),
        ("svd = 'fast'", "options.svd must be SVCCA's SVD step"),
        ("dft_memory_limit = 'lots'", "options.dft_memory_limit must be"),
        ("n_power_iter = -1", "options.n_power_iter must be"),
        ("keep = [0.9, 0.9]", "options.keep must be"),
    ],
)
def test_option_values_are_checked(stores, options, message):
    with pytest.raises(JobError, match=message):
        load_job(write(stores, BASE + "[options]\n" + options + "\n"))


def test_svd_and_dft_options_reach_the_measures(stores):
    from pipeline.runner import run_job

    head = "pairs = 'same-name'\nmeasures = ['svcca']\ncluster = 'threads'\n"
    a, b = str(stores / "a.zarr"), str(stores / "b.zarr")
    fc_job = load_job(
        write(
            stores,
            "layers = ['fc']\n"
            + head
            + BASE
            + ("[options]\nkeep = 2\nsvd = 'randomized'\nn_power_iter = 3\n"),
        )
    )
    (row,) = run_job(fc_job, progress=False).rows
    ref = sd.svcca(f"{a}/fc", f"{b}/fc", keep=2, svd=sd.RandomizedSVD(n_power_iter=3))
    assert row["score"] == pytest.approx(ref.score, rel=1e-12)
    conv_job = load_job(
        write(
            stores,
            "layers = ['conv1']\n"
            + head.replace("out", "o2")
            + BASE
            + "[options]\ndft_memory_limit = '1MiB'\n",
        )
    )
    (row,) = run_job(conv_job, force=True, progress=False).rows
    ref = sd.svcca(f"{a}/conv1", f"{b}/conv1", conv=sd.DFT(memory_limit="1MiB"))
    assert row["score"] == pytest.approx(ref.score, rel=1e-12)


def test_randomized_svd_on_dft_conv_layers_is_refused_up_front(stores):
    text = "layers = ['conv1']\n" + BASE + "[options]\nsvd = 'randomized'\n"
    with pytest.raises(JobError, match="conv layer compared with conv='dft'"):
        load_job(write(stores, text))


def test_a_store_glob_expands_naturally_and_picks_up_new_checkpoints(tmp_path):
    from pipeline.runner import run_job
    from svcca_dask.store import create_store

    rng = np.random.default_rng(0)
    base = rng.standard_normal((200, 4))

    def checkpoint(step):
        s = create_store(tmp_path / "ckpt" / f"step-{step}.zarr")
        s.append("fc", base @ rng.standard_normal((4, 5)))

    for step in (100, 1000, 200):
        checkpoint(step)
    spec = {
        "output": "out",
        "stores": {"ckpt": "ckpt/step-*.zarr"},
        "measures": ["cka"],
        "pairs": "same-name",
        "cluster": "threads",
    }
    job = parse_job(spec, base_dir=str(tmp_path))
    assert list(job.stores) == ["step-100", "step-200", "step-1000"]  # natural order
    assert run_job(job, progress=False).computed == 3  # the three store pairs
    checkpoint(1500)  # training goes on
    again = run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False)
    assert again.reused == 3 and again.computed == 3  # only the pairs with the new one
    with pytest.raises(JobError, match=r"stores\.ckpt = .* matches no store"):
        parse_job({**spec, "stores": {"ckpt": "none/*.zarr"}}, base_dir=str(tmp_path))


def test_against_plans_store_pairs(stores):
    rng = np.random.default_rng(1)
    for name in ("c", "d"):
        create_store(stores / f"{name}.zarr").append("fc", rng.standard_normal((20, 2)))
    spec = {"output": "out", "layers": "fc", "stores": {n: f"{n}.zarr" for n in "abcd"}}

    def store_pairs(**kw):
        return [
            (p.x_store, p.y_store) for p in parse_job({**spec, **kw}, base_dir=str(stores)).pairs
        ]

    assert store_pairs(against="last") == [("a", "d"), ("b", "d"), ("c", "d")]
    assert store_pairs(against="last", pairs="all") == [
        ("a", "d"),
        ("b", "d"),
        ("c", "d"),
        ("d", "d"),
    ]
    assert store_pairs(against="previous") == [("b", "a"), ("c", "b"), ("d", "c")]
    assert store_pairs(against="b") == [("a", "b"), ("c", "b"), ("d", "b")]
    assert (
        parse_job({**spec, "against": "last"}, base_dir=str(stores)).params()["against"] == "last"
    )
    with pytest.raises(JobError, match="did you mean 'b'"):
        store_pairs(against="bb")
    with pytest.raises(JobError, match="explicit list of pairs"):
        store_pairs(against="last", pairs=[["a/fc", "b/fc"]])
    with pytest.raises(JobError, match="against must be"):
        store_pairs(against=3)
