"""The demo world through every converter, `vl data check` and `vl extract images
--manifest`: eight valid manifests whose media all exist (issue 3's 'done when')."""
from __future__ import annotations

import json
import os
import shlex

import pytest

from conftest import model_args, run_vl
from vl.shared import DatasetManifest, FeatureStore

DATASETS = ("vqa2", "gqa", "nlvr2", "coco-caption", "tvqa", "how2qa", "tvc", "yc2c")


@pytest.fixture(scope="module")
def converted_world(tmp_path_factory):
    """Write a small demo world, then run the convert commands its convert.sh lists,
    from inside the world's folder as the script does."""
    root = tmp_path_factory.mktemp("world") / "demo_world"
    run_vl(["data", "demo", "--out", root, "--images", 24, "--videos", 6])
    script = (root / "convert.sh").read_text().splitlines()
    commands = [shlex.split(line)[1:] for line in script if line.startswith("vl data convert")]
    here = os.getcwd()
    os.chdir(root)
    try:
        for args in commands:
            run_vl(args)
    finally:
        os.chdir(here)
    return root, commands


def test_demo_lists_eight_convert_commands_one_per_dataset(converted_world):
    _, commands = converted_world
    assert sorted(c[2] for c in commands) == sorted(DATASETS)


def test_every_manifest_is_valid_and_its_media_exist(converted_world):
    root, _ = converted_world
    for name in DATASETS:
        path = root / "manifests" / f"{name.replace('-', '_')}_train.jsonl"
        manifest = DatasetManifest.read(path)
        assert manifest.examples, name
        assert manifest.meta.dataset == name and manifest.meta.sources
        report = run_vl(["data", "check", path, "--json"])
        data = json.loads(report.stdout)
        assert data["media_checked"] and data["missing_media"] == [], name
        assert data["with_gold"] == data["examples"], name


def test_manifest_media_extract_into_a_store(converted_world, tiny_models, tmp_path):
    root, _ = converted_world
    manifest = root / "manifests" / "nlvr2_train.jsonl"
    out = tmp_path / "nlvr2.h5"
    run_vl(["extract", "images", "--manifest", manifest, "--out", out, *model_args(tiny_models), "--workers", 0])
    store = FeatureStore(out)
    assert sorted(store.ids) == sorted(DatasetManifest.read(manifest).media_ids())
    assert store.failures == []


def test_readme_lists_the_same_eight_commands_as_the_demo(converted_world):
    from conftest import REPO

    _, commands = converted_world
    text = (REPO / "README.md").read_text()
    section = text[text.index("### `vl data demo"):]
    section = section[:section.index("\n### ", 1)]  # the demo world's section, up to the next heading
    readme = [shlex.split(line)[1:] for line in section.splitlines()
              if line.startswith("vl data convert") and "DATASET" not in line]
    assert readme == commands
