"""`vl extract images` end to end on tiny models loaded through the real
`--pretrained FILE` path: correctness, shapes, inputs, resume, refusal."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import model_args, run_vl, write_photos
from vl.shared import FeatureStore


def reference_features(tiny_models, name: str, paths: list[Path], pool: int | None):
    """The model applied to each preprocessed image alone, built independently of vl:
    open_clip's own transform and, for the ResNet, the layers called one by one."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(tiny_models[name]["checkpoint"]))
    model.eval()
    grids, pooled = [], []
    with torch.no_grad():
        for p in paths:
            x = preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
            v = model.visual
            if name == "tiny-rn":
                g = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))  # (1, C, H, W)
            else:
                tokens = v.transformer(v._embeds(x))  # (1, 1 + H*W, C)
                tokens = v.ln_post(tokens[:, 1:])
                side = int(tokens.shape[1] ** 0.5)
                g = tokens.transpose(1, 2).reshape(1, -1, side, side)
            if pool:
                g = torch.nn.functional.adaptive_max_pool2d(g, pool)
            grids.append(g.flatten(2).transpose(1, 2)[0].numpy())
            pooled.append(model.encode_image(x)[0].numpy())
    return np.stack(grids), np.stack(pooled)


@pytest.mark.parametrize("name,pool,grid_shape", [
    ("tiny-rn", None, (9, 256)),   # 96 px / 32 = 3x3 layer-4 grid
    ("tiny-rn", 2, (4, 256)),      # adaptive max pool to 2x2
    ("tiny-vit", None, (16, 32)),  # 32 px / 8 px patches = 4x4 tokens
    ("tiny-vit", 2, (4, 32)),
])
def test_batched_extraction_equals_model_on_each_image(tiny_models, photos, tmp_path, name, pool, grid_shape):
    out = tmp_path / "f.h5"
    args = ["extract", "images", "--images", photos, "--out", out, *model_args(tiny_models, name),
            "--layer", "both", "--batch-size", 4, "--workers", 0, "--dtype", "float32", "--device", "cpu"]
    if pool:
        args += ["--pool", pool]
    run_vl(args)
    store = FeatureStore(out)
    paths = sorted(photos.glob("*.jpg"))
    assert store.ids == [p.stem for p in paths]
    assert store.item_shape("grid") == grid_shape
    assert store.features == ("grid", "pooled")
    grids, pooled = reference_features(tiny_models, name, paths, pool)
    np.testing.assert_allclose(store.get_many([p.stem for p in paths], "grid"), grids, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(store.get_many([p.stem for p in paths], "pooled"), pooled, rtol=1e-4, atol=1e-4)
    prov = store.provenance
    assert prov["encoder"]["weights"]["source"] == "file"
    assert prov["features"]["pool"] == pool and prov["features"]["layer"] == "both"
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["provenance"]["encoder"] == prov["encoder"]
    assert sidecar["failures"] == []


def test_layer_pooled_only_and_float16_storage(tiny_models, photos, tmp_path, monkeypatch):
    from vl.extract import images

    monkeypatch.setattr(images, "WORKER_CHUNK", 2)  # two workers hand over 2 images at a time; batches of 3
    out = tmp_path / "p.h5"
    run_vl(["extract", "images", "--images", photos, "--out", out, *model_args(tiny_models, "tiny-rn"),
            "--layer", "pooled", "--workers", 2, "--batch-size", 3])
    store = FeatureStore(out)
    assert store.features == ("pooled",)
    assert store.item_shape() == (32,) and store.dtype() == np.float16
    paths = sorted(photos.glob("*.jpg"))
    _, pooled = reference_features(tiny_models, "tiny-rn", paths, None)
    np.testing.assert_allclose(store.get_many([p.stem for p in paths]).astype(np.float32), pooled, rtol=2e-3, atol=2e-3)


def test_squash_resize_differs_from_center_crop_and_is_recorded(tiny_models, tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (60, 1))).convert("RGB").save(folder / "w.png")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    common = ["extract", "images", "--images", folder, *model_args(tiny_models, "tiny-rn"), "--workers", 0]
    run_vl([*common, "--out", a])
    run_vl([*common, "--out", b, "--resize", "squash"])
    assert FeatureStore(a).provenance["preprocess"]["resize_mode"] == "shortest"
    assert FeatureStore(b).provenance["preprocess"]["resize_mode"] == "squash"
    assert not np.allclose(FeatureStore(a).get("w"), FeatureStore(b).get("w"))


def test_inputs_from_list_relpath_and_manifest(tiny_models, tmp_path):
    from vl.shared import ManifestMeta, write_manifest

    root = tmp_path / "media"
    write_photos(root / "train", 2)
    write_photos(root / "val", 2)  # same file names in two folders
    rel = ["extract", "images", *model_args(tiny_models, "tiny-rn"), "--workers", 0]

    dup = run_vl([*rel, "--images", root, "--out", tmp_path / "dup.h5"], expect=1)
    assert "duplicate ids" in dup.stderr and "--id-from relpath" in dup.stderr
    assert not (tmp_path / "dup.h5").exists()

    run_vl([*rel, "--images", root, "--id-from", "relpath", "--out", tmp_path / "rel.h5"])
    assert sorted(FeatureStore(tmp_path / "rel.h5").ids) == [
        "train/img_0000", "train/img_0001", "val/img_0000", "val/img_0001"]

    listing = root / "list.txt"
    listing.write_text("# a comment\ntrain/img_0000.jpg\nmine\tval/img_0001.jpg\n")
    run_vl([*rel, "--list", listing, "--out", tmp_path / "list.h5"])
    assert sorted(FeatureStore(tmp_path / "list.h5").ids) == ["img_0000", "mine"]

    meta = ManifestMeta(dataset="toy", converter="test", media_root=str(root / "train"))
    manifest = write_manifest(tmp_path / "toy.jsonl", [
        {"id": "q1", "task": "vqa", "split": "val", "media": ["img_0000"], "answers": ["red"]},
        {"id": "q2", "task": "vqa", "split": "val", "media": ["img_0001"], "answers": ["blue"]},
        {"id": "q3", "task": "vqa", "split": "val", "media": ["img_0000"], "answers": ["two"]},
        {"id": "q4", "task": "vqa", "split": "val", "media": ["img_0404"], "answers": ["none"]},
    ], meta)
    result = run_vl([*rel, "--manifest", manifest.path, "--out", tmp_path / "m.h5"])
    store = FeatureStore(tmp_path / "m.h5")
    assert sorted(store.ids) == ["img_0000", "img_0001"]
    assert [(f["id"], f["reason"]) for f in store.failures] == [("img_0404", "file not found")]
    assert "1 failed" in result.stderr


def test_resume_skips_finished_ids_and_matches_one_shot_run(tiny_models, tmp_path):
    folder = tmp_path / "images"
    write_photos(folder, 6)
    common = ["extract", "images", *model_args(tiny_models, "tiny-rn"), "--workers", 0, "--batch-size", 4]
    run_vl([*common, "--images", folder, "--out", tmp_path / "once.h5"])

    partial = tmp_path / "partial"
    partial.mkdir()
    for p in sorted(folder.glob("*.jpg"))[:4]:
        (partial / p.name).symlink_to(p)
    run_vl([*common, "--images", partial, "--out", tmp_path / "grown.h5"])
    second = run_vl([*common, "--images", folder, "--out", tmp_path / "grown.h5"])
    assert "2 extracted, 4 already in store" in second.stderr
    third = run_vl([*common, "--images", folder, "--out", tmp_path / "grown.h5"])
    assert "0 extracted, 6 already in store" in third.stderr

    once, grown = FeatureStore(tmp_path / "once.h5"), FeatureStore(tmp_path / "grown.h5")
    assert sorted(once.ids) == sorted(grown.ids)
    np.testing.assert_array_equal(once.get_many(once.ids), grown.get_many(once.ids))
    runs = grown.provenance["runs"]
    assert [r["extracted"] for r in runs] == [4, 2]  # the third run had nothing to do and wrote nothing


def test_refuses_other_settings_names_the_field_and_overwrite_replaces(tiny_models, photos, tmp_path):
    out = tmp_path / "f.h5"
    common = ["extract", "images", "--images", photos, "--out", out, "--workers", 0]
    run_vl([*common, *model_args(tiny_models, "tiny-rn")])
    before = FeatureStore(out).get_many(FeatureStore(out).ids)

    pooled = run_vl([*common, *model_args(tiny_models, "tiny-rn"), "--pool", 2], expect=1)
    assert "features.pool is None, this run asks for 2" in pooled.stderr
    assert "--overwrite" in pooled.stderr

    # Same architecture, other weights: the checkpoint's sha256 differs.
    import open_clip

    other = tmp_path / "other.pt"
    torch.manual_seed(99)
    torch.save(open_clip.create_model("tiny-rn", pretrained=None).state_dict(), other)
    weights = run_vl([*common, "--model-config", tiny_models["tiny-rn"]["config"], "--pretrained", other], expect=1)
    assert "encoder.weights.sha256" in weights.stderr
    np.testing.assert_array_equal(FeatureStore(out).get_many(FeatureStore(out).ids), before)  # untouched

    run_vl([*common, "--model-config", tiny_models["tiny-rn"]["config"], "--pretrained", other, "--overwrite"])
    after = FeatureStore(out)
    assert after.provenance["encoder"]["weights"]["path"] == str(other.resolve())
    assert not np.allclose(after.get_many(after.ids), before)


def test_random_weights_are_seeded_so_reruns_agree(tiny_models, photos, tmp_path):
    cfg = tiny_models["tiny-vit"]["config"]
    common = ["extract", "images", "--images", photos, "--model-config", cfg, "--pretrained", "none", "--workers", 0]
    run_vl([*common, "--out", tmp_path / "a.h5"])
    run_vl([*common, "--out", tmp_path / "b.h5"])
    run_vl([*common, "--out", tmp_path / "c.h5", "--seed", 7])
    a, b, c = (FeatureStore(tmp_path / f"{x}.h5") for x in "abc")
    np.testing.assert_array_equal(a.get_many(a.ids), b.get_many(a.ids))
    assert not np.allclose(a.get_many(a.ids), c.get_many(a.ids))
    assert a.provenance["encoder"]["weights"] == {"source": "random", "seed": 0}


def test_clear_errors_before_any_work(tiny_models, photos, tmp_path):
    out = tmp_path / "f.h5"
    cases = [
        (["--images", tmp_path / "nope"], "no such folder"),
        (["--images", photos, "--list", tmp_path / "x.txt"], "exactly one of"),
        (["--images", photos, "--model", "RN1O1"], "unknown open_clip model 'RN1O1'"),
        (["--images", photos, "--model", "RN50", "--pretrained", "not-a-tag"], "neither a file nor an open_clip tag"),
        (["--images", photos, *model_args(tiny_models), "--device", "cuda:0"] if not torch.cuda.is_available()
         else ["--images", photos, "--model", "nope"], "no CUDA device" if not torch.cuda.is_available() else "unknown"),
        (["--images", photos, *model_args(tiny_models), "--precision", "fp16", "--device", "cpu"], "fp16 is for GPUs"),
        (["--images", photos, *model_args(tiny_models), "--layer", "pooled", "--pool", "6"], "--pool applies to grid"),
    ]
    for extra, message in cases:
        result = run_vl(["extract", "images", "--out", out, *extra], expect=1)
        assert message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert not out.exists()


def test_help_is_actionable():
    text = run_vl(["extract", "images", "--help"]).stdout
    for needle in ("--images", "--list", "--manifest", "--pretrained", "--pool", "--resize", "squash",
                   "--overwrite", "--strict", "Example", "vl extract images --images"):
        assert needle in text


@pytest.mark.parametrize("name", ["tiny-rn", "tiny-vit"])
def test_bf16_casts_weights_once_with_bit_identical_features(tiny_models, name):
    """Weights stored in bf16 up front give exactly what autocast gives from fp32 weights."""
    from vl.extract.encoder import EncoderSpec, load_encoder

    spec = dict(model=name, model_config=str(tiny_models[name]["config"]),
                pretrained=str(tiny_models[name]["checkpoint"]), layer="both", device="cpu")
    fast = load_encoder(EncoderSpec(**spec, precision="bf16"))
    plain = load_encoder(EncoderSpec(**spec, precision="fp32"))
    assert any(p.dtype == torch.bfloat16 for p in fast.module.parameters())
    x = torch.randn(3, 3, *fast.image_size)
    got = fast.encode(x)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain.module(x.contiguous(memory_format=torch.channels_last))
    for k in ("grid", "pooled"):
        assert torch.equal(got[k], want[k]), k
    np.testing.assert_allclose(got["grid"].float().numpy(), plain.encode(x)["grid"].numpy(), rtol=0.1, atol=0.1)


def test_default_workers_leave_cpu_cores_to_the_forward_pass():
    from vl.extract.pipeline import default_workers

    assert default_workers("cpu", cpus=2) == 0
    assert default_workers("cpu", cpus=16) == 4
    assert default_workers("cpu", cpus=64) == 8
    assert default_workers("cuda", cpus=16) == 8
    assert default_workers("cuda", cpus=2) == 2


def test_vit_attention_runs_on_contiguous_inputs_with_the_same_result(tiny_models):
    import open_clip

    from vl.extract.encoder import ClipImageFeatures, contiguous_attention

    torch.manual_seed(0)
    visual = open_clip.create_model("tiny-vit", pretrained=str(tiny_models["tiny-vit"]["checkpoint"])).visual.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = ClipImageFeatures(visual, "both", None)(x)
        assert contiguous_attention(visual) == 2  # one per transformer block
        after = ClipImageFeatures(visual, "both", None)(x)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-5, atol=1e-6)


def test_worker_chunks_are_joined_into_full_device_batches_in_order():
    from vl.extract.images import BatchJoiner

    joiner, out = BatchJoiner(5), []
    for start, n in ((0, 3), (3, 3), (6, 1), (7, 4)):  # chunks of 3, 3, 1, 4 images
        joiner.push(list(range(start, start + n)), torch.arange(start, start + n).float()[:, None])
        out += list(joiner.batches())
    assert [idx for idx, _ in out] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert all(images[:, 0].tolist() == idx for idx, images in out)
    rest = list(joiner.batches(final=True))
    assert [idx for idx, _ in rest] == [[10]] and list(joiner.batches(final=True)) == []
