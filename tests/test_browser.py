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


MIN_TEXT_PX = """() => {
    let low = 1e9;
    for (const t of document.querySelectorAll('.t-figure svg text, .t-timeline svg text, #kv-figure svg text, #kv-timeline svg text')) {
        const m = t.getScreenCTM();
        const px = parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
        if (t.textContent.trim() && t.getBoundingClientRect().width > 0) low = Math.min(low, px);
    }
    return low; }"""


def _start_here_stepper():
    """The notebook's first Stepper, built in this process by running its code cells up to it."""
    import nbformat
    nb = nbformat.read(NOTEBOOKS / "00-start-here.ipynb", as_version=4)
    ns = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(cell.source, ns)
            if "st = viz.Stepper" in cell.source:
                return ns["st"]
    raise AssertionError("00-start-here has no Stepper cell")


def test_stepper_in_jupyterlab(browser_exe, lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("KVMVIZ_SHOTS", tmp_path))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_exe, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{lab}/lab/tree/00-start-here.ipynb?token={TOKEN}&reset")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
            page.wait_for_function("""() => {
                const s = document.querySelector('#jp-main-statusbar');
                return s && /\\| Idle/.test(s.textContent) && !s.textContent.includes('No Kernel'); }""")
            if not page.locator(".jp-FileBrowser").is_visible():
                page.click("li[data-id='filebrowser']")
            expect(page.locator(".jp-FileBrowser")).to_be_visible()
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
            page.wait_for_selector(".jp-OutputArea-output:has-text('all invariants hold: True')")

            stepper = page.locator(".t-stepper")
            stage, pos = page.locator(".t-stage"), page.locator(".t-pos")
            figure, timeline = page.locator(".t-figure"), page.locator(".t-timeline .kv-cursor rect")
            # first contact: a MOVE ready at step 0, with the hint
            expect(pos).to_have_text("step 0 of 28")
            expect(page.locator(".t-hint")).to_contain_text("press next ▶ or →")
            page.evaluate("""() => { const el = document.querySelector('.t-stepper');
                el.scrollIntoView({block: 'start'}); }""")
            page.wait_for_timeout(300)
            page.screenshot(path=shots / "1-first-view-1400x900.png")
            box = stepper.bounding_box()
            panel = page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel .jp-Notebook").first.bounding_box()
            sidebar = page.locator(".jp-FileBrowser").bounding_box()
            print(f"Stepper at 1400x900 with the file browser open: {box['width']:.0f} x {box['height']:.0f} px")
            assert box["x"] >= sidebar["x"] + sidebar["width"] - 1
            assert box["x"] + box["width"] <= panel["x"] + panel["width"] + 1, (box, panel)
            assert box["y"] >= panel["y"] - 1 and box["y"] + box["height"] <= panel["y"] + panel["height"] + 1, (box, panel)
            assert page.evaluate(MIN_TEXT_PX) >= 9.99

            # next / back / keys change the stage, the counter, the picture and the cursor
            fig0, x0 = figure.inner_html(), timeline.get_attribute("x")
            page.click(".t-next")
            expect(pos).to_have_text("step 1 of 28")
            expect(stage.locator(".kv-current")).to_have_text("validate")
            expect(timeline).not_to_have_attribute("x", x0)
            page.click(".t-pos")
            for key, want in (("ArrowRight", "step 2 of 28"), ("ArrowRight", "step 3 of 28"),
                              ("ArrowLeft", "step 2 of 28"), ("End", "step 28 of 28: the ioctl returned 0"),
                              ("Home", "step 0 of 28")):
                page.keyboard.press(key)
                expect(pos).to_have_text(want)
                if key == "End":                                  # slot 2 moved: a new object
                    page.wait_for_function("(old) => document.querySelector('.t-figure').innerHTML !== old",
                                           arg=fig0)
            print(f"click-to-picture in the browser, {_latency(page)}")
            expect(pos).to_have_text("step 10 of 28")
            page.keyboard.press("Home")
            expect(pos).to_have_text("step 0 of 28")
            texts = []
            for k in range(4):
                texts.append(page.locator(".t-text").inner_text())
                page.keyboard.press("ArrowRight")
                expect(pos).to_have_text(f"step {k + 1} of 28")
                page.wait_for_function("(old) => document.querySelector('.t-text').innerText !== old",
                                       arg=texts[-1])
            expect(pos).to_have_text("step 4 of 28")
            expect(stage.locator(".kv-current")).to_have_text("invalidate")
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            expect(pos).to_have_text("step 7 of 28")             # rcu_assign_pointer: the INVALID copy goes live
            expect(page.locator(".t-text")).to_contain_text("rcu_assign_pointer")
            expect(figure).to_contain_text("set1 (ACTIVE)")
            stepper.screenshot(path=shots / "2-step-7.png")

            # a preset during the call finishes it; begin then starts the preset's call
            page.locator(".t-preset select").select_option(label="DELETE a slot")
            expect(pos).to_have_text("step 28 of 28: the ioctl returned 0")
            expect(page.locator(".t-hint")).to_contain_text("finished first")
            page.click(".t-begin")
            expect(pos).to_have_text("step 0 of 26")
            expect(page.locator(".t-error")).to_have_text("")
            assert stage.locator(".kv-skipped").count() == 0          # a DELETE runs every stage
            assert page.evaluate(MIN_TEXT_PX) >= 9.99

            # every view of the Stepper, and the lesson figure above it, at >= 10 px on screen
            smallest = {"objects + pointer": page.evaluate(MIN_TEXT_PX)}
            for view in ("gfn ranges", "trees"):
                old = figure.inner_html()
                page.locator(".t-view button", has_text=view).click()
                page.wait_for_function("(old) => document.querySelector('.t-figure').innerHTML !== old", arg=old)
                smallest[view] = page.evaluate(MIN_TEXT_PX)
                stepper.screenshot(path=shots / f"4-view-{view.replace(' ', '-')}.png")
            box = stepper.bounding_box()
            print(f"smallest figure text per Stepper view: {smallest}; with the trees: "
                  f"{box['width']:.0f} x {box['height']:.0f} px")
            assert min(smallest.values()) >= 9.99, smallest
            # lesson figures are PNGs at twice their size, shown at their size: scale 1, so their
            # text is the size kvmviz.viz.figure.legibility checks (>= 10 px, tests/test_legibility.py)
            scales = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img')]
                .filter(i => i.getBoundingClientRect().width > 0)
                .map(i => i.getBoundingClientRect().width / (i.naturalWidth / 2))""")
            assert scales and all(abs(s - 1) < 0.01 for s in scales), scales

            # the HTML player of the same MOVE, from file://, shows the same step texts
            path = tmp_path / "move.html"
            _start_here_stepper().save_html(path)
            player = browser.new_page(viewport={"width": 1000, "height": 700})
            player.goto(path.as_uri())
            seen = []
            for k in range(4):
                seen.append(player.locator("#kv-text").inner_text())
                player.keyboard.press("ArrowRight")
            expect(player.locator("#kv-pos")).to_have_text("step 4 of 28")
            assert seen == texts
            assert player.evaluate(MIN_TEXT_PX) >= 9.99
            player.screenshot(path=shots / "3-player.png")

            # the same player as make html embeds it: in an iframe of a page, keys go to it once clicked
            from kvmviz.viz.player_html import iframe
            framed = tmp_path / "framed.html"
            framed.write_text(f"<!DOCTYPE html><html><body><p>a notebook page</p>{iframe(_start_here_stepper())}"
                              "</body></html>", encoding="utf-8")
            outer = browser.new_page(viewport={"width": 1200, "height": 900})
            outer.goto(framed.as_uri())
            inner = outer.frame_locator("iframe")
            expect(inner.locator("#kv-pos")).to_have_text("step 0 of 28")
            inner.locator("#kv-pos").click()
            outer.keyboard.press("ArrowRight")
            expect(inner.locator("#kv-pos")).to_have_text("step 1 of 28")
            outer.screenshot(path=shots / "5-player-in-a-page.png")
        finally:
            browser.close()
    assert {"1-first-view-1400x900.png", "2-step-7.png", "3-player.png", "4-view-trees.png",
            "5-player-in-a-page.png"} <= {p.name for p in shots.glob("*.png")}
    print(f"screenshots in {shots}")


def _latency(page, presses=10):
    """Median and p90 ms from a → key press to the timeline cursor having moved, over ``presses`` steps."""
    times = []
    for _ in range(presses):
        old = page.locator(".t-timeline .kv-cursor rect").get_attribute("x")
        t = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("(old) => { const r = document.querySelector('.t-timeline .kv-cursor rect');"
                               " return r && r.getAttribute('x') !== old; }", arg=old, polling="raf")
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return f"median {times[len(times) // 2]:.0f} ms, p90 {times[int(len(times) * 0.9) - 1]:.0f} ms"


def _wait_changed(locator, old, timeout=10):
    """Wait until the image's ``src`` differs from ``old`` (a redraw happened)."""
    deadline = time.time() + timeout
    while locator.get_attribute("src") == old:
        assert time.time() < deadline, "the image was not redrawn"
        time.sleep(0.2)
