"""Activation extraction from PyTorch models into activation stores."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import svcca_dask as sd  # noqa: E402
from pipeline.extract import extract_activations, load_callable, resolve_layers  # noqa: E402
from svcca_dask.store import IncompleteLayerError, open_store  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """torchvision-style names: conv1, layer1.0.conv1, layer3, avgpool, fc."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4, 4))
        self.layer2 = nn.Sequential(Block(4, 6, stride=2))
        self.layer3 = nn.Sequential(Block(6, 8, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.lin(self.lin(x)))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet()


def make_loader(n: int = 40, batch_size: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.arange(n) % 5
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False
    )


LAYERS = ["layer1.0.conv1", "layer3", "fc"]


def reference(model, loader, name):
    """The layer's outputs by a plain forward hook, for comparison."""
    outs = []
    h = dict(model.named_modules())[name].register_forward_hook(
        lambda m, a, o: outs.append(o.detach().clone())
    )
    model.eval()
    with torch.no_grad():
        for xb, _ in loader:
            model(xb)
    h.remove()
    return torch.cat(outs).numpy()


def test_extract_resnet_layers_dims_labels_provenance(tmp_path):
    model, loader = make_model(), make_loader()
    store = extract_activations(model, loader, tmp_path / "a.zarr", layers=LAYERS, progress=False)
    assert model.training  # eval mode during extraction only; the model's mode is restored
    assert store.layer_names() == sorted(LAYERS)
    info = {i.name: i for i in store.layers()}
    assert info["layer1.0.conv1"].shape == (40, 4, 8, 8)
    assert info["layer1.0.conv1"].dims == ("sample", "channel", "height", "width")
    assert info["layer3"].shape == (40, 8, 2, 2)
    assert info["fc"].dims == ("sample", "neuron") and info["fc"].shape == (40, 5)
    assert all(i.complete and i.dtype == "float32" for i in info.values())
    for name in LAYERS:  # exactly what the module computed, in dataset order
        np.testing.assert_allclose(
            store.read(name).data.compute(), reference(model, loader, name), rtol=1e-6, atol=1e-6
        )
    np.testing.assert_array_equal(store.labels().compute(), np.arange(40) % 5)
    prov = open_store(tmp_path / "a.zarr").provenance
    assert prov["model_class"].endswith("TinyResNet") and prov["layers"] == LAYERS
    assert prov["dataset_size"] == 40 and prov["finished"] is True
    assert prov["versions"]["torch"] == torch.__version__
    # the store feeds the measures directly
    assert sd.linear_cka(store.layer_path("fc"), store.layer_path("fc")).score > 0.999


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, monkeypatch):
    model, loader = make_model(), make_loader()
    full = extract_activations(model, loader, tmp_path / "full.zarr", layers=LAYERS, progress=False)

    # crash in the middle of the third batch: after one layer's data is written
    # and before its complete count is bumped
    from svcca_dask.store import ActivationStore

    real_set_meta = ActivationStore._set_meta
    calls = {"n": 0}

    def flaky(self, arr, **items):
        if "complete_samples" in items and items["complete_samples"] == 24:
            calls["n"] += 1
            if calls["n"] == 2:  # second layer of the third batch
                raise KeyboardInterrupt("simulated crash")
        return real_set_meta(self, arr, **items)

    monkeypatch.setattr(ActivationStore, "_set_meta", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_activations(
            model, loader, tmp_path / "b.zarr", layers=LAYERS, chunk_samples=8, progress=False
        )
    monkeypatch.undo()

    crashed = open_store(tmp_path / "b.zarr")
    counts = {n: crashed.complete_samples(n) for n in LAYERS}
    # the interrupted write is done again when the run stops (what was computed is
    # kept); the layer the interrupt came before never got batch 3
    assert sorted(counts.values()) == [16, 24, 24]
    for name in LAYERS:  # every layer is refused while the extraction is unfinished
        with pytest.raises(IncompleteLayerError):
            sd.cca(crashed.layer_path(name), np.zeros((40, 2)))

    # resume: the batches before the common complete count are skipped, not re-run
    forwards = {"n": 0}
    hook = model.register_forward_pre_hook(
        lambda m, a: forwards.__setitem__("n", forwards["n"] + 1)
    )
    resumed = extract_activations(model, loader, tmp_path / "b.zarr", layers=LAYERS, progress=False)
    hook.remove()
    assert forwards["n"] == 3  # batches 3, 4, 5 of 5
    for name in LAYERS:
        np.testing.assert_array_equal(
            resumed.read(name).data.compute(), full.read(name).data.compute()
        )
    np.testing.assert_array_equal(resumed.labels().compute(), full.labels().compute())


def test_resume_with_a_different_batch_size(tmp_path):
    model = make_model()
    loader = make_loader(batch_size=8)
    full = extract_activations(model, loader, tmp_path / "full.zarr", layers=["fc"], progress=False)

    def first_two(it):
        for i, b in enumerate(it):
            if i == 2:
                raise RuntimeError("stop")
            yield b

    with pytest.raises(RuntimeError, match="stop"):
        extract_activations(
            model,
            first_two(loader),
            tmp_path / "b.zarr",
            layers=["fc"],
            chunk_samples=8,
            progress=False,
        )
    assert open_store(tmp_path / "b.zarr").complete_samples("fc") == 16
    # resume with batches of 6: the batch straddling sample 16 is cut
    resumed = extract_activations(
        model, make_loader(batch_size=6), tmp_path / "b.zarr", layers=["fc"], progress=False
    )
    np.testing.assert_allclose(
        resumed.read("fc").data.compute(), full.read("fc").data.compute(), rtol=1e-6, atol=1e-6
    )


def test_batches_reach_the_store_in_whole_chunks(tmp_path, monkeypatch):
    from svcca_dask.store import ActivationStore

    sizes = []
    real = ActivationStore.append

    def spy(self, name, batch, **kw):
        if name == "fc":
            sizes.append(len(batch))
        return real(self, name, batch, **kw)

    monkeypatch.setattr(ActivationStore, "append", spy)
    model, loader = make_model(), make_loader(40, batch_size=6)
    s = extract_activations(
        model, loader, tmp_path / "a.zarr", layers=["fc"], chunk_samples=16, progress=False
    )
    assert sizes == [16, 16, 8]  # batches of 6 buffered into chunks of 16, the rest at the end
    np.testing.assert_allclose(
        s.read("fc").data.compute(), reference(model, loader, "fc"), rtol=1e-6, atol=1e-6
    )
    assert s.info("fc").chunks == (16, 5)


def test_resume_over_shuffled_data_is_refused(tmp_path):
    model, loader = make_model(), make_loader()
    stop = [b for i, b in enumerate(loader) if i < 2]  # a run that stopped after 2 batches
    with pytest.raises(RuntimeError, match="16 samples but the dataset has 40"):
        extract_activations(
            model,
            stop,
            tmp_path / "a.zarr",
            layers=["fc"],
            dataset_size=40,
            chunk_samples=8,
            progress=False,
        )
    shuffled = torch.utils.data.DataLoader(
        loader.dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    with (
        pytest.raises(ValueError, match="first sample differs"),
        pytest.warns(UserWarning, match="shuffles"),
    ):
        extract_activations(model, shuffled, tmp_path / "a.zarr", layers=["fc"], progress=False)
    s = extract_activations(model, loader, tmp_path / "a.zarr", layers=["fc"], progress=False)
    assert s.info("fc").complete  # the same data resumes


def test_float16_and_no_labels(tmp_path):
    model, loader = make_model(), make_loader(16)
    s = extract_activations(
        model,
        loader,
        tmp_path / "h.zarr",
        layers="layer*",
        dtype="float16",
        labels=False,
        progress=False,
    )
    assert s.layer_names() == ["layer1", "layer2", "layer3"]  # a glob pattern
    assert {i.dtype for i in s.layers()} == {"float16"}
    assert s.labels() is None
    np.testing.assert_allclose(
        s.read("layer3").data.compute().astype(np.float32),
        reference(model, loader, "layer3"),
        rtol=2e-3,
        atol=2e-3,
    )


def test_wrong_layer_name_lists_available(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"'layer9' is not a layer of TinyResNet; did you mean 'layer3'.*top-level modules: "
        r"conv1, layer1, layer2, layer3, avgpool, fc .*'layer1\.0'.*'layer1\.\*\*'",
    ):
        extract_activations(make_model(), make_loader(), tmp_path / "a.zarr", layers=["layer9"])
    assert not (tmp_path / "a.zarr").exists()  # checked before a store is made
    with pytest.raises(ValueError, match=r"'layer9\.\*\*' matches no layer .*available"):
        resolve_layers(make_model(), ["layer9.**"])
    assert resolve_layers(make_model(), ["layer2.**"])[0] == "layer2.0"  # ** crosses dots
    assert resolve_layers(make_model(), ["fc", "layer1.0.conv*"]) == [
        "layer1.0.conv1",
        "layer1.0.conv2",
        "fc",
    ]  # model order, patterns expanded


def test_reused_module_refused_or_handled(tmp_path):
    torch.manual_seed(0)
    model = Reused()
    x = torch.randn(12, 4)
    batches = [x[:6], x[6:]]  # plain tensors, no labels
    with pytest.raises(RuntimeError, match=r"called more than once.*reuse="):
        extract_activations(model, batches, tmp_path / "r.zarr", layers=["lin"], progress=False)
    s = extract_activations(
        model, batches, tmp_path / "e.zarr", layers=["lin"], reuse="each", progress=False
    )
    assert s.layer_names() == ["lin.call0", "lin.call1"]
    with torch.no_grad():
        first = model.lin(x)
        second = model.lin(first)
    np.testing.assert_allclose(s.read("lin.call0").data.compute(), first.numpy(), rtol=1e-6)
    np.testing.assert_allclose(s.read("lin.call1").data.compute(), second.numpy(), rtol=1e-6)
    last = extract_activations(
        model, batches, tmp_path / "l.zarr", layers=["lin"], reuse="last", progress=False
    )
    np.testing.assert_allclose(last.read("lin").data.compute(), second.numpy(), rtol=1e-6)


def test_settings_change_is_refused_on_resume(tmp_path):
    model, loader = make_model(), make_loader()
    extract_activations(model, loader, tmp_path / "a.zarr", layers=["fc"], progress=False)
    with pytest.raises(ValueError, match=r"dtype='float32', not 'float16'.*overwrite"):
        extract_activations(
            model, loader, tmp_path / "a.zarr", layers=["fc"], dtype="float16", progress=False
        )
    s = extract_activations(
        model,
        loader,
        tmp_path / "a.zarr",
        layers=["fc"],
        dtype="float16",
        overwrite=True,
        progress=False,
    )
    assert s.info("fc").dtype == "float16"


def test_short_dataset_is_an_error(tmp_path):
    loader = make_loader()
    short = [b for i, b in enumerate(loader) if i < 2]
    with pytest.raises(RuntimeError, match="16 samples but the dataset has 40"):
        extract_activations(
            make_model(),
            short,
            tmp_path / "a.zarr",
            layers=["fc"],
            dataset_size=40,
            progress=False,
        )
    with pytest.raises(IncompleteLayerError):
        open_store(tmp_path / "a.zarr").read("fc")


def test_progress_per_batch(tmp_path, capsys):
    extract_activations(
        make_model(), make_loader(), tmp_path / "a.zarr", layers=["fc"], progress=True
    )
    assert "5/5" in capsys.readouterr().err  # one step per batch
    extract_activations(make_model(), make_loader(), tmp_path / "b.zarr", layers=["fc"])
    assert capsys.readouterr().err == ""  # stderr is no terminal here: quiet unless asked


def test_load_callable(tmp_path):
    f = tmp_path / "models_mod.py"
    f.write_text("def build():\n    return 42\n")
    assert load_callable(f"{f}:build")() == 42
    assert load_callable("numpy:zeros") is np.zeros
    with pytest.raises(ValueError, match="module:callable"):
        load_callable("numpy.zeros")
    with pytest.raises(ValueError, match="no callable 'nope'"):
        load_callable(f"{f}:nope")


def test_numpy_batches(tmp_path):
    model, loader = make_model(), make_loader(16)
    batches = [(xb.numpy(), yb.numpy()) for xb, yb in loader]  # NumPy inputs and labels
    s = extract_activations(model, batches, tmp_path / "n.zarr", layers=["fc"], progress=False)
    np.testing.assert_allclose(
        s.read("fc").data.compute(), reference(model, loader, "fc"), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(s.labels().compute(), np.arange(16) % 5)


class _Interrupted:
    """The batches of ``loader``, with Ctrl-C when batch ``at`` (0-based) is asked for."""

    def __init__(self, loader, at):
        self.loader, self.at, self.dataset = loader, at, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.at:
                raise KeyboardInterrupt("Ctrl-C")
            yield batch


def test_ctrl_c_keeps_the_batches_done_and_the_rerun_resumes_after_them(tmp_path, caplog):
    import logging

    model, loader = make_model(), make_loader(n=40, batch_size=4)  # 10 batches
    full = extract_activations(model, loader, tmp_path / "full.zarr", layers=LAYERS, progress=False)
    assert full.info("fc").chunks[0] == 40  # chunks no larger than the dataset
    with pytest.raises(KeyboardInterrupt):  # every layer's chunk is the whole dataset: still
        extract_activations(  # buffered when Ctrl-C comes at batch 6 of 10
            model, _Interrupted(loader, 6), tmp_path / "b.zarr", layers=LAYERS, progress=False
        )
    crashed = open_store(tmp_path / "b.zarr")
    assert {crashed.complete_samples(n) for n in LAYERS} == {24}  # six batches kept
    forwards = {"n": 0}
    hook = model.register_forward_pre_hook(
        lambda m, a: forwards.__setitem__("n", forwards["n"] + 1)
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.extract"):
        resumed = extract_activations(
            model, loader, tmp_path / "b.zarr", layers=LAYERS, progress=False
        )
    hook.remove()
    assert forwards["n"] == 4  # batches 7 to 10 only
    assert "resuming" in caplog.text and "after the 24 samples" in caplog.text  # it says where
    for name in [*LAYERS, "labels"]:
        np.testing.assert_array_equal(
            resumed.read(name).data.compute(), full.read(name).data.compute()
        )


def test_a_failed_start_leaves_no_store(tmp_path):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("the model is broken")

    with pytest.raises(RuntimeError, match="broken"):
        extract_activations(
            Broken(), [torch.zeros(3, 4)], tmp_path / "c.zarr", layers=["fc"], progress=False
        )
    assert not (tmp_path / "c.zarr").exists()


class _TokenModel(nn.Module):
    """A Hugging Face style model: keyword inputs, (batch, tokens, hidden) outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.lin = nn.Linear(8, 6)

    def forward(self, input_ids, attention_mask):
        return self.lin(torch.tanh(self.emb(input_ids))) * attention_mask[..., None]


def _token_batches(n=48, t=7, batch=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return [
        {
            "input_ids": ids[i : i + batch],
            "attention_mask": mask[i : i + batch],
            "labels": torch.arange(i, i + batch) % 3,
        }
        for i in range(0, n, batch)
    ], mask.bool().numpy()


def test_token_batches_store_the_attention_mask_and_token_dims(tmp_path):
    batches, mask = _token_batches()
    path = tmp_path / "tok.zarr"
    s = extract_activations(_TokenModel(), batches, path, layers=["emb", "lin"], progress=False)
    assert s.layer_names() == ["emb", "lin"]  # the mask is not a layer
    np.testing.assert_array_equal(s.read("attention_mask").data.compute(), mask)
    emb = s.read("emb").data.compute()
    lin = s.read("lin").data.compute()
    assert s.info("emb").dims == ("sample", "token", "feature")
    got = sd.cca(f"{path}/emb", f"{path}/lin", conv="samples", mask=f"{path}/attention_mask")
    want = sd.cca(emb[mask], lin[mask])
    np.testing.assert_allclose(got.coefficients, want.coefficients, atol=1e-10)
    np.testing.assert_array_equal(s.labels().compute(), np.arange(48) % 3)


# --------------------------------------------------------------------------- #
# the data order (issue 24): rows that line up, or a clear refusal


class _Ids(torch.utils.data.Dataset):
    """Images with their index under 'idx', as many datasets yield them."""

    def __init__(self, n: int = 40) -> None:
        self.x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"input": self.x[i], "idx": i}


def test_stores_extracted_in_different_orders_are_refused_and_the_same_order_accepted(tmp_path):
    data = _Ids()
    model = make_model()
    plain = torch.utils.data.DataLoader(data, batch_size=8)
    extract_activations(model, plain, tmp_path / "a.zarr", layers=["fc"], labels=False)
    extract_activations(model, plain, tmp_path / "b.zarr", layers=["fc"], labels=False)
    shuffled = torch.utils.data.DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    with pytest.warns(UserWarning, match=r"DataLoader shuffles"):
        extract_activations(model, shuffled, tmp_path / "s.zarr", layers=["fc"], labels=False)
    a, b, s = (str(tmp_path / f"{n}.zarr/fc") for n in "abs")
    assert sd.linear_cka(a, b).score == pytest.approx(1.0)  # the same order: compared
    ids = open_store(tmp_path / "s.zarr").read("sample_id").data.compute()
    assert sorted(ids) == list(range(40)) and list(ids) != list(range(40))  # the ids it saw
    with pytest.raises(sd.RowOrderError, match=r"row \d+ is sample \d+ in .*s\.zarr"):
        sd.linear_cka(a, s)  # ids compared inside the pass, naming the row
    assert sd.linear_cka(a, s, rows="trust").score < 0.99  # said, not checked: a wrong number
    # without ids, the order digests refuse it before any pass
    no_ids = [(x["input"], 0) for x in data]
    extract_activations(
        model,
        torch.utils.data.DataLoader(no_ids, batch_size=8),
        tmp_path / "c.zarr",
        layers=["fc"],
        labels=False,
    )
    rev = torch.utils.data.DataLoader(no_ids[::-1], batch_size=8)
    extract_activations(model, rev, tmp_path / "d.zarr", layers=["fc"], labels=False)
    with pytest.raises(
        sd.RowOrderError,
        match=r"different data orders: their rows first differ in the batch starting at row 0",
    ):
        sd.svcca(str(tmp_path / "c.zarr/fc"), str(tmp_path / "d.zarr/fc"))
    m = sd.similarity_matrix({"a": a, "b": b}, measure="cka")  # matrices check too
    assert m.scores[0, 1] == pytest.approx(1.0)
    with pytest.raises(sd.RowOrderError):
        sd.similarity_matrix({"a": a, "s": s}, measure="cka")


def test_float16_extraction_refuses_values_it_cannot_hold(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e5)
    loader = [(torch.ones(5, 4), torch.zeros(5))]
    with pytest.raises(ValueError, match=r"layer '0' has values up to 400000.*dtype='float32'"):
        extract_activations(model, loader, tmp_path / "h.zarr", layers=["0"], dtype="float16")


def test_a_model_fed_bfloat16_inputs_is_extracted(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16)
    x = torch.randn(16, 4).to(torch.bfloat16)
    extract_activations(
        model, [(x[:8], torch.zeros(8)), (x[8:], torch.zeros(8))], tmp_path / "b.zarr", layers=["0"]
    )
    got = sd.read_layer(str(tmp_path / "b.zarr"), "0").data.compute()
    np.testing.assert_allclose(got, model(x).float().detach().numpy())
