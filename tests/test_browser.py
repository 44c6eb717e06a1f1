"""Real-browser test: JupyterLab in headless Chromium runs 00-start-here and drives the Stepper.

Starts JupyterLab on a free loopback port with a token, in a temporary copy of
``notebooks/`` (autosave never touches the real files), opens the notebook
with Python Playwright driving the system Chromium (never ``playwright
install``), runs every cell, clicks next, back and play, and checks what the
page shows. Screenshots go to pytest's ``tmp_path``. Without Chromium the
test is skipped, or fails when ``CI=true``.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
TOKEN = "kvmviz-browser-test"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]


def chromium():
    """Path of a system Chromium/Chrome, or None."""
    return (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or shutil.which("google-chrome"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_exe():
    exe = chromium()
    if exe is None:
        reason = ("no Chromium found (looked for $CHROMIUM, chromium, chromium-browser, google-chrome); "
                  "`make browser` installs Debian's chromium when run as root")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a private copy of notebooks/; yields its base URL."""
    root = tmp_path_factory.mktemp("lab")
    nbdir = root / "notebooks"
    shutil.copytree(NOTEBOOKS, nbdir)
    settings = root / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, HOME=str(root), JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
               MPLCONFIGDIR=str(root / "mpl"))
    port = free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
           f"--ServerApp.root_dir={nbdir}", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_stepper_in_jupyterlab(browser_exe, lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_exe, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(60_000)
            page.goto(f"{lab}/lab/tree/00-start-here.ipynb?token={TOKEN}&reset")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
            page.wait_for_function("""() => {
                const s = document.querySelector('#jp-main-statusbar');
                return s && /\\| Idle/.test(s.textContent) && !s.textContent.includes('No Kernel'); }""")
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
            page.wait_for_selector(".jp-OutputArea-output:has-text('all invariants hold: True')")

            stage, pos, gen = page.locator(".t-stage .kv-current"), page.locator(".t-pos"), page.locator(".t-gen")
            timeline = page.locator("img.t-timeline")
            expect(pos).to_have_text(re.compile(r"^step 2 of 2\+"))
            expect(stage).to_have_text("validate")
            expect(gen).to_contain_text("as0: generation 0xa")
            page.locator(".t-stepper").scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "1-after-run-all.png")

            before = timeline.get_attribute("src")
            page.click(".t-next")
            expect(stage).to_have_text("prepare")
            expect(pos).to_have_text(re.compile(r"^step 3 of 3\+"))
            expect(page.locator(".t-text")).to_contain_text("kvm_set_memslot")
            _wait_changed(timeline, before)
            page.locator(".t-stepper").screenshot(path=tmp_path / "2-after-next.png")

            page.click(".t-back")
            expect(stage).to_have_text("validate")
            expect(pos).to_have_text(re.compile(r"^step 2 of 3\+"))

            page.locator(".t-speed select").select_option(label="fast (0.2 s)")
            figure_before = page.locator("img.t-figure").get_attribute("src")
            page.locator(".t-play button").first.click()
            expect(pos).to_have_text(re.compile("the ioctl returned 0"), timeout=90_000)
            expect(stage).to_have_text("commit")
            expect(gen).to_contain_text("as0: generation 0xc")
            _wait_changed(page.locator("img.t-figure"), figure_before)
            expect(page.locator(".jp-OutputArea-output:has-text('static copy')").first).to_contain_text(
                "the ioctl returned 0")
            page.locator(".t-stepper").screenshot(path=tmp_path / "3-after-play.png")
        finally:
            browser.close()
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["1-after-run-all.png", "2-after-next.png", "3-after-play.png"]
    print(f"screenshots in {tmp_path}")


def _wait_changed(locator, old, timeout=10):
    """Wait until the image's ``src`` differs from ``old`` (a redraw happened)."""
    deadline = time.time() + timeout
    while locator.get_attribute("src") == old:
        assert time.time() < deadline, "the image was not redrawn"
        time.sleep(0.2)
