"""The package shape: subpackages of the namespace package `vl` from the card's
top-level folders, the `vl` command, placeholders that refuse, import directions."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile


from conftest import REPO, run_vl

STAGES = {"vl.shared": "shared", "vl.extract": "extract", "vl.train": "train", "vl.evaluate": "evaluate",
          "vl.data_manifests": "data_manifests"}


def test_pyproject_maps_every_folder_to_a_subpackage():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == STAGES
    packages_on_disk = set()
    for name, folder in STAGES.items():
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


def test_built_wheel_installs_the_namespace_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name, folder in STAGES.items():
        assert f"{name.replace('.', '/')}/__init__.py" in names
    assert not any(n.startswith(("train/", "extract/", "shared/", "tests/")) for n in names)
    assert "vl/__init__.py" not in names  # `vl` stays a namespace package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import vl.shared, vl.extract, vl.train, vl.evaluate, vl.data_manifests, vl.extract.cli; "
            "print(vl.shared.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip().startswith(str(site))
