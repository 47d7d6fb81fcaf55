"""A model's predictions on a task: generated text, or the best of the task's candidate
answers, read back as the task's metric takes them. Training validates with these and
`vl evaluate` scores a split with them.

Batches hold examples of similar input length (`prediction_batches`), each runs the
encoder once and decodes through transformers' `generate` with its key/value cache;
under torchrun every rank predicts every world_size-th batch and rank 0 gathers the
predictions in example order (the same as one process's: the batches are the same).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutput

from vl.shared.distributed import Ranks, gather_to_main
from vl.shared.progress import progress_bar
from vl.shared.stopping import check_stop
from vl.train.data import TaskDataset, collate
from vl.train.model import VLModel

MODEL_INPUTS = ("input_ids", "attention_mask", "visual_feats", "visual_mask", "image_ids")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# Test hook: the rank named here (0, 1, ...) raises at its last prediction batch, as a
# rank that fails part-way through an evaluation would (tests/test_distributed_eval.py).
TEST_FAIL_RANK_ENV = "VL_TEST_FAIL_PREDICT_RANK"


def input_lengths(ds: TaskDataset, indices: Sequence[int]) -> list[int]:
    """The encoder text length in tokens (as the collate cuts it, at `data.token_cut`) of
    each item: what varies between a task's examples (its images give every example as
    many visual tokens), so what a batch pads its rows to."""
    if not indices:
        return []
    texts = [ds.drawn(i, 0)[0] if ds.data.task.draws else ds.source(i) for i in indices]
    cut = ds.data.token_cut
    return [len(ids) if cut is None else min(len(ids), cut) for ids in ds.tokenizer(texts)["input_ids"]]


def prediction_batches(ds: TaskDataset, batch_size: int, bucket: bool = True) -> list[list[int]]:
    """The item indices of each prediction batch: one item per example (captions have one
    per reference); with `bucket`, examples sorted by input length, longest first (equal
    lengths in example order), so a batch pads its rows to nearly their own length and the
    batch that needs the most memory comes first. Every rank computes the same list."""
    firsts = sorted({item.example_id: i for i, item in reversed(list(enumerate(ds.items)))}.values())
    if bucket:
        lengths = dict(zip(firsts, input_lengths(ds, firsts)))
        firsts = sorted(firsts, key=lambda i: -lengths[i])  # stable: ties keep example order
    return [firsts[start:start + batch_size] for start in range(0, len(firsts), batch_size)]


@torch.no_grad()
def generate_predictions(model: VLModel, ds: TaskDataset, tokenizer: Any, device: torch.device, batch_size: int,
                         autocast: Any, progress: bool = False, ranks: Ranks = Ranks(),
                         bucket: bool = True) -> dict[str, Any] | None:
    """{example id: prediction}, in example order, for one item per example of `ds`
    (captions have one item per reference), read back as the task's metric takes it
    (`metric_value`). The run's decision for the task (`ds.data.decision`): `generate`
    decodes with its generation settings (`ds.data.generation`: greedy for short answers,
    beams for captions, unless the task's options say otherwise) through transformers'
    `generate` (its key/value cache, the encoder run once per batch); `rank` picks the best
    of the example's candidate answers (`rank_candidates`).

    Batches come from `prediction_batches` (length-bucketed unless `bucket` is False).
    Under torchrun (`ranks`) each rank predicts every world_size-th batch and rank 0
    gathers them: rank 0 returns all predictions, the others None. The batches are the
    same as one process makes, so the predictions are too; a rank that fails stops every
    rank with its message (vl.shared.distributed.gather_to_main)."""
    data, task = ds.data, ds.data.task
    generation = data.generation
    examples = {ex["id"]: ex for ex in data.examples}
    batches = prediction_batches(ds, batch_size, bucket)
    fail_here = os.environ.get(TEST_FAIL_RANK_ENV) == str(ranks.rank)

    def predict_my_batches() -> dict[str, Any]:
        predictions, mine = {}, ranks.slice(batches)
        for n, indices in enumerate(progress_bar(mine, desc=f"predict {task.name}", unit="batch",
                                                 enabled=progress and ranks.is_main)):
            check_stop()  # SIGINT/SIGTERM (vl.shared.stopping): every rank learns of it in gather_to_main
            if fail_here and n == len(mine) - 1:
                raise RuntimeError(f"injected failure ({TEST_FAIL_RANK_ENV}={ranks.rank})")
            items = [ds.item(i, 0) for i in indices]
            batch = to_device(collate(items, tokenizer, max_text_tokens=data.token_cut), device)
            with autocast():
                if data.decision == "rank":
                    candidates = [task.candidates(examples[i], data.layout) for i in batch["ids"]]
                    texts = rank_candidates(model, batch, candidates, tokenizer)
                else:
                    out = model.generate(**{k: batch[k] for k in MODEL_INPUTS}, task=batch["task"],
                                         max_new_tokens=generation.max_new_tokens, num_beams=generation.num_beams)
                    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            for example_id, text in zip(batch["ids"], texts):
                predictions[example_id] = task.metric_value(task.read_prediction(text, examples[example_id]))
        return predictions

    parts = gather_to_main(predict_my_batches, ranks, f"predicting {task.name}")
    if parts is None:
        return None
    merged = {k: v for part in parts for k, v in part.items()}
    return {ex["id"]: merged[ex["id"]] for ex in data.examples if ex["id"] in merged}  # example order


@torch.no_grad()
def rank_candidates(model: VLModel, batch: dict[str, Any], candidates: list[list[str]], tokenizer: Any) -> list[str]:
    """For each row of `batch` (collated model inputs), the candidate of `candidates[row]`
    that the model scores highest (the first of equals).

    A candidate's score is the sum of its target tokens' log-probabilities under teacher
    forcing, without the closing end-of-sequence token. When every candidate is one token
    after the same start (NLVR2's "true"/"false"), this compares their logits at that one
    decoder step, which is how the reference decided NLVR2 (nlvr_model.py L240-257, with
    true_id/false_id from multitask.py L104-105); a multiple-choice label "a2" is scored
    the same way over its tokens. When one candidate's tokens begin another's, the end
    token counts too, so the shorter does not win by having fewer terms.

    The encoder runs once per row (`VLModel.encode`); the decoder scores all (row,
    candidate) pairs as one batch, reading its row's encoder output."""
    pairs = [(row, text) for row, texts in enumerate(candidates) for text in texts]  # (P,)
    assert all(candidates), "every row needs at least one candidate"
    device = batch["input_ids"].device
    tgt = tokenizer([text for _, text in pairs], padding=True, return_tensors="pt")  # right-padded, as collate's
    ids, mask = tgt["input_ids"].to(device), tgt["attention_mask"].to(device)  # (P, T)
    counted = mask.clone()  # (P, T): the tokens a score sums
    tokens = [ids[p, :n].tolist() for p, n in enumerate(mask.sum(1).tolist())]
    body = [t[:-1] if t[-1] == tokenizer.eos_token_id else t for t in tokens]  # without the end token
    nested = {row for p, (row, _) in enumerate(pairs) for q, (other, _) in enumerate(pairs)
              if other == row and q != p and body[q][:len(body[p])] == body[p]}
    for p, (row, _) in enumerate(pairs):
        if row not in nested and len(body[p]) < len(tokens[p]):
            counted[p, len(tokens[p]) - 1] = 0
    rows = torch.tensor([row for row, _ in pairs], device=device)
    encoded, enc_mask = model.encode(**{k: batch[k] for k in MODEL_INPUTS}, task=batch["task"])  # (B, S, d), (B, S)
    hidden = encoded.last_hidden_state.index_select(0, rows)  # (P, S, d): each row's once per candidate
    labels = ids.masked_fill(mask == 0, -100)  # (P, T)
    decoder_input_ids = model.backbone.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model.backbone(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                            attention_mask=enc_mask.index_select(0, rows),
                            decoder_input_ids=decoder_input_ids).logits  # (P, T, V)
    token_logp = logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (P, T)
    scores = (token_logp * counted).sum(1).tolist()  # (P,)
    best: dict[int, tuple[float, str]] = {}
    for (row, text), value in zip(pairs, scores):
        if row not in best or value > best[row][0]:
            best[row] = (value, text)
    return [best[row][1] for row in range(len(candidates))]


