"""The ``svcca-dask`` command line: subcommands, output, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import svcca_dask as sd
from pipeline.cli import SUBCOMMANDS, build_parser, main
from svcca_dask.store import create_store, open_store


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((120, 5))
    for k, name in enumerate(("a", "b")):
        s = create_store(tmp_path / f"{name}.zarr")
        s.append("fc", base @ rng.standard_normal((5, 6)) + k * 0.1 * rng.standard_normal((120, 6)))
        s.append("conv", rng.standard_normal((120, 2, 3, 3)))
    return tmp_path


def test_every_command_has_help(capsys):
    parser = build_parser()
    names = list(parser._subparsers._group_actions[0].choices)
    assert {"compare", "extract", "run", "layers"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert f"usage: svcca-dask {name}" in capsys.readouterr().out
    assert "demo" in names  # pipeline.demo adds its subcommand


def test_compare_prints_score_and_json(stores, capsys):
    x, y = str(stores / "a.zarr" / "fc"), str(stores / "b.zarr" / "fc")
    assert main(["compare", x, y, "--keep", "4", "--no-progress"]) == 0
    printed = float(capsys.readouterr().out)
    assert printed == pytest.approx(sd.svcca(x, y, keep=4).score, abs=1e-6)
    assert main(["compare", x, y, "--measure", "pwcca", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    ref = sd.pwcca(x, y)
    assert out["score"] == pytest.approx(ref.score, rel=1e-12)
    assert out["coefficients"] == pytest.approx(ref.coefficients.tolist())
    assert out["measure"] == "pwcca"


def test_compare_progress_bar(stores, capsys):
    x, y = str(stores / "a.zarr" / "fc"), str(stores / "b.zarr" / "fc")
    assert main(["compare", x, y, "--measure", "cka", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "100%" in captured.err  # Dask's progress bar, on stderr
    float(captured.out)  # stdout holds the score only
    assert main(["compare", x, y, "--measure", "cka"]) == 0
    assert capsys.readouterr().err == ""  # stderr is no terminal here: no bar unless asked


def test_failure_is_one_line_exit_1(stores, capsys):
    code = main(["compare", str(stores / "a.zarr" / "nope"), str(stores / "b.zarr" / "fc")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("svcca-dask compare: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    code = main(["compare", "--verbose", str(stores / "a.zarr" / "nope"), str(stores / "b.zarr")])
    assert code == 1 and "Traceback" in capsys.readouterr().err  # --verbose shows it


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "only-one"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["compare", "a", "b", "--measure", "nope"])
    assert exc.value.code == 2


def test_layers(stores, capsys):
    assert main(["layers", str(stores / "a.zarr")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("a.zarr: an activation store: completeness recorded by its writer")
    assert out[1].startswith("conv  shape=120x2x3x3  dims=(sample, channel, height, width)")
    assert out[2].startswith("fc  shape=120x6  dims=(sample, neuron)")
    assert main(["layers", str(stores / "a.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[1]["name"] == "fc" and info[1]["chunks"][1] == 6 and info[1]["complete"]
    assert main(["layers", str(stores / "missing.zarr")]) == 1


def test_run_and_rerun(stores, capsys):
    job = stores / "job.toml"
    job.write_text(
        'output = "out"\nmeasures = ["svcca", "cka"]\nlayers = ["fc"]\ncluster = "threads"\n'
        '[stores]\na = "a.zarr"\nb = "b.zarr"\n'
    )
    assert main(["run", str(job), "--no-progress"]) == 0
    assert "2 result(s) computed, 0 reused" in capsys.readouterr().out
    assert main(["run", str(job), "--no-progress"]) == 0
    assert "0 result(s) computed, 2 reused" in capsys.readouterr().out
    assert main(["run", str(job), "--force", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "2 result(s) computed" in captured.out and "2/2" in captured.err  # progress bar
    assert "it/s" in captured.err or "s/it" in captured.err  # with its rate
    job.write_text(job.read_text().replace("measures", "mesures"))
    assert main(["run", str(job)]) == 1
    assert "did you mean 'measures'" in capsys.readouterr().err


MODEL_FILE = """
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def data():
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(30, 4, generator=g), torch.arange(30) % 3)
"""


def test_extract(tmp_path, capsys):
    pytest.importorskip("torch")
    f = tmp_path / "mymodel.py"
    f.write_text(MODEL_FILE)
    out = tmp_path / "acts.zarr"
    args = ["extract", "--model", f"{f}:model", "--data", f"{f}:data", "--out", str(out)]
    assert main([*args, "--layers", "0", "2", "--batch-size", "8", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "4/4" in captured.err  # one progress step per batch
    s = open_store(out)
    assert s.layer_names() == ["0", "2"] and s.info("0").shape == (30, 6)
    np.testing.assert_array_equal(s.labels().compute(), np.arange(30) % 3)
    assert main([*args, "--layers", "9"]) == 1
    assert "'9' is not a layer" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path):
    exe = shutil.which("svcca-dask")
    cmd = [exe] if exe else [sys.executable, "-m", "pipeline.cli"]
    ok = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "compare" in ok.stdout
    bad = subprocess.run(
        [*cmd, "layers", str(tmp_path / "nope.zarr")], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "no activation store" in bad.stderr


NOISY_MODULE = """
import logging


def add_parser(subparsers):
    p = subparsers.add_parser("noisy", help="logs like distributed does")
    p.set_defaults(handler=_noisy)


def _noisy(args):
    logging.getLogger("distributed").setLevel(logging.INFO)  # what importing distributed does
    logging.getLogger("distributed.scheduler").info("scheduler-info")
    logging.getLogger("distributed.scheduler").warning("scheduler-warning")
    logging.getLogger("tornado.application").info("tornado-info")
    logging.getLogger("distributedx").warning("other-library")
    return 0
"""


def test_library_info_logs_are_quiet_unless_verbose(tmp_path, monkeypatch, caplog):
    import logging

    (tmp_path / "noisy_cmd.py").write_text(NOISY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import noisy_cmd

    monkeypatch.setattr("pipeline.cli.SUBCOMMANDS", (*SUBCOMMANDS, noisy_cmd.add_parser))
    level = logging.getLogger("distributed").level
    try:
        assert main(["noisy"]) == 0
        assert "scheduler-warning" in caplog.text  # warnings still reach the handler
        assert "scheduler-info" not in caplog.text and "tornado-info" not in caplog.text
        assert "other-library" in caplog.text  # a name that only starts alike is not filtered
        caplog.clear()
        assert main(["noisy", "--verbose"]) == 0
        assert "scheduler-info" in caplog.text  # --verbose lets them through
        caplog.clear()
        assert main(["noisy"]) == 0
        logging.getLogger("distributed.scheduler").info("after-main")
        assert "after-main" in caplog.text  # main's filter is gone once it returns
        assert "scheduler-info" not in caplog.text
    finally:
        logging.getLogger("distributed").setLevel(level)


def test_cli_choices_are_the_librarys():
    import pipeline.cli as cli
    from svcca_dask.conv import CONV_MODES
    from svcca_dask.svd import SVD_METHODS

    assert cli.CONV_MODES == CONV_MODES and cli.SVD_METHODS == SVD_METHODS
    from pipeline.jobs import MEASURES

    compare = build_parser()._subparsers._group_actions[0].choices["compare"]
    (measure,) = [a for a in compare._actions if a.dest == "measure"]
    assert set(measure.choices) == set(MEASURES)  # the CLI offers every job measure


def test_compare_refuses_bad_options_before_reading(stores, capsys, monkeypatch):
    x, y = str(stores / "a.zarr" / "fc"), str(stores / "b.zarr" / "fc")
    import svcca_dask.stats as stats

    def no_pass(*a, **k):
        raise AssertionError("a pass over the data started")

    monkeypatch.setattr(stats, "compute", no_pass)
    assert main(["compare", x, y, "--epsilon", "-1"]) == 1
    assert "epsilon must be finite and >= 0" in capsys.readouterr().err
    assert main(["compare", x, y, "--keep", "1.5"]) == 1
    assert "keep as a float is a fraction of variance in (0, 1]" in capsys.readouterr().err
    assert main(["compare", x, y, "--dft-memory-limit", "lots"]) == 1
    assert "memory_limit must be a positive number of bytes" in capsys.readouterr().err
    assert main(["compare", x, y, "--conv", "mean", "--dft-memory-limit", "1GiB"]) == 1
    assert "dft_memory_limit applies to conv='dft'" in capsys.readouterr().err
    assert main(["compare", x, y, "--measure", "pwcca", "--svd", "tsqr"]) == 1
    assert "takes no option svd" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", x, y, "--conv", "DFT(memory_limit='1GiB')"])
    assert exc.value.code == 2  # a usage error that lists the choices
    assert "(choose from 'dft', 'samples', 'mean', 'flatten')" in capsys.readouterr().err


def test_compare_svd_and_dft_options(stores, capsys):
    x, y = str(stores / "a.zarr" / "fc"), str(stores / "b.zarr" / "fc")
    args = ["compare", x, y, "--svd", "randomized", "--n-power-iter", "3", "--keep", "3", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ref = sd.svcca(x, y, keep=3, svd=sd.RandomizedSVD(n_power_iter=3))
    assert out["score"] == pytest.approx(ref.score, rel=1e-12)
    assert out["options"] == {"keep": 3, "svd": "randomized", "n_power_iter": 3}
    cx, cy = str(stores / "a.zarr" / "conv"), str(stores / "b.zarr" / "conv")
    assert main(["compare", cx, cy, "--measure", "cca", "--dft-memory-limit", "1MiB"]) == 0
    ref = sd.cca(cx, cy, conv=sd.DFT(memory_limit="1MiB"))
    assert float(capsys.readouterr().out) == pytest.approx(ref.score, abs=1e-6)


def test_too_few_samples_are_flagged_on_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(3)
    s = create_store(tmp_path / "few.zarr")
    s.append("a", rng.standard_normal((60, 12)))
    s.append("b", rng.standard_normal((60, 12)))
    x, y = str(tmp_path / "few.zarr" / "a"), str(tmp_path / "few.zarr" / "b")
    assert main(["compare", x, y, "--measure", "cca"]) == 0
    err = capsys.readouterr().err
    assert err.count("svcca-dask compare: warning: 60 samples for 12 canonical directions") == 1
    assert main(["compare", x, y, "--measure", "cca", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "fewer than 10 per direction" in out["warnings"][0]
    job = tmp_path / "job.toml"
    job.write_text(
        'output = "out"\nmeasures = ["cca"]\npairs = [["f/a", "f/b"]]\ncluster = "threads"\n'
        '[stores]\nf = "few.zarr"\n'
    )
    assert main(["run", str(job)]) == 0
    assert "warning: 60 samples" in capsys.readouterr().err
    import csv

    with open(tmp_path / "out" / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert "60 samples for 12 canonical directions" in row["warnings"]  # in the table too


def test_extract_checks_layers_before_the_data_and_imports_from_the_current_folder(
    tmp_path, capsys, monkeypatch
):
    pytest.importorskip("torch")
    (tmp_path / "models.py").write_text(
        MODEL_FILE
        + """

def no_data():
    raise AssertionError("the data callable ran before --layers was checked")
"""
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    out = tmp_path / "acts.zarr"
    args = ["extract", "--model", "models:model", "--out", str(out)]
    assert main([*args, "--data", "models:no_data", "--layers", "3"]) == 1
    err = capsys.readouterr().err
    assert "'3' is not a layer of Sequential; its top-level modules: 0, 1, 2" in err
    assert not out.exists()
    assert main([*args, "--data", "models:data", "--layers", "0"]) == 0  # models.py found in .
    assert open_store(out).info("0").shape == (30, 6)
