"""The job runner: results, shared passes, idempotent reruns, --force, atomic writes."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

import pipeline.output as output
import pipeline.runner as runner
import svcca_dask as sd
from pipeline.jobs import parse_job
from pipeline.runner import COLUMNS, compare_pair, run_job
from svcca_dask.store import create_store, open_store


def make_stores(root, n=200):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, 6))
    for k, name in enumerate(("a", "b")):
        s = create_store(root / f"{name}.zarr")
        s.append("l1", base @ rng.standard_normal((6, 7)) + 0.1 * k * rng.standard_normal((n, 7)))
        s.append("l2", np.tanh(base @ rng.standard_normal((6, 5))))
        s.append("l3", rng.standard_normal((n, 4)))


def job_for(root, **over):
    spec = {
        "output": "out",
        "stores": {"a": "a.zarr", "b": "b.zarr"},
        "measures": ["svcca", "cka", "pwcca"],
        "pairs": "all",
        "options": {"keep": 0.99},
        "cluster": "threads",
    }
    spec.update(over)
    return parse_job(spec, base_dir=str(root))


def read_csv(root):
    with open(root / "out" / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def root(tmp_path):
    make_stores(tmp_path)
    return tmp_path


def test_end_to_end_on_a_local_cluster(root):
    cluster = {
        "spec": "local",
        "n_workers": 1,
        "threads_per_worker": 2,
        "processes": False,
        "dashboard_address": "127.0.0.1:0",
    }
    report = run_job(job_for(root, cluster=cluster), progress=False)
    assert report.computed == 27 and report.reused == 0  # 3 x 3 pairs x 3 measures
    assert report.passes == 1  # one similarity-matrix pass for all three measures, not one per pair
    rows = read_csv(root)
    assert list(rows[0]) == list(COLUMNS)
    assert {"x_store", "x_layer", "y_store", "y_layer", "measure", "score"} <= set(rows[0])
    # every score equals the library's own pair call
    for r in rows:
        fn = {"svcca": sd.svcca, "cka": sd.linear_cka, "pwcca": sd.pwcca}[r["measure"]]
        opts = json.loads(r["options"])
        want = fn(str(root / f"{r['x_store']}.zarr" / r["x_layer"]), r["y_path"], **opts).score
        assert float(r["score"]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # parquet holds the same table, typed
    table = pq.read_table(root / "out" / "results.parquet").to_pylist()
    assert [t["result_id"] for t in table] == [r["result_id"] for r in rows]
    assert all(isinstance(t["score"], float) for t in table)
    # coefficient arrays in a Zarr group, one subgroup per result
    r = next(r for r in rows if r["measure"] == "svcca" and r["x_layer"] == "l1" == r["y_layer"])
    g = zarr.open_group(str(root / "out" / "coefficients.zarr" / r["result_id"]), mode="r")
    coefs = g["coefficients"][:]
    assert len(coefs) == int(r["n_coefficients"]) and float(r["score"]) == pytest.approx(
        coefs.mean()
    )
    assert g.attrs["pair"] == ["a/l1", "b/l1"] and g.attrs["measure"] == "svcca"
    pw = next(r for r in rows if r["measure"] == "pwcca")
    pwg = zarr.open_group(str(root / "out" / "coefficients.zarr" / pw["result_id"]), mode="r")
    assert pwg["weights"][:].sum() == pytest.approx(1.0)  # PWCCA weights kept too
    # parameters and versions beside the results
    meta = json.loads((root / "out" / "job.json").read_text())
    assert meta["state"] == "finished" and meta["params"]["options"] == {"keep": 0.99}
    assert meta["versions"]["svcca_dask"] == sd.__version__


def test_same_name_pairs_use_pair_calls(root):
    report = run_job(job_for(root, pairs="same-name", measures=["cca"], options={}), progress=False)
    assert report.computed == 3 and report.passes == 3  # the diagonal: one pass per pair
    rows = read_csv(root)
    assert [(r["x_layer"], r["y_layer"]) for r in rows] == [
        ("l1", "l1"),
        ("l2", "l2"),
        ("l3", "l3"),
    ]
    want = sd.cca(str(root / "a.zarr" / "l2"), str(root / "b.zarr" / "l2")).score
    assert float(rows[1]["score"]) == pytest.approx(want, rel=1e-12)


def test_conv_layers_matrix_or_pairs(root):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 3, 4, 4))
    for k, name in enumerate(("a", "b")):
        s = open_store(root / f"{name}.zarr", mode="r+")
        s.append("conv", base + 0.5 * k * rng.standard_normal(base.shape))
    job = job_for(root, measures=["cka"], options={"conv": "mean"}, layers=["conv", "l1"])
    report = run_job(job, progress=False)
    assert report.passes == 1  # conv='mean' reduces per layer: one matrix pass
    rows = read_csv(root)
    assert len(rows) == 4
    for r in rows:  # equal to the pair calls
        want = sd.linear_cka(r["x_path"], r["y_path"], conv="mean").score
        assert float(r["score"]) == pytest.approx(want, rel=1e-9)
    dft = run_job(
        job_for(root, measures=["cka"], options={}, layers=["conv", "l1"]), progress=False
    )
    assert dft.passes == 4  # the default DFT depends on the pair: pair calls
    rows = read_csv(root)
    conv_row = next(r for r in rows if r["x_layer"] == "conv" == r["y_layer"])
    want = sd.linear_cka(conv_row["x_path"], conv_row["y_path"]).score
    assert float(conv_row["score"]) == pytest.approx(want, rel=1e-9)


def test_rerun_is_idempotent_and_force_recomputes(root):
    job = job_for(root)
    run_job(job, progress=False)
    first = read_csv(root)
    again = run_job(job, progress=False)
    assert again.computed == 0 and again.reused == 27  # nothing recomputed
    assert read_csv(root) == first  # not even the timestamps change
    forced = run_job(job, force=True, progress=False)
    assert forced.computed == 27 and forced.reused == 0
    rows = read_csv(root)
    assert [r["result_id"] for r in rows] == [r["result_id"] for r in first]  # same ids
    assert [float(r["score"]) for r in rows] == pytest.approx([float(r["score"]) for r in first])


def test_rerun_recomputes_a_row_whose_arrays_were_deleted(root):
    import shutil

    job = job_for(root, measures=["svcca"], pairs=[["a/l1", "b/l1"], ["a/l2", "b/l2"]])
    first = run_job(job, progress=False)
    gone = first.rows[0]["result_id"]
    shutil.rmtree(root / "out" / "coefficients.zarr" / gone)
    again = run_job(job, progress=False)
    assert (again.computed, again.reused) == (1, 1)  # the row without arrays is not reused
    assert (root / "out" / "coefficients.zarr" / gone / "zarr.json").is_file()
    assert [r["score"] for r in again.rows] == pytest.approx([r["score"] for r in first.rows])


def test_changed_parameter_or_input_is_detected(root):
    run_job(job_for(root), progress=False)
    first = {(r["x_layer"], r["y_layer"], r["measure"]): r for r in read_csv(root)}

    changed = run_job(job_for(root, options={"keep": 3}), progress=False)
    assert changed.computed == 9 and changed.reused == 18  # only svcca takes keep
    rows = {(r["x_layer"], r["y_layer"], r["measure"]): r for r in read_csv(root)}
    assert len(rows) == 27  # the old svcca rows are replaced, not kept beside
    assert rows[("l1", "l1", "svcca")]["result_id"] != first[("l1", "l1", "svcca")]["result_id"]
    assert int(rows[("l1", "l1", "svcca")]["x_kept"]) == 3
    assert rows[("l1", "l1", "cka")] == first[("l1", "l1", "cka")]
    kept = set(os.listdir(root / "out" / "coefficients.zarr")) - {"zarr.json"}
    assert kept == {r["result_id"] for r in rows.values()}  # stale arrays pruned

    # new data in a layer of b: every pair with b/l3 is recomputed
    s = open_store(root / "b.zarr", mode="r+")
    s.truncate("l3", 100)
    s.append("l3", np.random.default_rng(5).standard_normal((100, 4)))
    again = run_job(job_for(root, options={"keep": 3}), progress=False)
    assert again.computed == 9 and again.reused == 18  # 3 x-layers x b/l3 x 3 measures
    # a recreated store (same name, new content) is a new input too
    create_store(root / "a.zarr", overwrite=True)
    rng = np.random.default_rng(9)
    for layer, d in (("l1", 7), ("l2", 5), ("l3", 4)):
        open_store(root / "a.zarr", mode="r+").append(layer, rng.standard_normal((200, d)))
    assert run_job(job_for(root, options={"keep": 3}), progress=False).computed == 27


def test_killed_run_leaves_whole_results_and_resumes(root, monkeypatch):
    job = job_for(root, pairs="same-name")
    real = runner._compute
    calls = {"n": 0}

    def dies(job_, group, advance):
        for item in real(job_, group, advance):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt("killed")
            yield item

    monkeypatch.setattr(runner, "_compute", dies)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=False)
    monkeypatch.undo()
    rows = read_csv(root)
    assert len(rows) == 4  # pair by pair: the four results before the kill, nothing half
    for r in rows:  # every row in the table has its arrays
        assert (root / "out" / "coefficients.zarr" / r["result_id"] / "zarr.json").is_file()
    assert json.loads((root / "out" / "job.json").read_text())["state"] == "running"
    resumed = run_job(job, progress=False)
    assert resumed.reused == 4 and resumed.computed == 5


def test_table_write_is_atomic(root, monkeypatch):
    job = job_for(root, measures=["cka"], options={})
    run_job(job, progress=False)
    before = (root / "out" / "results.csv").read_bytes()

    def crash(src, dst):
        if dst.endswith("results.csv"):
            raise KeyboardInterrupt("killed while writing")
        return os.replace(src, dst)

    monkeypatch.setattr(output, "_replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, force=True, progress=False)
    monkeypatch.undo()
    assert (root / "out" / "results.csv").read_bytes() == before  # the old table, whole
    leftovers = [n for n in os.listdir(root / "out") if n.startswith(output.TMP_PREFIX)]
    assert leftovers == []


def test_interrupted_array_write_leaves_no_result(root, monkeypatch):
    job = job_for(root, measures=["svcca"], pairs=[["a/l1", "b/l1"]])

    def crash(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(output, "_replace", crash)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=False)
    monkeypatch.undo()
    names = set(os.listdir(root / "out" / "coefficients.zarr"))
    assert names == {"zarr.json"}  # no half-written result group
    assert not (root / "out" / "results.csv").exists()
    assert run_job(job, progress=False).computed == 1


def test_compare_pair(root):
    x, y = str(root / "a.zarr" / "l1"), str(root / "b.zarr" / "l1")
    out = compare_pair(x, y, measure="svcca", options={"keep": 4})
    ref = sd.svcca(x, y, keep=4)
    assert out["score"] == pytest.approx(ref.score, rel=1e-12)
    assert out["coefficients"] == pytest.approx(ref.coefficients.tolist())
    assert out["x_kept"] == 4 and out["n_samples"] == 200
    json.dumps(out)  # JSON-ready
    assert compare_pair(x, y, measure="cka")["coefficients"] == []
    with pytest.raises(ValueError, match="takes no option keep"):
        compare_pair(x, y, measure="cka", options={"keep": 0.9})


KILL_SCRIPT = """
import os, signal, sys
import pipeline.output as output
import pipeline.runner as runner
from pipeline.jobs import parse_job

real = output._replace
def replace(src, dst):
    if dst.endswith("results.csv"):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, with the new table half done
    real(src, dst)
output._replace = replace
job = parse_job({"output": "out", "stores": {"a": "a.zarr", "b": "b.zarr"},
                 "measures": ["cka"], "cluster": "threads"}, base_dir=sys.argv[1])
runner.run_job(job, progress=False)
"""


def test_sigkill_leaves_no_half_results(root):
    import signal
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(root)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    out = root / "out"
    assert not (out / "results.csv").exists()  # never a partial table
    assert any(n.startswith(output.TMP_PREFIX) for n in os.listdir(out))  # the unfinished file
    job = job_for(root, measures=["cka"], options={}, pairs="same-name")
    report = run_job(job, progress=False)
    assert report.computed + report.reused == 3
    assert not any(n.startswith(output.TMP_PREFIX) for n in os.listdir(out))
    assert len(read_csv(root)) == 3


def test_run_leaves_the_users_files_alone(root):
    out = root / "out"
    (out / ".tmp-mine").mkdir(parents=True)
    (out / ".tmp-mine" / "keep.txt").write_text("mine")
    (out / "notes.tmp").write_text("my notes")
    (out / f"{output.TMP_PREFIX}stale-1234").write_text("a killed run's")  # ours: removed
    run_job(job_for(root, measures=["cka"], options={}), progress=False)
    assert (out / "notes.tmp").read_text() == "my notes"
    assert (out / ".tmp-mine" / "keep.txt").read_text() == "mine"
    assert not (out / f"{output.TMP_PREFIX}stale-1234").exists()


HOLD_LOCK = """
import sys, time
from pipeline.output import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_the_same_output_is_refused(root, capsys):
    import subprocess
    import sys

    from pipeline.cli import main

    job = job_for(root, measures=["cka"], options={})
    os.makedirs(job.output, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, job.output], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            output.OutputLockedError, match=rf"in use by another run .*{holder.pid}"
        ):
            run_job(job, progress=False)
        toml = root / "job.toml"
        toml.write_text(
            'output = "out"\nmeasures = ["cka"]\ncluster = "threads"\n'
            '[stores]\na = "a.zarr"\nb = "b.zarr"\n'
        )
        assert main(["run", str(toml)]) == 1
        assert f'"pid": {holder.pid}' in capsys.readouterr().err  # the holder is named
        assert not (root / "out" / "results.csv").exists()  # nothing was computed
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # the holder died: its lock is taken over, stale lock file and all
    assert (root / "out" / output.LOCK_NAME).read_text()
    assert run_job(job, progress=False).computed == len(job.pairs)


def test_forced_rerun_swaps_result_groups_in_one_step(root, monkeypatch):
    job = job_for(root, measures=["svcca"], options={})
    first = run_job(job, progress=False)
    groups = {str(root / "out" / "coefficients.zarr" / r["result_id"]) for r in first.rows}
    removed = []
    real_rmtree = output.shutil.rmtree

    def rmtree(path, *a, **k):
        removed.append(str(path))
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(output.shutil, "rmtree", rmtree)
    again = run_job(job, force=True, progress=False)
    assert again.computed == len(first.rows)
    assert not groups & set(removed)  # a listed group is never deleted, only swapped
    for g in groups:
        assert os.path.isfile(os.path.join(g, "zarr.json"))
    leftovers = [n for n in os.listdir(root / "out") if n.startswith(output.TMP_PREFIX)]
    assert leftovers == []


def test_output_inside_a_store_is_refused(root):
    from pipeline.jobs import JobError

    with pytest.raises(JobError, match="inside store 'a'"):
        job_for(root, output="a.zarr/results")


def test_against_last_keeps_results_against_the_old_last_checkpoint(tmp_path):
    """Training goes on: a new checkpoint becomes 'last'. The rows against the old
    last one stay, named by their y_store; rows of changed options never do."""
    from pipeline.jobs import parse_job
    from pipeline.output import read_table
    from svcca_dask.store import create_store

    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 4))

    def checkpoint(step):
        s = create_store(tmp_path / "ckpt" / f"step-{step}.zarr")
        s.append("fc", base @ rng.standard_normal((4, 5)) + 0.1 * rng.standard_normal((300, 5)))
        s.append("fc2", rng.standard_normal((300, 3)))

    for step in (100, 200, 300):
        checkpoint(step)
    spec = {
        "output": "out",
        "stores": {"ckpt": "ckpt/step-*.zarr"},
        "measures": ["cka"],
        "against": "last",
        "cluster": "threads",
    }
    first = run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False)
    assert first.computed == 4 and {r["y_store"] for r in first.rows} == {"step-300"}
    checkpoint(400)
    second = run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False)
    assert second.computed == 6 and second.reused == 0 and second.kept == 4
    table = read_table(str(tmp_path / "out"))
    by_ref = {
        ref: sorted(r["x_store"] for r in table if r["y_store"] == ref)
        for ref in ("step-300", "step-400")
    }
    assert by_ref == {
        "step-300": ["step-100"] * 2 + ["step-200"] * 2,
        "step-400": ["step-100"] * 2 + ["step-200"] * 2 + ["step-300"] * 2,
    }
    assert {r["against"] for r in table} == {"last"}
    old = {r["result_id"]: r["score"] for r in first.rows}
    assert all(old[r["result_id"]] == r["score"] for r in table if r["y_store"] == "step-300")
    assert "4 kept from earlier references" in second.summary()
    # a rewritten old checkpoint drops its rows against the old reference
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "step-200.zarr")
    checkpoint(200)
    third = run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False)
    assert third.kept == 2 and third.computed == 2  # step-200 against step-400, again
    # other options: the old reference's rows are stale, never mixed in
    other = run_job(
        parse_job({**spec, "options": {"debiased": True}}, base_dir=str(tmp_path)), progress=False
    )
    assert other.kept == 0 and {r["y_store"] for r in other.rows} == {"step-400"}


def test_class_sensitivity_as_a_job(tmp_path):
    """target = 'labels': every layer against each class, one pass per store, equal to
    the API; a logits layer as the target; a rerun reuses every row."""
    import svcca_dask as sd
    from pipeline.jobs import JobError, parse_job
    from svcca_dask.store import create_store

    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 3, n)
    fc = np.eye(3)[labels] @ rng.standard_normal((3, 6)) + 0.5 * rng.standard_normal((n, 6))
    conv = fc[:, :, None, None] + 0.2 * rng.standard_normal((n, 6, 2, 2))
    s = create_store(tmp_path / "net.zarr")
    s.append("fc", fc)
    s.append("conv", conv)
    s.append("logits", fc @ rng.standard_normal((6, 3)))
    s.append_labels(labels)
    spec = {
        "output": "out",
        "stores": {"net": "net.zarr"},
        "target": "labels",
        "layers": ["fc", "conv"],
        "measures": ["svcca", "cka"],
        "cluster": "threads",
    }
    job = parse_job(spec, base_dir=str(tmp_path))
    report = run_job(job, progress=False)
    assert report.computed == 12 and report.passes == 1  # 2 layers x 3 classes x 2 measures
    api = sd.class_sensitivity(
        {"fc": f"{s.path}/fc", "conv": f"{s.path}/conv"},
        f"{s.path}/labels",
        measures=["svcca", "cka"],
    )
    for r in report.rows:
        c = int(r["y_layer"].removeprefix("labels[").removesuffix("]"))
        assert r["y_store"] == "net" and r["y_path"] == f"{s.path}/labels"
        assert r["score"] == api[r["measure"]][(r["x_layer"], c)].score
    assert run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False).reused == 12
    logits = run_job(
        parse_job(
            {**spec, "target": "logits", "layers": "*", "output": "o2"}, base_dir=str(tmp_path)
        ),
        progress=False,
    )
    assert {r["x_layer"] for r in logits.rows} == {"fc", "conv"}  # not the logits themselves
    assert {r["y_layer"] for r in logits.rows} == {"logits[0]", "logits[1]", "logits[2]"}
    by_pair = {(r["x_layer"], r["y_layer"], r["measure"]): r["score"] for r in logits.rows}
    assert by_pair[("fc", "logits[1]", "svcca")] == pytest.approx(1.0, abs=1e-6)  # affine in fc
    with pytest.raises(JobError, match="remove pairs and against"):
        parse_job({**spec, "pairs": "all"}, base_dir=str(tmp_path))
    with pytest.raises(JobError, match="remove folds"):
        parse_job({**spec, "options": {"folds": 2}}, base_dir=str(tmp_path))
    with pytest.raises(JobError, match="has no layer 'probs'"):
        parse_job({**spec, "target": "probs"}, base_dir=str(tmp_path))


def test_stores_in_different_orders_are_refused_unless_trusted_and_the_table_says_which(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 4))
    for name, order in (("a", "o1"), ("b", "o1"), ("c", "o2")):
        s = create_store(tmp_path / f"{name}.zarr", provenance={"data_order": order})
        s.append("l1", x + 0.1 * rng.standard_normal(x.shape))
    stores = {"a": "a.zarr", "b": "b.zarr", "c": "c.zarr"}
    run_job(
        job_for(tmp_path, stores={"a": "a.zarr", "b": "b.zarr"}, measures=["cka"], options={}),
        progress=False,
    )
    assert {r["rows"] for r in read_csv(tmp_path)} == {"order"}  # the orders were compared
    with pytest.raises(sd.RowOrderError, match=r"a\.zarr/l1.*c\.zarr/l1.*different data orders"):
        run_job(
            job_for(
                tmp_path, stores=stores, measures=["cka"], pairs=[["a/l1", "c/l1"]], options={}
            ),
            progress=False,
        )
    trusted = job_for(
        tmp_path,
        stores=stores,
        measures=["cka"],
        pairs=[["a/l1", "c/l1"]],
        options={"rows": "trust"},
    )
    run_job(trusted, progress=False)
    assert [r["rows"] for r in read_csv(tmp_path)] == ["trusted"]  # said, and recorded
    assert compare_pair(str(tmp_path / "a.zarr/l1"), str(tmp_path / "b.zarr/l1"))["rows"] == "order"
