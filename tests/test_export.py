"""`vl export`: LoRA and prompt runs as peft checkpoints that AutoPeftModelForSeq2SeqLM loads
to the same text-only logits; adapters and Compacter in AdapterHub's format (round-tripped
through the `adapters` library in a second environment, VL_ADAPTERS_PYTHON); a bundle that
`vl evaluate` runs after moving it and deleting the runs it came from; --push-to-hub up to
the upload call; refusals that name what the run can be written as and leave nothing."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from test_peft_methods import demo_config
from vl.shared.cli import cli
from vl.shared.errors import VLError
from vl.train import loop
from vl.train.build import load_trained
from vl.train.export import BASE_DIR, EXPORT_JSON, EXTRAS_FILE, export_run, load_peft_export, push_to_hub

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = torch.tensor([[5, 17, 42, 99, 3, 1], [7, 8, 9, 1, 0, 0]])  # text only, right-padded
ADAPTERS_PYTHON = os.environ.get("VL_ADAPTERS_PYTHON")  # a Python with transformers 4.57 + adapters 1.3 (.ci/run)


def vl(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vl")


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory) -> dict[str, Path]:
    """Tiny BART runs (one epoch on the demo world) of the methods that have a library format."""
    root = tmp_path_factory.mktemp("export")
    made = {}
    for name, preset, overrides in (("lora", "image/single_lora", {}),
                                    ("prompt", "image/single_prompt", {"visual_inputs": "packed"}),
                                    ("adapter", "image/single_adapter", {}),
                                    ("adapter-t5", "image/single_adapter", {"backbone": "tiny-t5"}),
                                    ("compacter", "image/single_compacter", {})):
        made[name] = root / name
        cfg = dataclasses.replace(demo_config(world, made[name], preset), **overrides)
        loop.train(cfg)
    return made


def text_logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    """vl's model on text alone (no visual tokens), decoder fed the same ids."""
    mask = (ids != 0).long()
    mask[:, 0] = 1
    feats = torch.zeros(ids.shape[0], 0, model.visual_embedding.feat_dim)
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=mask, visual_feats=feats,
                            visual_mask=torch.zeros(ids.shape[0], 0, dtype=torch.long), decoder_input_ids=ids).logits


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_peft_export_loads_with_auto_peft_model_to_the_same_logits(runs, method, tmp_path):
    peft = pytest.importorskip("peft")
    out = tmp_path / "peft"
    result = vl("export", runs[method], "--format", "peft", "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    # random-init backbone: no published one is the run's, so the export holds its frozen backbone
    assert config["base_model_name_or_path"] == str(out.resolve() / BASE_DIR)
    assert (out / "tokenizer.json").is_file() and (out / BASE_DIR / "config.json").is_file()
    facts = json.loads((out / EXPORT_JSON).read_text())
    assert facts["format"] == "peft" and facts["method"] == method and facts["feat_dim"] > 0
    extras = load_file(str(out / EXTRAS_FILE))
    assert extras and all(k.startswith("visual_embedding.") for k in extras)  # the visual projection travels beside

    trained = load_trained(runs[method])
    loaded = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(str(out)).eval()
    mask = (IDS != 0).long()
    mask[:, 0] = 1
    with torch.no_grad():
        got = loaded(input_ids=IDS, attention_mask=mask, decoder_input_ids=IDS).logits
    want = text_logits(trained.model)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, tensor in extras.items():
        assert torch.equal(tensor, trained.model.get_parameter(name).detach())
    # vl's loader: the same model again, visual tokens and all
    again = load_peft_export(out)
    feats = torch.randn(2, 3, again.visual_embedding.feat_dim)
    inputs = dict(input_ids=IDS, attention_mask=mask, visual_feats=feats, visual_mask=torch.ones(2, 3, dtype=torch.long),
                  decoder_input_ids=IDS)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, trained.model(**inputs).logits, atol=1e-5, rtol=1e-5)
    if method == "lora":  # the trained adapter changes the logits: the comparison is not of two frozen models
        base = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(str(out)).get_base_model()
        with torch.no_grad(), loaded.disable_adapter():
            plain = loaded(input_ids=IDS, attention_mask=mask, decoder_input_ids=IDS).logits
        assert base is not None and not torch.allclose(plain, want, atol=1e-4)


def test_a_lora_on_a_pretrained_backbone_names_it_and_carries_the_grown_vocabulary(world, tmp_path):
    """A pretrained backbone folder with 200 tokens added by the run: peft loads the base by its
    name, grows it to the tokenizer, and gets the new rows from the export (trainable tokens)."""
    peft = pytest.importorskip("peft")
    from vl.train.model import build_backbone
    from vl.train.tokenizer import train_tokenizer

    texts = [json.loads(line)["question"] for line in (world / "manifests/vqa2_train.jsonl").read_text().splitlines()]
    tokenizer = train_tokenizer(texts, 400, "bart")
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    n = len(tokenizer)  # the "pretrained" vocabulary; the run adds 200 (extra_tokens)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-bart-pretrained"
    build_backbone("tiny-bart", init="random", vocab_size=n).save_pretrained(str(folder))
    run = tmp_path / "lora-pretrained"
    loop.train(dataclasses.replace(demo_config(world, run, "image/single_lora"), backbone=str(folder),
                                   init="pretrained", tokenizer=str(tmp_path / "tok")))
    out = export_run(run, "peft", tmp_path / "out")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder.resolve()) and not (out / BASE_DIR).exists()
    assert config["trainable_token_indices"] == list(range(n, n + 200))
    loaded = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[5, 17, n + 50, n + 199, 1], [n + 3, 8, 9, 1, 0]])  # added tokens too
    mask = (ids != 0).long()
    mask[:, 0] = 1
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
    want = text_logits(load_trained(run).model, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # bundled, the backbone folder goes with it: moved, and the folder and the run deleted, it still loads
    bundle = export_run(run, "bundle", tmp_path / "bundle")
    assert json.loads((bundle / "bundle.json").read_text())["relative"] == ["tokenizer", "backbone"]
    shutil.move(bundle, tmp_path / "moved")
    shutil.rmtree(folder)
    shutil.rmtree(run)
    torch.testing.assert_close(text_logits(load_trained(tmp_path / "moved").model, ids), want, atol=0, rtol=0)


def test_a_format_the_method_cannot_be_written_in_is_refused_in_one_line_and_nothing_is_left(runs, tmp_path):
    out = tmp_path / "out"
    result = vl("export", runs["adapter"], "--format", "peft", "--out", out)
    assert result.exit_code == 1
    assert "a run of method adapter cannot be written as peft; it can be written as: adapters, bundle" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # a BART prompt with reference inputs has no positions, which peft's prompt tuning cannot say
    reference = tmp_path / "prompt-reference"
    shutil.copytree(runs["prompt"], reference)
    config = json.loads((reference / "config.json").read_text())
    (reference / "config.json").write_text(json.dumps({**config, "visual_inputs": "reference"}))
    with pytest.raises(VLError, match="(?s)cannot be written as peft: this BART run .*Write it as a bundle") as caught:
        export_run(reference, "peft", tmp_path / "out2")
    assert "--format bundle" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt-reference"]  # no temporary folder left
    with pytest.raises(VLError, match="out3 exists"):
        (tmp_path / "out3").mkdir()
        export_run(runs["lora"], "peft", tmp_path / "out3")
    with pytest.raises(VLError, match="one LoRA shared by all tasks; give no task"):
        export_run(runs["lora"], "peft", tmp_path / "out4", task="vqa")


def test_adapters_per_task_and_a_shared_phm_rule_have_no_adapterhub_form(runs):
    from vl.train.peft.adapter import AdapterConfig, export_adapterhub
    from vl.train.peft.compacter import CompacterConfig
    from vl.train.peft.compacter import export_adapterhub as export_compacter

    model = load_trained(runs["adapter"]).model
    with pytest.raises(VLError, match="sharing=half-shared keeps adapters per task"):
        export_adapterhub(model, AdapterConfig(sharing="half-shared"), Path("unused"))
    with pytest.raises(VLError, match="shared_rule=true keeps one rule for all layers; low_rank=true"):
        export_compacter(model, CompacterConfig(shared_rule=True, low_rank=True), Path("unused"))


@pytest.mark.parametrize("method", ["adapter", "compacter"])
def test_adapterhub_export_names_every_site_in_the_libraries_layout(runs, method, tmp_path):
    out = export_run(runs[method], "adapters", tmp_path / method)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["model_type"] == "bart" and config["name"] == "vl"
    assert config["config"]["mh_adapter"] and config["config"]["cross_adapter"] and config["config"]["output_adapter"]
    assert config["config"]["phm_layer"] is (method == "compacter")
    weights = load_file(str(out / "adapter.safetensors"))
    attr, up = ("compacter", "W") if method == "compacter" else ("adapters", "weight")
    own = {n: p for n, p in load_trained(runs[method]).model.named_parameters() if n.startswith(f"{attr}.")}
    assert len(weights) == len(own)  # every tensor of every site, once
    # tiny-bart: 2 encoder layers with 2 sites each, 2 decoder layers with 3
    assert len({k.split(".adapters.vl.")[0] for k in weights}) == 2 * 2 + 2 * 3
    key = f"model.decoder.layers.1.cross_attention_adapters.adapters.vl.adapter_up.{up}"
    assert torch.equal(weights[key], own[f"{attr}.decoder.1.cross_attn.up.{up}"].detach())
    extras = load_file(str(out / EXTRAS_FILE))  # the trained LayerNorms, under the backbone's names
    assert any(k.startswith("backbone.") and "layer_norm" in k for k in extras)


ROUND_TRIP = r"""
import json, sys, torch, adapters
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM
out, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
facts = json.load(open(f"{out}/vl_export.json"))
model = AutoModelForSeq2SeqLM.from_pretrained(facts["base_model"]).eval()
extras = {k[len("backbone."):]: v for k, v in load_file(f"{out}/vl_extras.safetensors").items() if k.startswith("backbone.")}
missing, unexpected = model.load_state_dict(extras, strict=False)
assert not unexpected, unexpected
adapters.init(model)
name = model.load_adapter(out, use_safetensors=True, with_head=False)
model.set_active_adapters(name)
model.eval()
mask = (ids != 0).long(); mask[:, 0] = 1
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
    model.set_active_adapters(None)  # the adapter off: what the comparison must tell apart
    without = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
torch.save({"logits": logits, "without": without}, f"{out}/logits.pt")
print(name, adapters.__version__)
"""


@pytest.mark.skipif(not ADAPTERS_PYTHON, reason="set VL_ADAPTERS_PYTHON to a Python with the `adapters` library "
                                                "(transformers ~=4.57.6; .ci/run makes one)")
@pytest.mark.parametrize("method", ["adapter", "adapter-t5", "compacter"])
def test_adapterhub_export_loads_in_the_adapters_library_to_the_same_logits(runs, method, tmp_path):
    out = export_run(runs[method], "adapters", tmp_path / method)
    done = subprocess.run([ADAPTERS_PYTHON, "-c", ROUND_TRIP, str(out), json.dumps(IDS.tolist())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out / "logits.pt")
    want = text_logits(load_trained(runs[method]).model)
    torch.testing.assert_close(got["logits"], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got["without"], want, atol=1e-3)


def test_a_bundle_evaluates_after_moving_it_and_deleting_its_runs(world, tmp_path):
    """An adapter run started from a full fine-tuning run (init_from): bundled, moved, the two
    runs deleted, `vl evaluate --run` gives the predictions the run gave."""
    source, run = tmp_path / "runs/full", tmp_path / "runs/adapter"
    source.parent.mkdir()
    loop.train(demo_config(world, source, "image/full"))
    loop.train(dataclasses.replace(demo_config(world, run, "image/single_adapter"), init_from=source))
    assert vl("evaluate", "--run", run, "--split", "val", "--tasks", "vqa", "--quiet").exit_code == 0
    want = json.loads((run / "eval/val/vqa_val_predictions.json").read_text())

    result = vl("export", run, "--format", "bundle", "--out", tmp_path / "bundle")
    assert result.exit_code == 0, result.output
    moved = tmp_path / "elsewhere/bundle"
    shutil.move(tmp_path / "bundle", moved)
    shutil.rmtree(tmp_path / "runs")
    config = json.loads((moved / "config.json").read_text())
    assert config["init_from"] == "init_from" and config["tokenizer"] == "tokenizer"
    assert (moved / "init_from/checkpoints").is_dir() and (moved / "tokenizer").is_dir()
    result = vl("evaluate", "--run", moved, "--split", "val", "--tasks", "vqa", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((moved / "eval/val/vqa_val_predictions.json").read_text()) == want
    assert load_trained(moved).cfg.init_from == moved / "init_from"  # what `vl predict` loads through
    again = export_run(moved, "bundle", tmp_path / "again")  # a bundle of a bundle
    assert json.loads((again / "config.json").read_text())["init_from"] == "init_from"
    assert torch.equal(text_logits(load_trained(again).model), text_logits(load_trained(moved).model))


def test_push_to_hub_creates_the_repository_and_uploads_the_folder(runs, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message=""):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                                              commit_message=commit_message, commit_description="", oid="abc")

    (tmp_path / "export").mkdir()
    (tmp_path / "export/adapter_config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    url = push_to_hub(tmp_path / "export", "me/vl-lora", private=True)
    assert url == "https://huggingface.co/me/vl-lora/commit/abc"
    assert calls == [("token", "hf_test"), ("create_repo", "me/vl-lora", True, True),
                     ("upload_folder", "me/vl-lora", ["adapter_config.json"])]

    calls.clear()  # the command: export, then upload what it wrote
    result = vl("export", runs["lora"], "--format", "bundle", "--out", tmp_path / "bundle", "--push-to-hub", "me/b")
    assert result.exit_code == 0, result.output
    assert "uploaded to https://huggingface.co/me/b/commit/abc" in result.output
    assert calls[-1] == ("upload_folder", "me/b", sorted(os.listdir(tmp_path / "bundle")))

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(VLError, match="needs a Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        push_to_hub(tmp_path / "export", "me/vl-lora")


def test_push_to_hub_in_offline_mode_fails_with_the_folder_kept(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    (tmp_path / "export").mkdir()
    with pytest.raises(VLError, match="uploading .* to the hub repository me/x failed") as caught:
        push_to_hub(tmp_path / "export", "me/x")
    assert "upload it later" in str(caught.value) and (tmp_path / "export").is_dir()


def test_every_registered_method_names_formats_that_vl_export_knows():
    from vl.train.export import FORMATS
    from vl.train.peft.methods import METHODS
    from vl.train.peft.registry import export_formats

    for name, spec in METHODS.items():
        formats = export_formats(name)
        assert formats[-1] == "bundle" and set(formats) <= set(FORMATS), name
        assert all(callable(write) for write in spec.exports.values()), name
    assert {name: export_formats(name)[:-1] for name in METHODS if export_formats(name) != ["bundle"]} == {
        "adapter": ["adapters"], "compacter": ["adapters"], "lora": ["peft"], "prompt": ["peft"]}
