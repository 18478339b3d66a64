"""End to end in a real browser: JupyterLab, notebook 03, the temperature slider.

JupyterLab runs on loopback from this interpreter (as ``make lab`` does) over a copy of
notebook 03 in a temporary workspace (so autosave never touches the stored notebook);
headless Chromium (the Debian package, ``/usr/bin/chromium``) driven by Playwright's
Python package clears the outputs, runs every cell, moves the temperature slider and
checks that the drawn figure changes and is shown at its own pixel size; before the
run, it checks that the stored widget output shows a picture, not raw text. The last
screenshot is kept at ``.cache/browser/03_correlation_matching.png``.

Without Chromium or Playwright the test is skipped with the reason, except in CI
(``CI=true``), where ``.ci/run`` installs both and their absence is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_correlation_matching.ipynb"
SCREENSHOT_DIR = PROJECT_ROOT / ".cache" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "hdmnet-browser-test"
RUN_TIMEOUT_MS = 180_000


def chromium_path() -> str:
    """The Chromium executable, or skip (fail in CI) naming what is missing."""
    found = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the Python package playwright (pip install -c constraints.txt playwright)"
    else:
        missing = "" if found else "Chromium (apt-get install -y chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {missing} is not installed; .ci/run must install it")
        pytest.skip(f"real-browser test needs {missing}")
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab on loopback over a workspace holding a copy of notebook 03."""
    chromium_path()
    workspace = tmp_path_factory.mktemp("lab")
    (workspace / "notebooks").mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / NOTEBOOK, workspace / "notebooks" / NOTEBOOK)
    (PROJECT_ROOT / "data").mkdir(exist_ok=True)
    (workspace / "data").symlink_to(PROJECT_ROOT / "data")  # the notebook reads ../data
    config_dir = workspace / "jupyter-config"
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    news = config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)  # no "get notified about Jupyter news?" toast over the page
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_DATA_DIR": str(workspace / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(workspace / "jupyter-runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(workspace / "ipython"),
        "MPLCONFIGDIR": str(workspace / "matplotlib"),
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.token={TOKEN}",
        f"--ServerApp.root_dir={workspace}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (workspace / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not start: {(workspace / 'lab.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def widget_cell_index() -> int:
    """Position (among all cells) of notebook 03's temperature widget cell."""
    cells = json.loads((PROJECT_ROOT / "notebooks" / NOTEBOOK).read_text())["cells"]
    for index, cell in enumerate(cells):
        if "matching_figure = LiveFigure(" in "".join(cell["source"]):
            return index
    raise AssertionError(f"{NOTEBOOK}: no temperature widget cell")


def wait_for_idle_run(page: object, timeout_ms: int) -> None:
    """Wait until every code cell has run (no '[*]' prompt, the last cell numbered)."""
    page.wait_for_function(  # type: ignore[attr-defined]
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            const texts = prompts.map(p => p.textContent.trim());
            return texts.length > 0 && texts.every(t => /^\\[\\d+\\]:$/.test(t));
        }""",
        timeout=timeout_ms,
    )


def test_notebook_03_runs_and_the_temperature_slider_redraws(lab: str) -> None:
    from playwright.sync_api import sync_playwright

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{lab}/lab/tree/notebooks/{NOTEBOOK}?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000,
            )
            # before any run the stored widget reads as a picture, not as a line of raw
            # text (a notebook just opened is untrusted: Lab shows the PNG fallback)
            stored = page.locator(".jp-Notebook .jp-Cell").nth(widget_cell_index())
            stored.locator(".jp-OutputArea-output img").first.wait_for(timeout=60_000)
            shown = page.inner_text(".jp-Notebook")
            assert "Error displaying widget" not in shown and "VBox(" not in shown
            # the stored outputs go first, so what is checked below comes from this run
            page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            wait_for_idle_run(page, RUN_TIMEOUT_MS)
            assert not page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            assert "Traceback" not in page.inner_text(".jp-Notebook")

            slider = page.locator(".widget-slider", has=page.locator("label", has_text="t")).filter(
                has=page.locator(".widget-readout")
            )
            slider.first.wait_for(timeout=60_000)
            box = slider.first.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
            figure = box.locator("img").first
            figure.wait_for(timeout=30_000)
            figure.scroll_into_view_if_needed()
            sizes = figure.evaluate(
                "img => [img.naturalWidth, img.clientWidth, img.naturalHeight, img.clientHeight]"
            )
            assert sizes[0] > 0 and sizes[0] == sizes[1] and sizes[2] == sizes[3], (
                f"figure drawn at {sizes[1]}x{sizes[3]} px for a {sizes[0]}x{sizes[2]} px image"
            )
            before_source = figure.get_attribute("src")
            before = figure.screenshot()
            readout = slider.first.locator(".widget-readout")
            assert readout.inner_text().strip() == "0.10"
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("0.01")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "([img, old]) => img.src !== old && img.complete && img.naturalWidth > 0",
                arg=[figure.element_handle(), before_source],
                timeout=30_000,
            )
            after = figure.screenshot()
            page.screenshot(
                path=str(SCREENSHOT_DIR / "03_correlation_matching.png"), full_page=False
            )
            figure.screenshot(path=str(SCREENSHOT_DIR / "03_temperature_figure.png"))
            assert readout.inner_text().strip() == "0.01"
            assert after != before, "the figure did not change when t moved"
            assert not errors, f"page errors: {errors}"
        finally:
            browser.close()
