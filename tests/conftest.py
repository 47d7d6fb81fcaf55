"""Shared fixtures: tiny open_clip models built, saved and loaded by the tests themselves,
image folders with every odd mode and broken file, and a CLI runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# A ResNet small enough for the CPU: 96 px input -> 3x3 grid of 256 channels.
TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
# A ViT: 32 px input, 8 px patches -> 4x4 grid of 32-wide tokens.
TINY_VIT = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{"tiny-rn": {"config": ..., "checkpoint": ...}, "tiny-vit": {...}}: architectures as
    open_clip model JSON files, and random weights saved as real checkpoint files."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, cfg in (("tiny-rn", TINY_RN), ("tiny-vit", TINY_VIT)):
        config = root / f"{name}.json"
        config.write_text(json.dumps(cfg))
        open_clip.add_model_config(config)
        torch.manual_seed(1234)
        model = open_clip.create_model(name, pretrained=None)
        checkpoint = root / f"{name}.pt"
        torch.save(model.state_dict(), checkpoint)
        out[name] = {"config": config, "checkpoint": checkpoint}
    return out


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth, photo-like RGB array (gradients and a blob), deterministic from the seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        channels.append(127 + 100 * np.sin(a * x / 17 + b * y / 23 + c * 6))
    img = np.stack(channels, -1)
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, 30)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_photos(folder: Path, n: int, start_seed: int = 0, ext: str = ".jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = 60 + 7 * (i % 5), 50 + 11 * (i % 3)  # varied sizes and aspect ratios
        p = folder / f"img_{start_seed + i:04d}{ext}"
        Image.fromarray(photo(w, h, start_seed + i)).save(p, quality=92)
        paths.append(p)
    return paths


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vl_model(backbone: str = "tiny-t5", feat_dim: int = 8, seed: int = 0, **kwargs):
    """A VLModel on a tiny random T5 or BART (`tiny-t5`, `tiny-bart`) for `feat_dim`-wide
    features, drawn after `torch.manual_seed(seed)`; kwargs go to `build_vl_model`
    (vocab_size, visual_inputs, ...). The tests' one way to make a small model."""
    import torch

    from vl.train.model import build_vl_model

    torch.manual_seed(seed)
    return build_vl_model(backbone, feat_dim, init="random", **kwargs)


@pytest.fixture
def one_torch_thread():
    """Tiny matrices: one thread is much faster than a contended pool (and as deterministic)."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_module():
    """one_torch_thread for a whole module, its module-scoped model fixtures included
    (`pytestmark = pytest.mark.usefixtures("one_torch_thread_module")`)."""
    yield from _one_thread()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "images"
    write_photos(folder, 10)
    return folder


def model_args(tiny_models, name: str = "tiny-rn") -> list[str]:
    m = tiny_models[name]
    return ["--model-config", str(m["config"]), "--pretrained", str(m["checkpoint"])]


def run_vl(args: list[str], expect: int | None = 0):
    """Run `vl ARGS` in this process; check the exit code unless expect is None."""
    from vl.shared.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, prog_name="vl")
    if expect is not None:
        assert result.exit_code == expect, (
            f"vl {' '.join(map(str, args))} exited {result.exit_code}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def vl_subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    """Start `vl ARGS` as a real process (for kill tests). Ctrl-C reaches it as in a terminal
    even when the tests themselves run in the background (`cmd &` starts with SIGINT ignored,
    and a child would inherit that)."""
    env = dict(os.environ, **kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "vl.shared.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kwargs)


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The demo world with VQA and GQA train manifests and one grid feature store of their images."""
    from vl.data_manifests.demo import write_demo_world
    from vl.data_manifests.registry import ConvertRequest, convert_dataset
    from vl.shared.cli import cli

    root = tmp_path_factory.mktemp("world")
    write_demo_world(root, images=12, videos=6)
    # as the world's convert.sh runs them: from its root, with relative paths
    requests = {
        "vqa2": ConvertRequest(split="train", questions=Path("annotations/vqa2/v2_OpenEnded_mscoco_train2014_questions.json"),
                               annotations=Path("annotations/vqa2/v2_mscoco_train2014_annotations.json"),
                               images=Path("images")),
        "gqa": ConvertRequest(split="train", questions=Path("annotations/gqa/train_balanced_questions.json"),
                              images=Path("images")),
    }
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name, req in requests.items():
            convert_dataset(name, req, Path(f"manifests/{name}_train.jsonl"))
    finally:
        os.chdir(cwd)
    lines = (root / "manifests/gqa_train.jsonl").read_text().splitlines()
    (root / "manifests/gqa8.jsonl").write_text("\n".join(lines[:8]) + "\n")
    model_cfg = root / "tiny-rn.json"
    model_cfg.write_text(json.dumps(TINY_RN))
    for name in requests:  # both use the same COCO images; the second run finds them done
        result = CliRunner().invoke(cli, ["extract", "images", "--manifest", str(root / f"manifests/{name}_train.jsonl"),
                                          "--out", str(root / "features/coco.h5"), "--model-config", str(model_cfg),
                                          "--pretrained", "none", "--layer", "grid", "--workers", "0"], prog_name="vl")
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def tokenizer_folders(world, tmp_path_factory) -> dict[str, Path]:
    """{"t5": folder, "bart": folder}: 400-token tokenizers trained on the world's manifests and
    saved as `tokenizer:` names a folder; the T5 one holds T5's 100 span sentinels
    <extra_id_0..99>, as google-t5's tokenizers do (a trained one has none)."""
    from vl.shared.manifest import DatasetManifest
    from vl.train.tokenizer import manifest_texts, train_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    manifests = [DatasetManifest.read(p) for p in sorted((world / "manifests").glob("*_train.jsonl"))]
    folders = {}
    for kind in ("t5", "bart"):
        tokenizer = train_tokenizer(manifest_texts(manifests), 400, kind)
        if kind == "t5":
            tokenizer.add_tokens([f"<extra_id_{k}>" for k in range(100)], special_tokens=True)
        folders[kind] = root / kind
        tokenizer.save_pretrained(folders[kind])
    return folders


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> tuple[Path, str]:
    """`vl demo --size tiny --quiet` once for the session: (its folder, the command's output)."""
    from vl.shared.cli import cli

    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--size", "tiny", "--quiet"], prog_name="vl")
    assert result.exit_code == 0, result.output[-3000:]
    return out, result.output
