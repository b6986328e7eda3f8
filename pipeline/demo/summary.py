"""The demo's settings and what it measured (:class:`DemoSummary`, also ``summary.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import DEFAULT_THRESHOLD  # Freeze Training: the rule of svcca-dask freeze

__all__ = ["DEFAULT_OUT", "DEFAULT_THRESHOLD", "DENSE_LAYER", "NETS", "DemoSummary"]

#: Report folder when ``--out`` is not given.
DEFAULT_OUT = "demo-out"


#: The nets the demo trains: name -> (architecture, seed).
NETS: dict[str, tuple[str, int]] = {
    "net1": ("convnet", 1),
    "net2": ("convnet", 2),
    "resnet": ("resnet", 3),
}


#: Dense layer used for the neurons-vs-directions figure, the spectrum and compression.
DENSE_LAYER = "fc1"


#: Reduction of conv layers in the layer x layer heatmaps (conv against dense
#: layers too, so one feature map per layer: one pass per matrix).
CONV_HEATMAP = "mean"


#: Reduction of conv layers against the 1-D class logits (the paper's DFT method).
CONV_CLASSES = "dft"


@dataclass
class DemoSummary:
    """What :func:`run_demo` measured (also written to ``summary.json``).

    Attributes
    ----------
    out : str
        The report folder.
    seconds : dict of str -> float
        Wall time of each stage and ``"total"``.
    accuracy : dict of str -> float
        Test accuracy of each trained net.
    checks : dict of str -> dict
        The acceptance checks: the numbers compared and whether they hold.
    schedule : dict of str -> float or None
        The Freeze Training schedule (fraction of training after which each
        layer of net1 freezes; None: trains to the end).
    freeze_training : dict or None
        Accuracy, compute and time of normal vs frozen training.
    compression : dict
        ``k`` and test accuracy with ``fc1`` projected on its top-k directions.
    """

    out: str
    seconds: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: dict[str, float | None] = field(default_factory=dict)
    freeze_training: dict[str, Any] | None = None
    compression: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """A few lines for the terminal."""
        lines = [f"report: {Path(self.out) / 'index.html'}"]
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        lines.append(
            "test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in self.accuracy.items())
        )
        for name, c in self.checks.items():
            lines.append(f"check {name}: {'holds' if c['holds'] else 'FAILS'} ({c['text']})")
        if self.freeze_training:
            f = self.freeze_training
            lines.append(
                f"freeze training: accuracy {f['frozen_accuracy']:.3f} vs {f['normal_accuracy']:.3f}, "
                f"compute {f['frozen_gflop']:.1f} vs {f['normal_gflop']:.1f} GFLOP "
                f"({100 * f['frozen_gflop'] / f['normal_gflop']:.0f}%)"
            )
        return "\n".join(lines)
