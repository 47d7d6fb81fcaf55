"""The package shape: subpackages of the package `vl` from the card's top-level folders
(and `vl` itself, the Python API, from vl/), the `vl` command, placeholders that refuse, import directions,
no import cycles between modules, and the metrics a leaf."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, run_vl

STAGES = {"vl.shared": "shared", "vl.extract": "extract", "vl.train": "train", "vl.evaluate": "evaluate",
          "vl.data_manifests": "data_manifests"}
PACKAGES = {"vl": "vl", **STAGES}  # vl/ holds the front door: the Python API and `vl predict`


def test_pyproject_maps_every_folder_to_a_subpackage():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == PACKAGES
    packages_on_disk = set()
    for name, folder in PACKAGES.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            packages_on_disk.add(".".join([name, *rel.parts]))
    assert set(cfg["packages"]) == packages_on_disk  # a new sub-folder must be listed, or the wheel misses it


def test_vl_help_version_and_stage_groups():
    text = run_vl(["--help"]).stdout
    for group in ("data", "extract", "train", "evaluate", "report"):
        assert re.search(rf"^\s+{group}\s", text, re.M), group
    assert run_vl(["--version"]).stdout.strip().startswith("vl, version ")
    for group in ("data", "extract", "train", "evaluate"):
        assert "Usage: vl" in run_vl([group, "--help"]).stdout


def test_vl_help_does_not_import_torch():
    code = ("import sys; from vl.shared.cli import cli; from click.testing import CliRunner; "
            "CliRunner().invoke(cli, ['--help']); CliRunner().invoke(cli, ['extract', '--help']); "
            "import vl.shared; print(sorted(m for m in ('torch', 'h5py', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


ALLOWED = {  # DESIGN.md: imports run one way
    "shared": {"shared"},
    "data_manifests": {"shared", "data_manifests"},
    "extract": {"shared", "extract"},
    "train": {"shared", "train", "evaluate.metrics"},
    "evaluate": {"shared", "evaluate", "train"},
    "vl": {"shared", "data_manifests", "extract", "train", "evaluate", "runs", "cli"},  # above every stage
}


def test_import_directions():
    problems = []
    for folder, allowed in ALLOWED.items():
        for py in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                for name in names:
                    if name.startswith("vl."):
                        target = name.split(".", 1)[1]
                        if not any(target == a or target.startswith(a + ".") for a in allowed):
                            problems.append(f"{py.relative_to(REPO)} imports {name}")
    assert problems == []


def vl_modules() -> dict[str, Path]:
    """Every module of `vl` by its dotted name (a package by its __init__.py)."""
    modules = {}
    for name, folder in PACKAGES.items():
        for py in (REPO / folder).rglob("*.py"):
            parts = py.relative_to(REPO / folder).with_suffix("").parts
            modules[".".join([name, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = py
    return modules


def _module_level_imports(tree: ast.Module):
    """The import statements that run when the module is imported: those in its body and in
    module-level if/try/with blocks and class bodies, not those inside functions or under
    `if TYPE_CHECKING:`."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
        else:
            stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            stack += [h for h in getattr(node, "handlers", [])]


def import_graph(modules: dict[str, Path], deferred: bool = False) -> dict[str, set[str]]:
    """module -> the vl modules its module-level imports load (with `deferred`, its imports
    inside functions too): `import a.b`, `from a.b import c` (and a.b.c when c is a
    module), relative imports resolved."""
    graph = {}
    for name, py in modules.items():
        package = name if py.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(py.read_text())
        statements = (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))) if deferred else (
            _module_level_imports(tree))
        targets = set()
        for node in statements:
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_import_cycles_are_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert import_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    code = "import os\nfrom . import sibling\nfrom .. import up\ndef f():\n    import inside\n"
    tree = ast.parse(code)
    assert [ast.unparse(n) for n in _module_level_imports(tree)][::-1] == [
        "import os", "from . import sibling", "from .. import up"]


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "with-imports-in-functions"])
def test_no_import_cycles_between_vl_modules(deferred):
    """Module level: a cycle there breaks an import half-way. With the imports inside
    functions as well: moving one side of a loop into a function hides it, and does not
    remove it (train.loop and train.restore once imported each other that way)."""
    modules = vl_modules()
    graph = import_graph(modules, deferred)
    assert graph["vl.train.loop"] >= {"vl.train.build", "vl.train.predict", "vl.shared.run_dir"}  # the graph sees edges
    cycles = import_cycles(graph)
    where = "inside functions or at module level" if deferred else "at module level"
    assert cycles == [], f"import cycles (modules that import each other {where}): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_metrics_are_a_leaf_without_torch_or_training():
    modules = vl_modules()
    graph = import_graph(modules)
    metrics = [m for m in modules if m == "vl.evaluate.metrics" or m.startswith("vl.evaluate.metrics.")]
    assert len(metrics) > 1
    problems = []
    for name in metrics:
        for node in _module_level_imports(ast.parse(modules[name].read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"{name} imports {n}" for n in names if n.split(".")[0] == "torch"]
        problems += [f"{name} imports {t}" for t in graph[name] if t.startswith("vl.train")]
    assert problems == []
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {sorted(metrics)!r}]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('vl.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_built_wheel_installs_the_namespace_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name, folder in STAGES.items():
        assert f"{name.replace('.', '/')}/__init__.py" in names
    assert not any(n.startswith(("train/", "extract/", "shared/", "tests/")) for n in names)
    assert "vl/__init__.py" in names and "vl/runs.py" in names  # `import vl; vl.load_run(...)`
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import vl.shared, vl.extract, vl.train, vl.evaluate, vl.data_manifests, vl.extract.cli; "
            "print(vl.shared.__file__); print(vl.load_run.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout
    assert out.splitlines()[0].startswith(str(site)) and out.splitlines()[1] == "vl.runs"


def test_shell_completion_as_the_readme_says():
    """`eval "$(_VL_COMPLETE=bash_source vl)"` (README): the script, and completion of a command name."""
    import os
    import shutil

    vl_bin = shutil.which("vl", path=str(Path(sys.executable).parent)) or "vl"
    script = subprocess.run([vl_bin], env={**os.environ, "_VL_COMPLETE": "bash_source"}, capture_output=True,
                            text=True, check=True).stdout
    assert "_vl_completion" in script and "complete " in script
    done = subprocess.run([vl_bin], env={**os.environ, "_VL_COMPLETE": "bash_complete", "COMP_WORDS": "vl pre",
                                         "COMP_CWORD": "1"}, capture_output=True, text=True, check=True).stdout
    assert "plain,predict" in done.splitlines()


def test_a_folder_that_cannot_be_written_is_one_line(world, tmp_path):
    """Even as root, /sys refuses new folders: the error names the path, no traceback."""
    from click.testing import CliRunner

    from vl.shared.cli import cli, os_error_message

    result = CliRunner().invoke(cli, ["data", "convert", "gqa", "--split", "train", "--questions",
                                      str(world / "annotations/gqa/train_balanced_questions.json"), "--images",
                                      str(world / "images"), "--out", "/sys/vl-test/m.jsonl"], prog_name="vl")
    assert result.exit_code == 1 and "error: permission denied: /sys/vl-test" in result.output, result.output
    assert "Traceback" not in result.output
    import errno

    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/f.h5"))
    assert full.startswith("no space left on the device: writing /data/f.h5 failed") and "run the same command again" in full
    assert os_error_message(FileNotFoundError(2, "gone", "x")) is None  # the rest stay tracebacks: bugs to see
