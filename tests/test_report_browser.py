"""The report of a user's results, opened in a real browser (Debian's chromium,
headless, driven by Playwright): every image loads, every link resolves, the
headings are in order and the contents list matches them. A screenshot is
kept in ``test-artifacts/`` (override with ``SVCCA_ARTIFACTS``)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.jobs import parse_job
from pipeline.results_report import write_results_report
from pipeline.runner import run_job
from svcca_dask.store import create_store

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("no chromium: install Debian's (apt-get install chromium); .ci/run does")


@pytest.fixture
def served(tmp_path):
    """A checkpoint-set job with class sensitivity beside it, reported, served on 127.0.0.1."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    base = np.eye(3)[labels] @ rng.standard_normal((3, 4)) + 0.3 * rng.standard_normal((200, 4))
    for step in (100, 200, 300):
        s = create_store(tmp_path / "ckpt" / f"step-{step}.zarr")
        for layer in ("conv1", "fc"):
            s.append(
                layer, base @ rng.standard_normal((4, 5)) + 0.2 * rng.standard_normal((200, 5))
            )
        s.append_labels(labels)
    spec = {
        "output": "results",
        "stores": {"ckpt": "ckpt/step-*.zarr"},
        "against": "last",
        "pairs": "all",
        "measures": ["svcca", "cka"],
        "cluster": "threads",
    }
    run_job(parse_job(spec, base_dir=str(tmp_path)), progress=False)
    write_results_report(tmp_path / "results")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/results/report/index.html"
    finally:
        server.shutdown()
        server.server_close()


def test_the_report_in_a_browser(served):
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("SVCCA_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
            assert page.goto(served, wait_until="load").ok
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])"
            )
            assert len(images) == 4  # dynamics and convergence, per measure
            assert all(width and width > 100 for _, width in images), images
            hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))")
            for href in hrefs:
                if href.startswith("#"):
                    assert page.query_selector(href) is not None, href
                else:
                    response = page.request.get(page.url.rsplit("/", 1)[0] + "/" + href)
                    assert response.ok, f"{href}: {response.status}"
            levels = page.eval_on_selector_all("h1, h2, h3", "els => els.map(e => e.tagName)")
            assert levels[0] == "H1" and levels.count("H1") == 1 and "H3" not in levels
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            contents = page.eval_on_selector_all("ol li a", "els => els.map(e => e.textContent)")
            assert contents == headings and headings[-1] == "Results table"
            assert headings[:2] == ["Learning dynamics: SVCCA", "Per-layer convergence: SVCCA"]
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
            assert not failed, failed
        finally:
            browser.close()
    assert (artifacts / "report.png").stat().st_size > 10_000
