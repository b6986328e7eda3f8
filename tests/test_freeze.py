"""Freeze Training: the schedule from convergence curves, and training with it."""

from __future__ import annotations

import pytest
import torch

from pipeline.analysis import freeze_schedule
from pipeline.demo.models import build_model, load_digits, set_determinism, train

LAYERS = ("a", "b", "c", "d")


def test_schedule_first_checkpoint_above_threshold() -> None:
    conv = {
        "a": {0.0: 0.2, 0.35: 0.95, 0.75: 0.99, 1.0: 1.0},
        "b": {0.0: 0.1, 0.35: 0.80, 0.75: 0.97, 1.0: 1.0},
        "c": {0.0: 0.1, 0.35: 0.50, 0.75: 0.70, 1.0: 1.0},
        "d": {0.0: 0.0, 0.35: 0.99, 0.75: 0.99, 1.0: 1.0},
    }
    s = freeze_schedule(conv, layers=LAYERS, threshold=0.9)
    assert s["a"] == 0.35  # first checkpoint at or above 0.9
    assert s["b"] == 0.75
    assert s["c"] is None  # never converges before the end: trains throughout
    assert s["d"] is None  # the top layer always trains (trainable_last=1)
    assert list(s) == list(LAYERS)  # keys in layer order


def test_schedule_freezes_bottom_up() -> None:
    conv = {
        "a": {0.35: 0.5, 0.75: 0.95},
        "b": {0.35: 0.95, 0.75: 0.99},  # converged before the layer below it
        "c": {0.35: 0.2, 0.75: 0.3},
        "d": {0.35: 0.99, 0.75: 0.99},
    }
    s = freeze_schedule(conv, layers=LAYERS, threshold=0.9, trainable_last=0)
    assert s["b"] == 0.75  # not before "a": its input would still be changing
    assert s["c"] is None
    assert s["d"] is None  # a layer below trains to the end: nothing above freezes
    times = [t for t in s.values() if t is not None]
    assert times == sorted(times)  # freeze times never decrease with depth


def test_schedule_ignores_start_and_final_state_and_honours_threshold() -> None:
    conv = {name: {0.0: 1.0, 0.35: 0.8, 1.0: 1.0} for name in LAYERS}
    assert all(v is None for v in freeze_schedule(conv, layers=LAYERS, threshold=0.9).values())
    low = freeze_schedule(conv, layers=LAYERS, threshold=0.8, trainable_last=2)
    assert low == {"a": 0.35, "b": 0.35, "c": None, "d": None}


def test_schedule_errors() -> None:
    conv = {name: {0.35: 0.9} for name in LAYERS}
    with pytest.raises(ValueError, match="threshold"):
        freeze_schedule(conv, layers=LAYERS, threshold=1.5)
    with pytest.raises(ValueError, match=r"no convergence curve.*'e'"):
        freeze_schedule(conv, layers=(*LAYERS, "e"), threshold=0.9)


@pytest.fixture(scope="module")
def digits():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    set_determinism(threads=1)
    yield load_digits()
    torch.set_num_threads(threads)  # leave the process as we found it
    torch.use_deterministic_algorithms(deterministic)


def test_training_with_schedule_freezes_layers_and_saves_compute(digits) -> None:
    schedule = {"conv1": 0.25, "conv2": 0.5, "conv3": None}
    normal = train(build_model("convnet", seed=0), digits, epochs=2, seed=0)
    model = build_model("convnet", seed=0)
    frozen = train(model, digits, epochs=2, seed=0, schedule=schedule)
    steps = 2 * -(-digits.x_train.shape[0] // 64)
    assert frozen.frozen_at_step == {"conv1": round(0.25 * steps), "conv2": round(0.5 * steps)}
    # the conv1 block (conv, batch norm, relu) stopped training at 25%: its state at
    # 35% and 100% is that of 25%, batch-norm statistics included
    at35, at100 = frozen.checkpoints[0.35], frozen.checkpoints[1.0]
    assert torch.equal(at35["conv1.0.weight"], at100["conv1.0.weight"])
    assert torch.equal(at35["conv1.1.running_mean"], at100["conv1.1.running_mean"])
    assert not torch.equal(at35["conv2.0.weight"], at100["conv2.0.weight"])  # until 50%
    assert not torch.equal(at35["conv3.0.weight"], at100["conv3.0.weight"])  # None: trains
    assert not torch.equal(at35["fc1.0.weight"], at100["fc1.0.weight"])  # upper layers train
    assert frozen.compute_gflop < normal.compute_gflop  # no backward through frozen bottom
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable
    assert 0.0 <= frozen.test_accuracy <= 1.0


def test_training_is_reproducible_and_keeps_checkpoints(digits) -> None:
    a = train(build_model("resnet", seed=3), digits, epochs=1, seed=5, checkpoints=(0.0, 0.5, 1.0))
    b = train(build_model("resnet", seed=3), digits, epochs=1, seed=5, checkpoints=(0.0, 0.5, 1.0))
    assert sorted(a.checkpoints) == [0.0, 0.5, 1.0]
    for key, value in a.checkpoints[1.0].items():
        assert torch.equal(value, b.checkpoints[1.0][key]), key  # same seeds, same weights
    assert not torch.equal(
        a.checkpoints[0.0]["stem.0.weight"], a.checkpoints[1.0]["stem.0.weight"]
    )  # it trained
    with pytest.raises(ValueError, match="unknown layer"):
        train(build_model("resnet", seed=3), digits, epochs=1, schedule={"fc9": 0.5})
    with pytest.raises(ValueError, match="momentum"):
        train(build_model("resnet", seed=3), digits, epochs=1, momentum=-0.5)


def test_flops_count_each_block_once_and_scale_with_spatial_size(digits) -> None:
    from pipeline.demo.models import _layer_flops

    net = build_model("convnet", seed=0)
    flops = _layer_flops(net, digits.x_train)
    assert list(flops) == ["conv1", "conv2", "conv3", "fc1", "logits"]
    # conv1 block: 3x3 conv 1 -> 16 channels (2 flops per multiply-add) plus batch norm
    # (4 per channel), at each of the 8 x 8 positions
    assert flops["conv1"] == (2 * 9 * 1 * 16 + 4 * 16) * 64
    assert flops["conv3"] == (2 * 9 * 32 * 32 + 4 * 32) * 16  # after the 2x2 max pool
    assert flops["fc1"] == 2 * 512 * 64 and flops["logits"] == 2 * 64 * 10
