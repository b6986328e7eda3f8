"""A Prefect flow that reruns an svcca-dask job as checkpoints appear.

One run (Prefect starts a temporary local API server by itself, no setup)::

    python prefect_flow.py checkpoints.toml

Every hour, as a long-lived process (or deploy it to a work pool you run)::

    python prefect_flow.py checkpoints.toml --every 3600

Each run matches the job's store globs again, so new checkpoints join, and
computes only the new pairs; the report in ``OUTPUT/report`` is redrawn.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, task


@task(retries=2, retry_delay_seconds=60)
def run_job(job_path: str) -> dict[str, Any]:
    """Run the job (only what is new) and return what it did."""
    from pipeline.jobs import load_job
    from pipeline.runner import run_job as run

    report = run(load_job(job_path), progress=False)
    return {
        "output": report.output,
        "computed": report.computed,
        "reused": report.reused,
        "kept": report.kept,
    }


@task
def draw(output: str) -> str:
    """Redraw the report of the job's results folder."""
    from pipeline.results_report import write_results_report

    return str(write_results_report(output))


@flow(name="svcca-dask-checkpoints", log_prints=True)
def checkpoints(job_path: str, report: bool = True) -> dict[str, Any]:
    """Rerun ``job_path`` and, with ``report``, redraw its report."""
    done = run_job(job_path)
    print(f"{done['computed']} computed, {done['reused']} reused, {done['kept']} kept")
    if report:
        done["report"] = draw(done["output"])
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="the job file, e.g. checkpoints.toml")
    parser.add_argument("--every", type=int, default=None, help="serve: rerun every N seconds")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    params = {"job_path": args.job, "report": not args.no_report}
    if args.every is None:
        print(checkpoints(**params))
    else:
        checkpoints.serve(name="svcca-dask-checkpoints", interval=args.every, parameters=params)
