"""Tokenizers trained on the demo world's manifests behave like the real T5 / BART ones
(special tokens and ids, </s> and <s> added, decode back to the text), are the same
bytes for the same texts, reload exactly from their folder, count tokens for the
subtitle budget; a hub id without network says how to do without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import run_vl
from vl.data_manifests.demo import write_demo_world
from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest
from vl.train.tasks import TASKS, get_task
from vl.train.tokenizer import (ASCII_ALPHABET, load_tokenizer, manifest_texts, token_counter, train_tokenizer)

DATASETS = ("vqa2", "tvqa", "coco-caption")  # short answers, multiple choice with subtitles, captions
VOCAB = 400
# The ids of the real tokenizers (google-t5/t5-base, facebook/bart-base); BART's <mask> is its last id.
SPECIAL_IDS = {
    "t5": {"pad_token": ("<pad>", 0), "eos_token": ("</s>", 1), "unk_token": ("<unk>", 2)},
    "bart": {"bos_token": ("<s>", 0), "pad_token": ("<pad>", 1), "eos_token": ("</s>", 2), "unk_token": ("<unk>", 3)},
}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, DatasetManifest]:
    """A small demo world and three of its convert.sh commands, run through the CLI."""
    world = write_demo_world(tmp_path_factory.mktemp("tok") / "world", images=8, videos=6, seed=0)
    commands = {cmd[2]: cmd for cmd in world.commands if cmd[2] in DATASETS}
    here = Path.cwd()
    os.chdir(world.root)  # the commands' paths are relative to the world's root
    try:
        for args in commands.values():
            run_vl(args)
    finally:
        os.chdir(here)
    return {name: DatasetManifest.read(world.root / cmd[cmd.index("--out") + 1]) for name, cmd in commands.items()}


@pytest.fixture(scope="module")
def texts(manifests) -> list[str]:
    return list(manifest_texts(manifests.values()))


@pytest.fixture(scope="module", params=["t5", "bart"])
def trained(request, texts, tmp_path_factory) -> tuple[str, PreTrainedTokenizerFast, Path]:
    out = tmp_path_factory.mktemp(f"tok_{request.param}")
    return request.param, train_tokenizer(texts, VOCAB, request.param, out), out


def test_manifest_texts_hold_every_input_and_target(manifests, texts):
    vqa = manifests["vqa2"].examples[0]
    assert f"vqa: {' '.join(vqa['question'].split())}" in texts
    assert {a for a, score in vqa["labels"].items() if score > 0} <= set(texts)
    tvqa = manifests["tvqa"].examples[0]
    tvqa_input = get_task("tvqa").build_input(tvqa)
    assert tvqa_input in texts and " a0: " in tvqa_input and " a4: " in tvqa_input and "subtitles:" in tvqa_input
    assert f"a{tvqa['answer_idx']}" in texts
    assert set(manifests["coco-caption"].examples[0]["targets"]) <= set(texts)
    expected = sum(1 + len(TASKS[ex["task"]].targets(ex)) for m in manifests.values() for ex in m.examples)
    assert len(texts) == expected


def test_manifest_texts_without_gold_give_inputs_and_bad_lines_name_the_file():
    test_split = DatasetManifest(Path("gqa_test.jsonl"), [
        {"id": "1", "task": "gqa", "split": "test", "media": ["img1"], "question": "Is it red?"}], meta=None)
    assert list(manifest_texts([test_split])) == ["gqa: Is it red?"]
    broken = DatasetManifest(Path("broken.jsonl"), [
        {"id": "1", "task": "gqa", "split": "train", "media": ["img1"], "answers": ["yes"]},
        {"id": "2", "task": "vqq", "split": "train", "media": ["img1"]}], meta=None)
    with pytest.raises(VLError) as e:
        list(manifest_texts([broken]))
    assert "broken.jsonl: gqa example '1': missing field 'question'" in str(e.value)
    assert "unknown task 'vqq'" in str(e.value) and "vl data check" in str(e.value)
    for kind in ("t5", "bart"):  # training passes the manifest's own error on, unchanged
        with pytest.raises(VLError) as during_training:
            train_tokenizer(manifest_texts([broken]), 400, kind)
        assert str(during_training.value) == str(e.value)


def test_special_tokens_and_ids_are_the_real_tokenizers(trained):
    kind, tok, _ = trained
    assert isinstance(tok, PreTrainedTokenizerFast)
    for attr, (token, token_id) in SPECIAL_IDS[kind].items():
        assert getattr(tok, attr) == token and tok.convert_tokens_to_ids(token) == token_id, attr
    if kind == "t5":
        assert tok.bos_token is None and tok.mask_token is None and tok.model_max_length == 512
    else:
        assert tok.mask_token == "<mask>" and tok.mask_token_id == len(tok) - 1 and tok.model_max_length == 1024
    assert len(tok) <= VOCAB
    assert not [t for t in tok.get_vocab() if "extra_id" in t], "no sentinel or visual word tokens"


def test_encode_adds_eos_or_bos_eos_and_decode_gives_the_text_back(trained, manifests):
    kind, tok, _ = trained
    question = manifests["vqa2"].examples[0]["question"]
    answer = get_task("tvqa").targets(manifests["tvqa"].examples[0])[0][0]
    for text in (question, answer, "What colour is the big square?"):
        ids = tok(text).input_ids
        if kind == "t5":
            assert ids[-1] == 1 and 1 not in ids[:-1] and ids[0] not in (0, 1, 2)
        else:
            assert ids[0] == 0 and ids[-1] == 2 and {0, 2}.isdisjoint(ids[1:-1])
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids, skip_special_tokens=False) != text  # the special tokens were there
    batch = tok([question, answer], padding=True).input_ids
    pad = SPECIAL_IDS[kind]["pad_token"][1]
    assert len(batch[0]) == len(batch[1]) and batch[1][-1] == pad


def test_prefixes_and_every_manifest_text_encode_without_unknown_tokens(trained, texts):
    kind, tok, _ = trained
    for prefix in ("vqa:", "tvqa:", "caption:"):
        assert tok.unk_token_id not in tok(prefix).input_ids, prefix
    assert [t for t in texts if tok.unk_token_id in tok(t).input_ids] == []
    unseen_ascii = "".join(ASCII_ALPHABET)
    assert tok.decode(tok(unseen_ascii).input_ids, skip_special_tokens=True) == unseen_ascii
    snowman = tok("a ☃ here").input_ids
    if kind == "t5":  # a character outside the texts and ASCII is unknown, as in T5's own vocabulary
        assert tok.unk_token_id in snowman
    else:  # bytes are never unknown
        assert tok.unk_token_id not in snowman and tok.decode(snowman, skip_special_tokens=True) == "a ☃ here"


def test_training_twice_gives_identical_files_and_other_texts_differ(trained, texts, tmp_path):
    kind, _, out = trained
    train_tokenizer(iter(texts), VOCAB, kind, tmp_path / "again")  # an iterator, as manifest_texts gives
    files = sorted(p.name for p in out.iterdir())
    assert "tokenizer.json" in files and files == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    train_tokenizer(texts[: len(texts) // 2], VOCAB, kind, tmp_path / "half")
    assert (out / "tokenizer.json").read_bytes() != (tmp_path / "half" / "tokenizer.json").read_bytes()


def test_load_tokenizer_reads_the_saved_folder_back_exactly(trained, texts):
    kind, tok, out = trained
    again = load_tokenizer(str(out))
    assert isinstance(again, PreTrainedTokenizerFast) and len(again) == len(tok)
    assert again.special_tokens_map == tok.special_tokens_map
    assert again(texts).input_ids == tok(texts).input_ids
    assert again("a <mask> b").input_ids == tok("a <mask> b").input_ids
    ids = tok(texts[-1]).input_ids
    assert again.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_token_counter_counts_tokens_without_specials_and_drives_the_subtitle_cut(trained, manifests):
    kind, tok, _ = trained
    count = token_counter(tok)
    specials = 1 if kind == "t5" else 2
    for text in ("vqa: What color is the square?", "a3", ""):
        assert count(text) == len(tok(text, add_special_tokens=False).input_ids) == len(tok(text).input_ids) - specials
    item = next(i for i in get_task("tvqa").expand(manifests["tvqa"].examples) if "subtitles:" in i.text())
    whole = count(item.text())
    cut = item.text(budget=whole - 3, count=count)
    assert count(cut) <= whole - 3 < whole and cut.startswith("tvqa: ") and len(cut) < len(item.text())


def test_too_small_a_vocabulary_or_an_unknown_kind_says_what_to_pass():
    with pytest.raises(VLError, match="at least 99"):
        train_tokenizer(["a red square"], 50, "t5")
    with pytest.raises(VLError, match="at least 261"):  # 256 bytes, 4 specials, <mask>
        train_tokenizer(["a red square"], 260, "bart")
    assert len(train_tokenizer(["a red square"], 261, "bart")) == 261
    with pytest.raises(VLError, match=r"pass at least 101"):  # é and ü beyond ASCII: two more characters
        train_tokenizer(["café au lait", "über"], 99, "t5")
    with pytest.raises(VLError, match="choose one of: t5, bart"):
        train_tokenizer(["a red square"], 400, "gpt2")
    for kind in ("t5", "bart"):
        for nothing in ([], ["", "  "]):
            with pytest.raises(VLError, match="no .non-blank. texts"):
                train_tokenizer(nothing, 400, kind)
    small = train_tokenizer(["a red square", "a blue circle"], 99, "t5")
    assert len(small) <= 99
    assert small.decode(small("a red circle").input_ids, skip_special_tokens=True) == "a red circle"


def test_a_hub_id_without_network_points_to_a_local_folder_or_train_tokenizer(monkeypatch):
    calls = []

    def offline(name, *args, **kwargs):
        calls.append(name)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(VLError) as e:
        load_tokenizer("google-t5/t5-base")
    assert calls == ["google-t5/t5-base"]
    message = str(e.value)
    assert "cannot load the tokenizer of google-t5/t5-base" in message and "couldn't connect" in message
    assert "local directory" in message and "train_tokenizer" in message
    with pytest.raises(VLError, match="tokenizer directory ./no-such-folder not found"):
        load_tokenizer("./no-such-folder")
    assert calls == ["google-t5/t5-base"], "a missing local folder is not looked up on the hub"


def test_a_small_corpus_keeps_its_frequent_words_whole_within_vocab_size(texts):
    """The Unigram trainer alone leaves most of the vocabulary unused on the demo world and
    spells common words out; the top-up makes each frequent word one token, never past vocab_size."""
    from collections import Counter

    from vl.train.tokenizer import _t5_words

    words = Counter(word for text in texts for word in _t5_words(text))
    frequent = [word for word, count in words.most_common(30) if count >= 2]
    tok = train_tokenizer(texts, 1000, "t5")
    assert len(tok) <= 1000
    for word in frequent:  # "▁is", "▁small", ...: one piece each
        assert tok.tokenize(word.replace("▁", " ").strip()) == [word], word
    for vocab_size in (VOCAB, len(tok) - 5):  # less room: fewer words added, the size still holds
        small = train_tokenizer(texts, vocab_size, "t5")
        assert len(small) <= vocab_size
        assert small("What color is the small circle?").input_ids[-1] == small.eos_token_id
