"""The scheduled examples in examples/: the cron line and the Prefect flow, run as a
user would while checkpoints appear between reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.output import read_table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CHECKPOINT = """
import sys
import numpy as np

from pipeline.output import read_table
from svcca_dask.store import create_store

def checkpoint(folder, step):
    rng = np.random.default_rng(step)
    base = np.random.default_rng(0).standard_normal((200, 4))
    s = create_store(f"{folder}/ckpt/step-{step}.zarr")
    for layer in ("conv1", "fc"):
        s.append(layer, base @ rng.standard_normal((4, 6)) + 0.1 * rng.standard_normal((200, 6)))
"""


def _checkpoint(folder: Path, step: int) -> None:
    scope: dict = {}
    exec(CHECKPOINT, scope)
    scope["checkpoint"](str(folder), step)


def _copy(tmp_path: Path) -> Path:
    work = tmp_path / "jobs"
    work.mkdir()
    shutil.copy(EXAMPLES / "checkpoints.toml", work)
    return work


def test_the_cron_line_reruns_the_job_as_checkpoints_appear(tmp_path):
    work = _copy(tmp_path)
    lines = [ln for ln in (EXAMPLES / "crontab").read_text().splitlines() if ln and ln[0] != "#"]
    env_line, cron = lines
    name, _, _ = env_line.partition("=")
    fields = cron.split(None, 5)
    assert fields[:5] == ["0", "*", "*", "*", "*"]  # hourly
    env = {**os.environ, name: str(work)}
    for steps in ((100, 200), (300,)):
        for s in steps:
            _checkpoint(work, s)
        subprocess.run(["bash", "-c", fields[5]], env=env, check=True, timeout=300)
    log = (work / "svcca-dask.log").read_text()
    assert "2 result(s) computed, 0 reused" in log  # step-100 against step-200, two layers
    assert "4 result(s) computed, 0 reused, 2 kept from earlier references" in log
    page = (work / "results" / "report" / "index.html").read_text()
    assert "a checkpoint set of 2 against step-300" in re.sub(r"\s+", " ", page)


def test_the_prefect_flow_computes_only_new_pairs_and_redraws_the_report(tmp_path):
    work = _copy(tmp_path)
    driver = (
        CHECKPOINT
        + f"""
sys.path.insert(0, {str(EXAMPLES)!r})
import json
from prefect_flow import checkpoints
runs = []
for steps in ((100, 200), (300,)):
    for s in steps:
        checkpoint({str(work)!r}, s)
    runs.append(checkpoints({str(work / "checkpoints.toml")!r}))
print("RUNS=" + json.dumps(runs))
"""
    )
    # Prefect's telemetry writes to the ephemeral server's SQLite file while the flow
    # does (on a loaded machine one of them gets "database is locked") and looks up a
    # host this machine cannot reach; its ephemeral API server takes 16-20 s to start
    # here unloaded, against a default bound of 20 s.
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    done = subprocess.run(
        [sys.executable, "-c", driver],
        env=env,
        cwd=work,
        text=True,
        capture_output=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.split("RUNS=")[-1])
    assert [(r["computed"], r["reused"], r["kept"]) for r in runs] == [(2, 0, 0), (4, 0, 2)]
    assert Path(runs[-1]["report"]).is_file()
    table = read_table(str(work / "results"))
    assert len(table) == 6 and np.isfinite([r["score"] for r in table]).all()
