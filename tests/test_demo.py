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


# --------------------------------------------------------------------------- #
# models and compression


@pytest.fixture(scope="module")
def digits():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from pipeline.demo.models import load_digits

    yield load_digits()
    torch.set_num_threads(threads)


def test_digits_split_is_stratified_and_sorted(digits) -> None:
    y = digits.y_train.numpy()
    assert np.all(np.diff(y) >= 0)  # training set sorted by class
    assert len(y) + len(digits.y_test) == 1797  # every digit used once
    counts = np.bincount(digits.y_test.numpy(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~20% of each class
    assert digits.x_train.shape[1:] == (1, 8, 8) and float(digits.x_train.max()) <= 1.0


@pytest.mark.parametrize("arch", ["convnet", "resnet"])
def test_models_name_their_layers_and_build_reproducibly(arch: str, digits) -> None:
    import torch

    from pipeline.demo.models import build_model, layer_names

    a, b = build_model(arch, seed=7), build_model(arch, seed=7)
    c = build_model(arch, seed=8)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key  # same seed, same weights
    assert not torch.equal(a.logits.weight, c.logits.weight)  # other seed, other weights
    names = layer_names(a)
    assert names[-1] == "logits"
    assert all(a.get_submodule(n) is not None for n in names)  # every layer is a module
    seen = {}
    hooks = [
        a.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in names
    ]
    with torch.no_grad():
        assert a.eval()(digits.x_test[:5]).shape == (5, 10)
    for h in hooks:
        h.remove()
    for n in names[:-1]:  # hidden layers are taken after their ReLU: never affine in the input
        assert float(seen[n].min()) == 0.0, n
    assert float(seen["logits"].min()) < 0.0  # the logits have no nonlinearity


def test_accuracy_with_projection_identity_and_zero(digits) -> None:
    from pipeline.demo.models import accuracy, accuracy_with_projection, build_model

    net = build_model("convnet", seed=0).eval()
    x, y = digits.x_test, digits.y_test
    d = net.logits.in_features  # fc1's width
    mean = np.zeros(d)
    full = accuracy_with_projection(net, "fc1", np.eye(d), mean, x, y)
    assert full == accuracy(net, x, y)  # the identity projection changes nothing
    zero = accuracy_with_projection(net, "fc1", np.zeros((d, d)), mean, x, y)
    # every sample's fc1 becomes the same vector: one class predicted for all
    assert any(zero == pytest.approx(np.mean(y.numpy() == c)) for c in range(10))
    assert accuracy(net, x, y) == full  # the hook is removed afterwards
    with pytest.raises(ValueError, match=r"projection must be \(d, d\)"):
        accuracy_with_projection(net, "fc1", np.eye(3), np.zeros(4), x, y)
    with pytest.raises(ValueError, match="outputs shape"):
        accuracy_with_projection(net, "logits", np.eye(d), mean, x, y)


# --------------------------------------------------------------------------- #
# demo pieces


def test_class_logits_wrapper_exposes_one_module_per_class(digits) -> None:
    import torch

    from pipeline.demo.models import build_model
    from pipeline.demo.run import _class_logits

    net = build_model("convnet", seed=0).eval()
    wrapped = _class_logits(net, 10).eval()
    seen = {}
    hooks = [
        wrapped.get_submodule(f"class_{c}").register_forward_hook(
            lambda m, i, o, c=c: seen.__setitem__(c, o)
        )
        for c in range(10)
    ]
    with torch.no_grad():
        logits = net(digits.x_test[:7])
        wrapped(digits.x_test[:7])
    for h in hooks:
        h.remove()
    for c in range(10):
        assert torch.equal(seen[c], logits[:, c : c + 1])  # class c's logit, shape (n, 1)


def test_toml_writer_round_trips() -> None:
    import tomllib

    from pipeline.demo.run import _toml

    spec = {
        "output": "jobs/x",
        "measures": ["svcca"],
        "pairs": [["a/conv1", "b/fc1"], ["a/x", "b/y"]],
        "stores": {"net1-035": "../stores/net1-035.zarr"},
        "options": {"keep": 0.99, "conv": "mean"},
    }
    assert tomllib.loads(_toml(spec)) == spec


def test_job_specs_pair_checkpoints_with_the_final_state() -> None:
    import tomllib

    from pipeline.demo.run import _job_specs, _toml

    specs = _job_specs({"net1": ["c1", "fc"], "resnet": ["s", "b1", "logits"]})
    dyn = specs["learning_dynamics"]
    assert len(dyn["pairs"]) == 4 * 2 * 2 + 4 * 3 * 3  # checkpoints x layers x layers, per net
    assert ["net1-035/c1", "net1-100/fc"] in dyn["pairs"]
    assert all(p[1].startswith(("net1-100/", "resnet-100/")) for p in dyn["pairs"])  # vs final
    assert len(dyn["stores"]) == 8 and dyn["options"]["conv"] == "mean"
    cls = specs["class_sensitivity"]
    assert cls["pairs"] == "all" and set(cls["stores"]) == {"net1-100", "classes"}
    assert cls["options"]["conv"] == "dft"  # conv layers against a 1-D target
    assert set(specs["net1_vs_net2"]["stores"]) == {"net1-100", "net2-100"}
    for spec in specs.values():
        assert tomllib.loads(_toml(spec)) == spec  # written as TOML job files


def test_matrix_from_rows_places_scores_and_leaves_gaps() -> None:
    from pipeline.demo.run import _matrix

    rows = [
        {"x_store": "a", "x_layer": "l1", "y_store": "b", "y_layer": "l2", "score": 0.5},
        {"x_store": "a", "x_layer": "l2", "y_store": "b", "y_layer": "l1", "score": 0.25},
        {"x_store": "z", "x_layer": "l1", "y_store": "b", "y_layer": "l1", "score": 0.9},
    ]
    m = _matrix(rows, "a", "b", ["l1", "l2"], ["l1", "l2"])
    np.testing.assert_array_equal(m, [[np.nan, 0.5], [0.25, np.nan]])  # other stores ignored


def test_neuron_check_compares_directions_with_neurons() -> None:
    from pipeline.demo.checks import neuron_check

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((800, 6))
    x = latent @ rng.standard_normal((6, 12))  # two nets: same subspace, other neuron bases
    y = latent @ rng.standard_normal((6, 10))
    c = neuron_check(x, y, sd.svcca(x, y, keep=0.99))
    assert c["holds"]  # directions align perfectly, mixed neurons do not
    assert c["direction_corr"][1] > 0.99 and max(c["neuron_corr_best_match"]) < 0.99
    same = neuron_check(x, x.copy(), sd.svcca(x, x.copy(), keep=0.99))
    assert not same["holds"]  # identical nets: neurons match as well as directions
    np.testing.assert_allclose(same["neuron_corr_same_rank"], 1.0, atol=1e-8)


def _dyn(diagonals: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Learning-dynamics matrices with the given diagonals (per checkpoint) and 0.5 elsewhere."""
    labels = ["0%", "35%", "75%", "100%"]
    out = {}
    for t, label in enumerate(labels):
        m = np.full((len(diagonals), len(diagonals)), 0.5)
        np.fill_diagonal(m, [d[t] for d in diagonals.values()])
        out[label] = m
    return out


def test_convergence_check_needs_a_margin_and_a_first_layer_that_learned() -> None:
    from pipeline.demo.checks import convergence_check

    layers = ["conv1", "conv2", "fc1", "logits"]
    diag = {
        "conv1": [0.89, 0.98, 0.998, 1.0],
        "conv2": [0.68, 0.95, 0.99, 1.0],
        "fc1": [0.52, 0.90, 0.988, 1.0],
        "logits": [0.6, 0.98, 0.998, 1.0],
    }
    c = convergence_check(_dyn(diag), layers, first="conv1", last="fc1")
    assert c["holds"]  # 0.98 leads 0.90 by more than 0.02, and conv1 gained 0.09
    assert c["curves"]["fc1"]["35%"] == 0.90 and "leads by 0.080" in c["text"]
    close = dict(diag, fc1=[0.52, 0.97, 0.99, 1.0])
    assert not convergence_check(_dyn(close), layers, first="conv1", last="fc1")["holds"]
    # a first layer that scores 1 at 0% (affine in the pixels) has learned nothing visible
    trivial = dict(diag, conv1=[1.0, 1.0, 1.0, 1.0])
    assert not convergence_check(_dyn(trivial), layers, first="conv1", last="fc1")["holds"]
    with pytest.raises(ValueError, match="first and last must be two of the layers"):
        convergence_check(_dyn(diag), layers, first="conv1", last="fc9")


def test_cli_has_the_demo_subcommand() -> None:
    from pipeline.cli import build_parser
    from pipeline.demo import DEFAULT_OUT, _demo

    args = build_parser().parse_args(["demo"])
    assert args.handler is _demo and args.out == DEFAULT_OUT and args.freeze_training
    args = build_parser().parse_args(["demo", "--out", "x", "--no-freeze-training"])
    assert args.out == "x" and not args.freeze_training


# --------------------------------------------------------------------------- #
# the whole demo, once: the README's main job, with its defaults


@pytest.mark.slow
def test_demo_end_to_end(tmp_path) -> None:
    import csv
    import json

    import torch

    from pipeline.demo import run_demo
    from pipeline.demo.models import ConvNet, ResNet
    from pipeline.jobs import load_job
    from pipeline.runner import COLUMNS, run_job

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        summary = run_demo(tmp_path / "report", progress=False)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    out = tmp_path / "report"
    html = (out / "index.html").read_text()
    figures = sorted(p.name for p in out.glob("fig*.png"))
    assert len(figures) == 7 and all(f in html for f in figures)  # every figure shown
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["job", *COLUMNS]  # the tidy table
    n_conv, n_res = len(ConvNet.LAYERS), len(ResNet.LAYERS)
    assert len(rows) == 4 * n_conv**2 + 4 * n_res**2 + n_conv**2 + n_conv * 10
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all((scores >= 0) & (scores <= 1 + 1e-9))  # similarities, no NaN
    saved = json.loads((out / "summary.json").read_text())
    assert saved["seconds"]["total"] > 0 and list(saved["schedule"]) == list(ConvNet.LAYERS)
    ft = summary.freeze_training
    assert ft["frozen_gflop"] < ft["normal_gflop"]  # lower layers froze: less backward work
    assert ft["reproduced_net1"]  # training again from the same seeds gives net1 again
    # the paper's findings, on the demo's own output (seeded and deterministic)
    lower = summary.checks["lower_layers_converge_first"]
    assert lower["holds"] and (lower["first"], lower["last"]) == ("conv1", "fc1")
    conv1, fc1 = lower["curves"]["conv1"], lower["curves"]["fc1"]
    assert conv1["35%"] - fc1["35%"] >= 0.02  # the first hidden layer converges first
    assert max(c["0%"] for c in lower["curves"].values()) < 0.95  # 0%: no layer is final yet
    assert min(summary.accuracy.values()) > 0.9  # the slow training still learns the digits
    assert summary.checks["directions_shared"]["holds"]
    assert summary.compression["svcca_accuracy"][-1] > 0.5  # all directions: the net works
    # the job files are real jobs: a rerun finds every result and recomputes nothing
    again = run_job(load_job(out / "jobs" / "net1_vs_net2.toml"), cluster="threads", progress=False)
    assert again.computed == 0 and again.reused == n_conv**2
