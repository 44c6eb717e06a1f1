"""The project's shape: dependencies agree, the engine stays pure, the two commands exist."""

import ast
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Not the engine: kvmviz/viz draws; kvmviz/host drives /dev/kvm; kvmviz/trace/capture*.py runs QEMU
# (a process, a clock, a socket); teach/your_kernel.py runs lesson 11's calls on /dev/kvm.
OUTSIDE_ENGINE = {"trace/capture.py", "trace/capture_cli.py", "cli.py",    # cli.py times `kvmviz check`
                  "teach/your_kernel.py"}
ENGINE = [p for p in (ROOT / "kvmviz").rglob("*.py")
          if not {"viz", "host"} & set(p.relative_to(ROOT / "kvmviz").parts)
          and p.relative_to(ROOT / "kvmviz").as_posix() not in OUTSIDE_ENGINE]


def _name(req):
    return re.split(r"[<>=!\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    runtime = {_name(r) for r in meta["dependencies"] + extras["viz"] + extras["lab"]} - {"kvmviz"}
    conda = set()
    deps = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in deps.splitlines():
        m = re.match(r"\s+-\s+([A-Za-z0-9_.-]+)", line)
        if m and m.group(1) not in ("python", "pip"):
            conda.add(m.group(1).replace("matplotlib-base", "matplotlib"))
    assert conda == runtime


def test_engine_imports_nothing_from_jupyter_or_plotting():
    code = ("import sys, kvmviz, kvmviz.engine.vm, kvmviz.engine.tree.protocol, kvmviz.engine.invariants;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'matplotlib','ipywidgets','IPython','ipykernel','jupyter_core','numpy'});"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engine_reads_no_clock_and_no_unseeded_randomness():
    for path in ENGINE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"time", "datetime"} & {n.split(".")[0] for n in names}, path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "random":
                assert node.attr == "Random", f"{path}: random.{node.attr} is unseeded"


def test_the_engine_never_imports_the_real_kernel_binding():
    for path in ENGINE:
        if path.stem.endswith("cli"):
            continue          # command lines (host-check, replay --host) may drive the real kernel
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "host" not in module.split("."), f"{path}: imports {module}"


def test_every_engine_module_has_a_doctest_example():
    for path in (ROOT / "kvmviz").rglob("*.py"):
        text = path.read_text()
        if path.name == "__main__.py" or not text.strip():
            continue
        assert ">>>" in text, f"{path.relative_to(ROOT)} has no >>> example"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "`make lab`" in readme and "`make test`" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "notebooks/00-start-here.ipynb" in makefile


def _module_imports(path):
    """Absolute kvmviz modules that ``path`` imports, at module level and inside functions."""
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = {"top": set(), "inner": set()}
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target + "." + a.name for a in node.names] if not node.module else [target]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kvmviz"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("kvmviz")]
        else:
            continue
        found["top" if id(node) in top else "inner"].update(names)
    return here.removesuffix(".__init__"), found


def _graph():
    modules = {}
    for path in (ROOT / "kvmviz").rglob("*.py"):
        name, found = _module_imports(path)
        modules[name] = found
    known = set(modules)

    def resolve(target):              # "kvmviz.engine.vm.VM" -> "kvmviz.engine.vm"
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target
    return {m: {k: {resolve(t) for t in v} - {m, ""} for k, v in f.items()} for m, f in modules.items()}


def test_the_package_has_no_import_cycle():
    graph = _graph()
    edges = {m: {t for t in f["top"] | f["inner"] if not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, f in graph.items()}           # a package and its own modules are one thing
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for t in sorted(edges.get(m, ())):
            assert state.get(t) != "open", "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in state:
                visit(t)
        path.pop()
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_engine_imports_nothing_above_it():
    for module, found in _graph().items():
        if module.startswith("kvmviz.engine"):
            outside = {t for t in found["top"] | found["inner"]
                       if t.startswith("kvmviz") and not t.startswith("kvmviz.engine") and t != "kvmviz"}
            assert not outside - {"kvmviz.variants"}, f"{module} imports {outside}"
