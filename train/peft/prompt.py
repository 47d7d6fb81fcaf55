"""Prompt tuning at the encoder input (reference §2.5, `--encoder_prompt_len 40 --mid_dim 800`).

P learned vectors go before every encoder row, [prompt, text, visual, padding], through
the `model.encoder_prompt` hook of VLModel. As in the reference they are re-parameterised
(Li & Liang 2021's prefix-tuning MLP, here at the input only, not per layer):

    prompt = Linear(mid, d)(tanh(Linear(d, mid)(E)))      E: Embedding(P, d) rows 0..P-1

reparameterize=False trains E itself. sharing="multiple" keeps one prompt module per task,
chosen by `model.task_state.current()`; "single" one for all tasks.

What trains: the prompt modules and the visual projection; LayerNorms stay frozen.

Initialisation (`init`):
  normal     (default) E and the MLP's weights ~ N(0, 0.02), biases zero, on any backbone
  reference  as the reference, by backbone: on BART its init_weights re-initialised the
             prompt's Embedding and Linears exactly so (vl.train.peft.reference_reinit),
             the same as normal; on T5 they keep PyTorch's default (E ~ N(0, 1),
             Kaiming-uniform Linears), which its VL-T5 `_init_weights` left alone

Positions: the reference's BART prepended the prompts after adding the learned positions
to the text, so the prompts had none and the text kept positions 0..L-1; with
`visual_inputs: reference` (the presets) VLModel does the same. With packed inputs the
BART encoder adds positions to all of `inputs_embeds`: the prompts take positions
0..P-1 and the text starts at P. T5's relative position bias covers prompt and text in
reference mode (as its reference, which counted the prompt into the text length), the
whole row in packed mode.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vl.shared.config import literal_problems
from vl.shared.errors import VLError, collect_or_raise
from vl.train.model import TaskState, VLModel
from vl.train.peft import reference_reinit, task_name_problems, visual_projection_names
from vl.train.peft.registry import group_under, register_method

SHARED = "shared"  # the one key of sharing="single"
INIT_STD = 0.02  # BART's init_std: the reference's init_weights re-initialised every Linear/Embedding of VLBart


@dataclass
class PromptConfig:
    length: int = 40  # P, prompt vectors per row
    mid_dim: int = 800  # the re-parameterisation MLP's hidden size
    reparameterize: bool = True
    sharing: Literal["single", "multiple"] = "single"
    init: Literal["normal", "reference"] = "normal"

    def check(self) -> list[str]:
        problems = literal_problems(self)
        if not isinstance(self.length, int) or self.length < 1:
            problems.append(f"prompt length must be an integer >= 1 (got {self.length!r})")
        if self.reparameterize and (not isinstance(self.mid_dim, int) or self.mid_dim < 1):
            problems.append(f"prompt mid_dim must be an integer >= 1 (got {self.mid_dim!r})")
        return problems


class Prompt(nn.Module):
    """One prompt: forward() -> (P, d). `embedding` (P, d), then `mlp` unless None.
    init_std None keeps PyTorch's default init."""

    def __init__(self, length: int, d_model: int, mid_dim: int, reparameterize: bool, device=None, dtype=None,
                 init_std: float | None = INIT_STD):
        super().__init__()
        like = dict(device=device, dtype=dtype)
        self.embedding = nn.Embedding(length, d_model, **like)
        self.mlp = nn.Sequential(nn.Linear(d_model, mid_dim, **like), nn.Tanh(),
                                 nn.Linear(mid_dim, d_model, **like)) if reparameterize else None
        if init_std is None:
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=init_std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self) -> torch.Tensor:
        rows = self.embedding.weight  # (P, d): Embedding(arange(P))
        return rows if self.mlp is None else self.mlp(rows)  # (P, d)


class EncoderPrompt(nn.Module):
    """VLModel's `encoder_prompt` hook: forward(batch_size) -> (B, P, d), the same prompt
    for every row. `prompts[key]`: one Prompt per task (task_state given) or SHARED."""

    def __init__(self, prompts: dict[str, Prompt], length: int, task_state: TaskState | None = None):
        super().__init__()
        self.prompts = nn.ModuleDict(prompts)
        self.length = length  # P: VLModel's BART length check counts it
        self.task_state = task_state

    def forward(self, batch_size: int) -> torch.Tensor:
        key = SHARED if self.task_state is None else self.task_state.current()
        if key not in self.prompts:
            raise VLError(f"no prompt for task '{key}'; "
                          f"this model has prompts for: {', '.join(sorted(self.prompts))}")
        return self.prompts[key]().unsqueeze(0).expand(batch_size, -1, -1)  # (B, P, d)


def apply_prompt(model: VLModel, cfg: PromptConfig, tasks: list[str]) -> list[str]:
    """Set `model.encoder_prompt` to an EncoderPrompt; returns the names of the parameters
    that train (the prompts' and the visual projection's)."""
    problems = cfg.check() + (task_name_problems(list(tasks)) if cfg.sharing == "multiple" else [])
    if model.encoder_prompt is not None:
        problems.append("this model already has an encoder prompt (apply prompt tuning once)")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if model.config.model_type == "bart" and isinstance(cfg.length, int) and cfg.length >= max_pos:
        problems.append(f"a prompt of {cfg.length} vectors leaves none of BART's {max_pos} positions for the text")
    collect_or_raise(problems)

    embeddings = model.backbone.get_input_embeddings().weight
    keys = [SHARED] if cfg.sharing == "single" else list(tasks)
    # reference: built with PyTorch's default init, then re-initialised as the reference's BART did
    init_std = None if cfg.init == "reference" else INIT_STD
    prompts = {k: Prompt(cfg.length, model.config.d_model, cfg.mid_dim, cfg.reparameterize,
                         device=embeddings.device, dtype=embeddings.dtype, init_std=init_std) for k in keys}
    if cfg.init == "reference":
        for prompt in prompts.values():
            reference_reinit(prompt, model)
    task_state = None if cfg.sharing == "single" else model.task_state
    model.encoder_prompt = EncoderPrompt(prompts, cfg.length, task_state).train(model.training)

    trainable = [f"encoder_prompt.{name}" for name, _ in model.encoder_prompt.named_parameters()]
    trainable += visual_projection_names(model)
    assert set(trainable) <= dict(model.named_parameters()).keys()
    return trainable


@torch.no_grad()
def export_peft(model: VLModel, cfg: PromptConfig, out: Path, task: str | None = None) -> list[str]:
    """Write the prompt (the single one, or `task`'s) as `peft` prompt tuning on the encoder
    input: its P vectors as computed (the re-parameterisation MLP folded in) in
    `prompt_embeddings`, num_transformer_submodules=1 (none on the decoder), as VLModel puts
    them before every encoder row. BART reference inputs give the prompt no positions, which
    peft cannot express: refused. Returns the vl names written."""
    from safetensors.torch import save_file

    if model.config.model_type == "bart" and model.visual_inputs == "reference":
        raise VLError("this BART run (visual_inputs=reference) gives its prompt vectors no positions, but peft's "
                      "prompt tuning adds BART's learned positions to them (as visual_inputs=packed does)")
    prompts = model.encoder_prompt.prompts
    keys = list(prompts)
    if keys == [SHARED] and task is not None:
        raise VLError("this run has one prompt shared by all tasks; give no --task")
    key = SHARED if keys == [SHARED] else task
    if key not in prompts:
        raise VLError(f"this run has one prompt per task: choose --task, one of: {', '.join(sorted(keys))}")
    config = {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": cfg.length,
              "token_dim": model.config.d_model, "num_transformer_submodules": 1, "num_attention_heads": None,
              "num_layers": None, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
              "tokenizer_name_or_path": None, "tokenizer_kwargs": None, "inference_mode": True,
              "base_model_name_or_path": None, "revision": None, "modules_to_save": None}
    out.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": prompts[key]().detach().cpu().contiguous()},
              str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [f"encoder_prompt.{name}" for name, _ in model.encoder_prompt.named_parameters()]


apply = apply_prompt
register_method("prompt", "prompt vectors and their MLP, visual projection", config=PromptConfig, apply=apply_prompt,
                display=("prompt", "prompts"), groups=group_under("encoder_prompt", "prompt"),
                exports={"peft": export_peft})
