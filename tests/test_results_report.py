"""Reports and Freeze Training schedules of the user's own results folders.

A training run is simulated: checkpoints appear between reruns of one job
(``against = "last"``); each rerun computes only the new pairs, the report
follows the newest reference, and ``svcca-dask freeze`` reads the schedule off
the table.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.analysis import checkpoint_set, freeze_plan, load_results
from pipeline.cli import main
from pipeline.results_report import write_results_report
from svcca_dask.store import create_store

N = 300
CONVERGED_AT = {"l1": 200, "l2": 400, "l3": None}  # l3 changes at every step


def _trajectory(tmp_path, steps):
    """Checkpoint stores ``ckpt/step-<s>.zarr`` whose layers stop changing (up to a
    rotation, which SVCCA's SVD step and CCA both ignore) from ``CONVERGED_AT``:
    bottom-up convergence."""
    base = {k: np.random.default_rng(i).standard_normal((N, 5)) for i, k in enumerate(CONVERGED_AT)}
    rng = np.random.default_rng(steps[0])
    for s in steps:
        store = create_store(tmp_path / "ckpt" / f"step-{s}.zarr")
        for layer, at in CONVERGED_AT.items():
            rotation = np.linalg.qr(rng.standard_normal((5, 5)))[0]  # the same representation
            x = base[layer] @ rotation
            if at is None or s < at:
                x = x + rng.standard_normal((N, 5))  # still moving
            store.append(layer, x)


def _job(tmp_path, **extra):
    text = "\n".join(
        [
            'output = "results"',
            'against = "last"',
            'pairs = "all"',
            'measures = ["svcca"]',
            'cluster = "threads"',
            *extra.get("lines", []),
            "[stores]",
            'ckpt = "ckpt/step-*.zarr"',
        ]
    )
    path = tmp_path / "job.toml"
    path.write_text(text + "\n")
    return str(path)


def test_training_goes_on_reruns_compute_new_pairs_and_the_report_follows(tmp_path, capsys):
    _trajectory(tmp_path, (100, 200, 300))
    job = _job(tmp_path)
    assert main(["run", job, "--report", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "27 result(s) computed, 0 reused" in first  # 3 checkpoints x 3 x 3 layers
    page = (tmp_path / "results" / "report" / "index.html").read_text()
    assert "against step-300" in page

    _trajectory(tmp_path, (400, 500))
    assert main(["run", job, "--report", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "45 result(s) computed, 0 reused, 27 kept from earlier references" in out
    assert main(["run", job, "--no-progress"]) == 0
    assert "0 result(s) computed, 45 reused" in capsys.readouterr().out

    results = load_results(tmp_path / "results")
    cs = checkpoint_set(results)
    assert cs.reference == "step-500" and cs.earlier == ["step-300"]
    assert cs.fractions == {
        "step-100": 0.2,
        "step-200": 0.4,
        "step-300": 0.6,
        "step-400": 0.8,
        "step-500": 1.0,
    }
    page = (tmp_path / "results" / "report" / "index.html").read_text()
    text = re.sub(r"\s+", " ", page)
    assert "a checkpoint set of 5 against step-500" in text
    assert "Reached 0.99: l1 at 40%, l2 at 80%." in text and "Never reached 0.99: l3." in text
    assert "Rows against earlier references (step-300) are in the table" in text
    assert "its diagonal is 1 by construction" in text
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2 and all((tmp_path / "results" / "report" / i).is_file() for i in images)

    assert main(["freeze", str(tmp_path / "results"), "--threshold", "0.99"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["schedule"] == {"l1": 0.4, "l2": 0.8, "l3": None}
    assert plan["freeze_after"] == {"l1": "step-200", "l2": "step-400", "l3": None}
    assert plan["reference"] == "step-500" and plan["measure"] == "svcca"
    # layers given input to output: none freezes before the one below it
    order = freeze_plan(results, threshold=0.99, layers=["l2", "l1", "l3"])
    assert order["schedule"] == {"l2": 0.8, "l1": 0.8, "l3": None}


def test_freeze_needs_a_checkpoint_set(tmp_path, capsys):
    _trajectory(tmp_path, (100, 200))
    path = tmp_path / "job.toml"
    path.write_text('output = "r"\ncluster = "threads"\n[stores]\nckpt = "ckpt/step-*.zarr"\n')
    assert main(["run", str(path), "--no-progress"]) == 0
    assert main(["freeze", str(tmp_path / "r")]) == 1
    assert "no checkpoint set" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "not a results folder" in capsys.readouterr().err


def test_store_pair_heatmaps_and_class_sensitivity_with_a_note_where_it_is_by_construction(
    tmp_path,
):
    from pipeline.jobs import parse_job
    from pipeline.runner import run_job

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    for name in ("a", "b"):
        s = create_store(tmp_path / f"{name}.zarr")
        fc = np.eye(3)[labels] @ rng.standard_normal((3, 4)) + 0.3 * rng.standard_normal((N, 4))
        s.append("conv", rng.standard_normal((N, 2, 3, 3)))
        s.append("fc", fc)
        s.append("logits", fc @ rng.standard_normal((4, 3)))
        s.append_labels(labels)
    stores = {"a": "a.zarr", "b": "b.zarr"}
    run_job(
        parse_job(
            {
                "output": "pairs",
                "stores": stores,
                "pairs": "all",
                "cluster": "threads",
                "measures": ["svcca", "cka"],
            },
            base_dir=str(tmp_path),
        ),
        progress=False,
    )
    page = re.sub(r"\s+", " ", write_results_report(tmp_path / "pairs").read_text())
    assert page.count("<img") == 2  # a ~ b, per measure
    assert "SVCCA of 9 layer pairs. Highest:" in page and "Mean of the same-name cells" in page

    run_job(
        parse_job(
            {"output": "cls", "stores": stores, "target": "logits", "cluster": "threads"},
            base_dir=str(tmp_path),
        ),
        progress=False,
    )
    report = write_results_report(tmp_path / "cls", tmp_path / "elsewhere")
    page = re.sub(r"\s+", " ", report.read_text())
    assert page.count("<img") == 2  # a and b, layers x classes
    assert "fc scores at least 0.999 against every column of logits" in page
    assert "conv scores" not in page  # an unrelated layer gets no such note
    assert '<a href="../cls/results.csv">' in page  # links to the results folder


@pytest.mark.parametrize("threshold", [1.5])
def test_freeze_refuses_a_threshold_out_of_range(tmp_path, capsys, threshold):
    _trajectory(tmp_path, (100, 200, 300))
    main(["run", _job(tmp_path), "--no-progress"])
    capsys.readouterr()
    assert main(["freeze", str(tmp_path / "results"), "--threshold", str(threshold)]) == 1
    assert "threshold must be in (0, 1]" in capsys.readouterr().err
