"""The `sft` arm: distillation by supervised fine-tuning of the base on the teacher's verified traces.

TRL's SFTTrainer on a tokenized prompt-completion dataset: `prompt` is already rendered with the
base's chat template (task.prompt(problem, tokenizer), exactly what the evaluator samples from) and
`completion` is the teacher's text plus EOS (see `tokenize_example`). completion_only_loss=True:
the prompt tokens get label -100, so the loss is on the completion only.

    python -m pipeline.arms.sft --config configs/tiny.yaml --traces traces.jsonl --out models/sft \
        [--base-model M] [--seed S]
"""
from __future__ import annotations

import logging
import random
import sys
from typing import Any

from pydantic import Field

from pipeline.arms import Arm
from pipeline.config.schema import MAX_STEPS, Strict
from pipeline.arms.common import build_args, cli, common_fields, finish, read_rows, resume_point
from pipeline.arms.lora import LoraSection, peft_config
from tasks.base import encode_prompt

log = logging.getLogger(__name__)

REQUIRED = ("prompt", "completion")

class SFTConfig(Strict):
    enabled: bool = True  # the arm runs when there is a teacher; false leaves it out of the study
    learning_rate: float = Field(5e-4, gt=0)
    num_train_epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(-1, le=MAX_STEPS)  # > 0: this many optimizer steps, overriding num_train_epochs (TRL's field)
    per_device_train_batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler_type: str = "cosine"
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    # the SFT data-size axis: train on a seeded subset of this many verified traces (null: all of them)
    max_traces: int | None = Field(None, ge=1)
    lora: LoraSection = Field(default_factory=LoraSection)  # LoRA adapters instead of full fine-tuning (pipeline/arms/lora.py)
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.SFTConfig as is")



ARM = Arm(
    name="sft", order=1, data="traces", config=SFTConfig, color="tab:blue", coverage="gained", study_tables=("sft_data_size",),
    title="SFT on the teacher's verified traces (distillation)",
    enabled=lambda cfg: cfg.sft.enabled and cfg.teacher_model is not None,  # no teacher, no traces
    trl_config=lambda cfg: "trl.SFTConfig",
    health_metrics=("mean_token_accuracy",), curves=("loss", "mean_token_accuracy", "entropy", "learning_rate"),
    verdicts=(("sft_vs_base_kmax", "sft", "base", "max", "max"),),
)


def build_sft_trainer(base_model: str, traces_path: str, cfg: SFTConfig, out_dir: str, seed: int,
                      checkpoints: str | None = None, save_steps: int = 0):
    """The configured trl.SFTTrainer (dataset tokenized, prompt tokens masked), not yet trained."""
    rows = read_rows(traces_path, "traces", REQUIRED)  # first: a bad file fails before the heavy imports
    if cfg.max_traces is not None and cfg.max_traces < len(rows):
        # the SFT data-size axis: a seeded subset, nested (the first 100 of a seed's order are in its first 300)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        rows = [rows[i] for i in sorted(order[: cfg.max_traces])]
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    data = Dataset.from_list([tokenize_example(tokenizer, str(r["prompt"]), str(r["completion"])) for r in rows])
    fields = common_fields(cfg, out_dir, seed, checkpoints, save_steps)
    fields.update(
        num_train_epochs=cfg.num_train_epochs,  # max_steps > 0 (common_fields) overrides it
        max_length=cfg.max_length,
        # transformers 5 folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio
        warmup_steps=min(cfg.warmup_ratio, 0.999),
        lr_scheduler_type=cfg.lr_scheduler_type,
        completion_only_loss=True,
    )
    args = build_args(TRLSFTConfig, "sft", fields, cfg.extra)
    return SFTTrainer(model=base_model, args=args, train_dataset=data, processing_class=tokenizer,
                      peft_config=peft_config(cfg.lora, "sft"))


def tokenize_example(tokenizer, prompt: str, completion: str) -> dict[str, list[int]]:
    """input_ids and completion_mask of one trace, tokenized here rather than by TRL: TRL encodes a
    plain-text prompt with the tokenizer's special tokens, which doubles the BOS of a chat-rendered
    prompt, while sampling, GRPO and perplexity use `encode_prompt`. The prompt and the completion
    are encoded apart, as at inference (the model continues the prompt's tokens), and the
    completion ends with EOS so the model learns to stop."""
    p = encode_prompt(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)}


def train_sft(base_model: str, traces_path: str, cfg: SFTConfig, out_dir: str, seed: int,
              checkpoints: str | None = None, save_steps: int = 0) -> dict:
    """Fine-tune `base_model` on the traces; save model + tokenizer to out_dir; return the final
    metrics (train_loss, global_step, train_runtime, train_samples_per_second, num_examples).
    With `checkpoints`, checkpoint every save_steps steps there and resume from the newest one."""
    trainer = build_sft_trainer(base_model, traces_path, cfg, out_dir, seed, checkpoints, save_steps)
    n = len(trainer.train_dataset)
    log.info("SFT: %d traces, base %s -> %s", n, base_model, out_dir)
    result = trainer.train(resume_from_checkpoint=resume_point(checkpoints))
    return finish(trainer, result, out_dir, {"num_examples": n})


def _run(cfg, traces: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    return train_sft(base_model, traces, cfg.sft, out, seed, checkpoints, cfg.compute.checkpoint_steps)


def main(argv: list[str] | None = None) -> int:
    return cli("sft", "traces", "filtered teacher traces (JSONL with prompt, completion)", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
