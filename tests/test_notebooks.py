"""Every notebook runs top to bottom without errors, warnings or stderr output.

Parametrized by ``notebooks/*.ipynb``, so new lessons are covered without
editing this file. Each runs with nbclient in a temporary copy of the
notebooks folder, so the committed files are never written to.
"""

import os
import re
import shutil
from functools import lru_cache
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
WARNING = re.compile(r"\b\w*Warning\b|\bWARNING\b")
# ipykernel's own log lines about its transport, not produced by the notebook
KERNEL_NOISE = re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption.*$\n?",
                          re.MULTILINE)


REPO = NOTEBOOKS[0].parent.parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A private copy of notebooks/ (lessons may read files next to them).

    The kernels import the ``kvmviz`` of this checkout (PYTHONPATH), not
    whichever one the venv has installed in editable mode: in a git worktree
    the two differ.
    """
    path = os.environ.get("PYTHONPATH")
    dest = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(NOTEBOOKS[0].parent, dest, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + ([path] if path else [])))
        yield dest


@lru_cache(maxsize=None)
def run(path):
    """Execute the notebook at ``path`` (in the copy) once; return it."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def problems(nb):
    """Errors, stderr output and warnings in the outputs of ``nb``, as strings."""
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            text = o.get("text", "") or "".join(str(v) for k, v in o.get("data", {}).items()
                                                    if k.startswith("text/"))
            text = KERNEL_NOISE.sub("", text)
            if o.output_type == "error":
                out.append(f"cell {i}: {o.ename}: {o.evalue}")
            elif o.output_type == "stream" and o.name == "stderr" and text.strip():
                out.append(f"cell {i}: stderr: {text[:300]}")
            elif WARNING.search(text):
                out.append(f"cell {i}: warning: {text[:300]}")
    return out


def test_notebooks_exist():
    assert any(p.name == "00-start-here.ipynb" for p in NOTEBOOKS)


@pytest.mark.notebook
@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_runs_clean(workdir, name):
    nb = run(workdir / name)
    assert problems(nb) == []
    committed = nbformat.read(NOTEBOOKS[0].parent / name, as_version=4)
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs; clear them"


@pytest.mark.notebook
def test_start_here_leaves_static_step_output(workdir):
    """The Stepper's static copy (inline SVG + text) is in the saved outputs: the MOVE at step 0."""
    nb = run(workdir / "00-start-here.ipynb")
    statics = [o for c in nb.cells for o in c.get("outputs", [])
               if o.output_type == "display_data" and "static copy" in o.get("data", {}).get("text/html", "")]
    assert len(statics) == 1
    data = statics[0]["data"]
    assert data["text/plain"].startswith("step 0 of 28")          # a MOVE, ready to step
    assert data["text/html"].count("<svg") == 2 and len(data["text/html"]) > 10000
    texts = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "all invariants hold: True" in texts


def test_problems_sees_errors_stderr_and_warnings():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="oops"),
                    nbformat.v4.new_output("stream", name="stdout", text="DeprecationWarning: old"),
                    nbformat.v4.new_output("stream", name="stdout", text="ok\n[IPKernelApp] WARNING | Kernel "
                                           "is running over TCP without encryption. Use IPC.\n"),
                    nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    nb.cells.append(cell)
    assert [p.split(":")[1].strip() for p in problems(nb)] == ["stderr", "warning", "ValueError"]


@pytest.mark.notebook
def test_make_html_pages_embed_the_player(workdir, monkeypatch):
    """Under ``make html`` (KVMVIZ_HTML_PLAYER) the exported page of 00 holds the MOVE's player, all 28 steps."""
    import html as html_lib
    from nbconvert import HTMLExporter
    monkeypatch.setenv("KVMVIZ_HTML_PLAYER", "1")
    nb = nbformat.read(workdir / "00-start-here.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    page, _ = HTMLExporter().from_notebook_node(nb)
    frames = re.findall(r'<iframe srcdoc="(.*?)" title="HTML player', page, flags=re.S)
    assert len(frames) == 1 and "static copy (for readers without a kernel)" not in page
    assert "HBox(children=" not in page                           # no widget left as its text repr
    player = html_lib.unescape(frames[0])
    assert player.startswith("<!DOCTYPE html>") and "step 28 of 28: the ioctl returned 0" in player
    assert '"start": 0' in player                                  # opens where the Stepper is: step 0
    assert "<script src" not in player and "http" not in player.split("<script>")[1]
