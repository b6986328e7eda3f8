"""Small networks for the demo: data, training with checkpoints, Freeze Training, compression.

Everything here runs on CPU in seconds on scikit-learn's 8 x 8 digits:

- :func:`load_digits` splits the 1797 digits into a training and a test set
  (stratified, reproducible) as ``(n, 1, 8, 8)`` float32 tensors in [0, 1].
- :class:`ConvNet` (three conv -> batch norm -> relu blocks, one hidden dense
  layer, logits) and :class:`ResNet` (a stem and three residual blocks) name
  the layers the demo extracts in ``LAYERS`` (input to output), each hidden
  layer taken after its nonlinearity.
- :func:`train` trains with plain SGD at a small constant learning rate (so
  that the layers converge gradually over the checkpoints), keeps checkpoints
  (state dicts) at fractions of training, and optionally follows a Freeze
  Training schedule (lower layers stop training once they have converged,
  Raghu et al. 2017).
- The schedule itself comes from :func:`pipeline.analysis.freeze_schedule`
  (per-layer convergence curves from the learning-dynamics job), the code
  ``svcca-dask freeze`` uses.
- :func:`accuracy_with_projection` runs a network with one layer's output
  replaced by ``mean + (out - mean) @ P`` for a projection matrix ``P`` that
  comes from :mod:`svcca_dask` (this module does no similarity math).

Determinism: every function that draws random numbers takes a ``seed`` and
uses its own :class:`torch.Generator`; :func:`set_determinism` sets the
global switches (deterministic algorithms, thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CHECKPOINTS",
    "ConvNet",
    "Digits",
    "ResNet",
    "TrainResult",
    "accuracy",
    "accuracy_with_projection",
    "build_model",
    "layer_names",
    "load_digits",
    "set_determinism",
    "train",
]

#: Fractions of training at which :func:`train` keeps a checkpoint by default.
CHECKPOINTS: tuple[float, ...] = (0.0, 0.35, 0.75, 1.0)


def set_determinism(*, threads: int = 2) -> None:
    """Deterministic PyTorch on CPU with ``threads`` intra-op threads.

    Parameters
    ----------
    threads : int, default 2
        Intra-op threads for PyTorch (the demo machine has 2 cores; more only
        oversubscribes them).
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- #
# data


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8 x 8 digits, split and scaled to [0, 1].

    Attributes
    ----------
    x_train, x_test : Tensor, shape (n, 1, 8, 8), float32
    y_train, y_test : Tensor, shape (n,), int64
        Class labels 0-9. The training set is sorted by class (then by
        original index), so activations of it come out grouped by class.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        return 10


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """Load scikit-learn's digits as a stratified training/test split.

    Parameters
    ----------
    test_fraction : float, default 0.2
        Fraction of each class held out for testing.
    seed : int, default 0
        Seed of the split.

    Returns
    -------
    Digits
        Training set sorted by class (stable), test set in random order.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = _sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    order = np.argsort(y_tr, kind="stable")
    return Digits(
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr[order])),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr[order])),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
    )


# --------------------------------------------------------------------------- #
# models


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """``conv 3x3 -> batch norm -> relu``: one extracted layer, its output after the ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class ConvNet(nn.Module):
    """A small conv net for 8 x 8 digits.

    ``conv1 -> conv2 -> maxpool(2) -> conv3 -> flatten -> fc1 -> logits``, where
    each ``conv<i>`` is a block ``conv 3x3 -> batch norm -> relu`` and ``fc1`` is
    ``linear -> relu``. The layers named in :attr:`LAYERS` are those modules, so
    their activations are taken after the nonlinearity: a layer before it (a
    conv or its batch norm) is an affine map of the layer below, and for the
    first conv layer an affine map of the pixels, which CCA (invariant to
    invertible linear maps) scores as equal to its final state at every
    checkpoint.

    Parameters
    ----------
    width : int, default 16
        Channels of conv1; conv2 and conv3 have twice as many.
    hidden : int, default 64
        Neurons of fc1.
    n_classes : int, default 10
    """

    #: Layers the demo extracts, input to output (each one's output after its ReLU).
    LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc1", "logits")

    def __init__(self, *, width: int = 16, hidden: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv_block(1, width)
        self.conv2 = _conv_block(width, 2 * width)
        self.conv3 = _conv_block(2 * width, 2 * width)
        self.fc1 = nn.Sequential(nn.Linear(2 * width * 4 * 4, hidden), nn.ReLU())
        self.logits = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv2(self.conv1(x)), 2)
        x = self.fc1(torch.flatten(self.conv3(x), 1))
        return self.logits(x)


class _Block(nn.Module):
    """Residual block ``relu(x' + bn(conv(relu(bn(conv(x))))))``, ``x'`` a 1x1 projection if shapes differ."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(c_out)
        self.conv_b = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn_a(self.conv_a(x)))
        return F.relu(self.skip(x) + self.bn_b(self.conv_b(h)))


class ResNet(nn.Module):
    """A small residual net for 8 x 8 digits.

    ``stem -> block1 (w) -> block2 (2w, stride 2) -> block3 (2w) -> global
    average pool -> logits``, the stem being ``conv 3x3 -> batch norm -> relu``.
    :attr:`LAYERS` names the stem, each residual block and the logits: every
    hidden layer's output is taken after its ReLU (see :class:`ConvNet`).

    Parameters
    ----------
    width : int, default 16
    n_classes : int, default 10
    """

    LAYERS: tuple[str, ...] = ("stem", "block1", "block2", "block3", "logits")

    def __init__(self, *, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = _Block(width, width)
        self.block2 = _Block(width, 2 * width, stride=2)
        self.block3 = _Block(2 * width, 2 * width)
        self.logits = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.logits(x.mean(dim=(2, 3)))


_ARCHITECTURES: dict[str, type[nn.Module]] = {"convnet": ConvNet, "resnet": ResNet}


def build_model(arch: str, *, seed: int) -> nn.Module:
    """A freshly initialized ``"convnet"`` or ``"resnet"``, its weights drawn from ``seed``."""
    if arch not in _ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(_ARCHITECTURES)}, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _ARCHITECTURES[arch]()


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """The extracted layers of a demo model, input to output."""
    names = getattr(model, "LAYERS", None)
    if names is None:
        raise TypeError(f"{type(model).__name__} has no LAYERS: use ConvNet or ResNet")
    return tuple(names)


def _module_groups(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules whose parameters belong to each extracted layer."""
    return {name: [model.get_submodule(name)] for name in layer_names(model)}


# --------------------------------------------------------------------------- #
# training


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    checkpoints : dict of float -> state dict
        Model state at each requested fraction of training.
    test_accuracy : float
        Accuracy of the final model on the test set.
    seconds : float
        Wall time of the training loop.
    compute_gflop : float
        Estimated training compute: forward FLOPs of every layer, plus for the
        backward pass twice the forward FLOPs of each trainable layer, once
        those of each frozen layer that gradients still pass through, and
        nothing for the frozen layers below the lowest trainable one.
    losses : list of float
        Mean training loss per epoch.
    frozen_at_step : dict of str -> int
        Step at which each frozen layer stopped training.
    """

    checkpoints: dict[float, dict[str, torch.Tensor]]
    test_accuracy: float
    seconds: float
    compute_gflop: float
    losses: list[float] = field(default_factory=list)
    frozen_at_step: dict[str, int] = field(default_factory=dict)


def _layer_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per sample of each extracted layer's modules (multiply-adds count 2)."""
    flops: dict[str, float] = {}
    handles = []

    def counter(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            total = 0.0
            for sub in mod.modules():
                if isinstance(sub, nn.Conv2d):
                    k = sub.kernel_size[0] * sub.kernel_size[1] * sub.in_channels // sub.groups
                    total += 2.0 * k * sub.out_channels  # per output position, scaled below
                elif isinstance(sub, nn.Linear):
                    total += 2.0 * sub.in_features * sub.out_features
                elif isinstance(sub, nn.BatchNorm2d):
                    total += 4.0 * sub.num_features
            spatial = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
            flops[name] = total * spatial

        return hook

    for name in layer_names(model):
        handles.append(model.get_submodule(name).register_forward_hook(counter(name)))
    try:
        with torch.no_grad():
            model.eval()
            model(x[:2])
    finally:
        for h in handles:
            h.remove()
    return flops


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(dim=1) == y).float().mean())
    model.train(was_training)
    return acc


def train(
    model: nn.Module,
    data: Digits,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    checkpoints: Sequence[float] = CHECKPOINTS,
    schedule: Mapping[str, float | None] | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD at a constant learning rate.

    The defaults (plain SGD, learning rate 0.01, 12 epochs) learn the digits
    gradually: the layers converge over the whole run, lower ones first, as
    in the learning-dynamics figure of Raghu et al. (2017). With momentum 0.9
    and a larger, annealed learning rate the same nets reach the same
    accuracy, but every layer has settled before 35% of training and the
    checkpoints show little.

    Parameters
    ----------
    model : ConvNet or ResNet
    data : Digits
    epochs : int, default 12
    batch_size : int, default 64
    lr : float, default 0.01
        Learning rate, constant over training.
    momentum, weight_decay : float, default 0
        Of :class:`torch.optim.SGD`.
    seed : int, default 0
        Seed of the batch order.
    checkpoints : sequence of float, default CHECKPOINTS
        Fractions of training (in [0, 1]) at which to keep the state dict;
        fraction ``f`` is taken after ``round(f * total_steps)`` steps.
    schedule : mapping of layer -> fraction or None, optional
        A Freeze Training schedule (see :func:`pipeline.analysis.freeze_schedule`): after
        ``round(fraction * total_steps)`` steps the layer's parameters stop
        training and its batch norm statistics freeze. ``None`` trains all.

    Returns
    -------
    TrainResult
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if lr <= 0.0 or momentum < 0.0 or weight_decay < 0.0:
        raise ValueError(
            f"lr must be positive and momentum, weight_decay non-negative, got lr={lr}, "
            f"momentum={momentum}, weight_decay={weight_decay}"
        )
    bad = [f for f in checkpoints if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"checkpoint fractions must be in [0, 1], got {bad}")
    layers = layer_names(model)
    groups = _module_groups(model)
    schedule = dict(schedule or {})
    unknown = sorted(set(schedule) - set(layers))
    if unknown:
        raise ValueError(f"schedule names unknown layer(s) {unknown}; layers are {list(layers)}")

    n = data.x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    ckpt_steps = {round(f * total): float(f) for f in checkpoints}
    freeze_steps = {name: round(f * total) for name, f in schedule.items() if f is not None}
    flops = _layer_flops(model, data.x_train)

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    frozen: set[str] = set()
    frozen_at: dict[str, int] = {}
    kept: dict[float, dict[str, torch.Tensor]] = {}
    losses: list[float] = []
    compute = 0.0

    def keep(step: int) -> None:
        if step in ckpt_steps:
            kept[ckpt_steps[step]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def freeze(step: int) -> None:
        for name, at in freeze_steps.items():
            if name not in frozen and step >= at:
                frozen.add(name)
                frozen_at[name] = step
                for mod in groups[name]:
                    mod.eval()
                    for p in mod.parameters():
                        p.requires_grad_(False)

    def step_flops(batch: int) -> float:
        lowest = next((i for i, name in enumerate(layers) if name not in frozen), len(layers))
        total_f = 0.0
        for i, name in enumerate(layers):
            f = flops[name]
            if name not in frozen:
                total_f += 3.0 * f
            elif i > lowest:
                total_f += 2.0 * f
            else:
                total_f += f
        return total_f * batch

    start = time.perf_counter()
    step = 0
    model.train()
    keep(0)
    freeze(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            compute += step_flops(len(idx))
            epoch_loss += float(loss.detach()) * len(idx)
            step += 1
            keep(step)
            freeze(step)
        losses.append(epoch_loss / n)
    seconds = time.perf_counter() - start
    for name in frozen:
        for mod in groups[name]:
            for p in mod.parameters():
                p.requires_grad_(True)
    model.eval()
    return TrainResult(
        checkpoints=kept,
        test_accuracy=accuracy(model, data.x_test, data.y_test),
        seconds=seconds,
        compute_gflop=compute / 1e9,
        losses=losses,
        frozen_at_step=frozen_at,
    )


# --------------------------------------------------------------------------- #
# compression


def accuracy_with_projection(
    model: nn.Module,
    layer: str,
    projection: np.ndarray,
    mean: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Accuracy of ``model`` with one dense layer's output replaced by its projection.

    The output ``h`` (shape ``(n, d)``) of ``layer`` becomes
    ``mean + (h - mean) @ projection`` before the rest of the network runs.

    Parameters
    ----------
    model : nn.Module
    layer : str
        A module whose output is ``(n, d)`` (e.g. ``"fc1"``).
    projection : ndarray, shape (d, d)
        E.g. :meth:`svcca_dask.CCAResult.projection` for the top-k directions.
    mean : ndarray, shape (d,)
        The layer's mean activation (the result's ``x_mean``).
    x, y : Tensor
        Inputs and labels to score.

    Returns
    -------
    float
    """
    p = torch.as_tensor(np.asarray(projection), dtype=torch.float32)
    m = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or m.shape != (p.shape[0],):
        raise ValueError(
            f"projection must be (d, d) and mean (d,), got {tuple(p.shape)} and {tuple(m.shape)}"
        )

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 2 or out.shape[1] != p.shape[0]:
            raise ValueError(
                f"layer {layer!r} outputs shape {tuple(out.shape)}; the projection is for "
                f"(n, {p.shape[0]}) outputs"
            )
        return m + (out - m) @ p

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        return accuracy(model, x, y)
    finally:
        handle.remove()
