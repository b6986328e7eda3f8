"""Progress that tracks the work: the DFT's per-frequency phase a pass of its
own (its own bar), the runner's bar advancing as a matrix's pairs finish."""

from __future__ import annotations

import contextlib

import numpy as np
from dask.callbacks import Callback

import pipeline.runner as runner
import svcca_dask as sd
from pipeline.jobs import parse_job
from svcca_dask.store import create_store


class _Passes(Callback):
    """Records each ``compute``'s task names (the first part of each key)."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def _start(self, dsk):
        self.events.append(set())

    def _posttask(self, key, result, dsk, state, id):
        name = key[0] if isinstance(key, tuple) else key
        self.events[-1].add(str(name).rsplit("-", 1)[0].split("-")[0])


def test_dft_per_frequency_phase_is_a_pass_of_its_own():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6, 5, 5))
    y = rng.standard_normal((96, 4, 5, 5))
    for measure, kw in ((sd.cca, {}), (sd.svcca, {"keep": 3}), (sd.linear_cka, {})):
        passes: list[set] = []
        with _Passes(passes):
            measure(x, y, conv=sd.DFT(rows=8), layout="NCHW", **kw)
        folds = [p for p in passes if "dft_fold" in p]
        blocks = [p for p in passes if "_block_apply" in p]
        assert folds and blocks, passes
        assert not any("dft_fold" in p and "_block_apply" in p for p in passes)
        assert passes.index(blocks[0]) > passes.index(folds[0])


def test_run_bar_advances_as_a_matrix_finishes_its_pairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        s = create_store(tmp_path / f"{name}.zarr")
        for i in range(4):
            s.append(f"l{i}", rng.standard_normal((120, 4)))
    job = parse_job(
        {
            "output": "out",
            "stores": {"a": "a.zarr", "b": "b.zarr"},
            "measures": ["cka"],
            "pairs": "all",
            "cluster": "threads",
        },
        base_dir=str(tmp_path),
    )
    events: list = []
    real = sd.similarity_matrices

    def narrow(*a, **kw):  # tiles of two layers: several tile rows, one pass each
        return real(*a, max_width=8, **kw)

    class Bar:
        def update(self, k):
            if k:
                events.append(("bar", k))

    monkeypatch.setattr(sd, "similarity_matrices", narrow)
    monkeypatch.setattr(runner, "progress_bar", lambda *a, **k: contextlib.nullcontext(Bar()))
    passes: list[set] = []

    class Marks(_Passes):
        def _start(self, dsk):
            super()._start(dsk)
            events.append("pass")

    with Marks(passes):
        report = runner.run_job(job, progress=False)
    assert report.computed == 16
    steps = [e[1] for e in events if e != "pass"]
    assert sum(steps) == 16 and len(steps) > 1
    last_pass = len(events) - 1 - events[::-1].index("pass")
    first_step = next(i for i, e in enumerate(events) if e != "pass")
    assert first_step < last_pass  # the bar moved before the matrix's last pass
