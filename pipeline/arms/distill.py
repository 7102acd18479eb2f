"""The `distill` arm: on-policy distillation (Agarwal et al. 2024; Thinking Machines 2025).

TRL's DistillationTrainer: the student, initialised from the base, samples completions of the
training prompts, and is trained toward the teacher's next-token distribution on those samples
(TRL's generalized JSD; distill.beta 1.0 is the reverse KL of on-policy distillation). Unlike SFT it
never sees the teacher's own traces, and unlike RL it gets a dense, per-token signal instead of a
verified reward. The prompts are exactly the evaluator's (`task.prompt`, encoded by `encode_prompt`).

Its health metric is `accuracy`, the share of the student's own on-policy samples that `verify`
accepts (logged here, like the RL arm's), so "did it learn" means the same thing for every arm.

    python -m pipeline.arms.distill --config configs/tiny.yaml --problems train.jsonl --out models/distill
"""
from __future__ import annotations

import json
import logging
import sys

from typing import Any, Literal

from pydantic import Field

from pipeline.arms import Arm
from pipeline.core.models import tokenizer_mismatch
from pipeline.config.schema import MAX_STEPS, Strict
from pipeline.arms.lora import LoraSection, peft_config
from pipeline.arms.trl_patches import with_our_prompt_encoding
from pipeline.arms.common import (TrainInputError, build_args, cli, common_fields, finish, load_problems, resume_point,
                                   same_named)

log = logging.getLogger(__name__)

class DistillConfig(Strict):
    """The on-policy distillation arm (trl.DistillationTrainer): the student (the base) samples
    completions of the training prompts and is trained toward the teacher's next-token distribution
    on them. Needs a teacher with the student's tokenizer."""

    enabled: bool = False
    # the student's start: the base, or the SFT arm's model (a warm start on the teacher's traces, as the
    # Thinking Machines / Tinker recipes do before on-policy distillation)
    init: Literal["base", "sft"] = "base"
    beta: float = Field(1.0, ge=0, le=1)  # TRL's generalized JSD: 0 forward KL, 1 reverse KL, 0.5 JSD
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: str = "linear"
    max_steps: int = Field(100, ge=1, le=MAX_STEPS)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(256, ge=1)
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    lora: LoraSection = Field(default_factory=LoraSection)  # LoRA adapters instead of full fine-tuning (pipeline/arms/lora.py)
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.DistillationConfig as is")


def check_teacher(cfg) -> None:
    """distill.enabled needs a teacher that shares the base's tokenizer (ValueError if not)."""
    if cfg.distill.enabled:
        if cfg.teacher_model is None:
            raise ValueError("distill.enabled needs a teacher_model (its token distribution is the target)")
        why = tokenizer_mismatch(cfg.base_model, cfg.teacher_model)
        if why:
            raise ValueError(f"distill.enabled: the base and the teacher do not share a tokenizer ({why}); "
                             f"on-policy distillation compares next-token distributions over one vocabulary")


ARM = Arm(
    name="distill", order=3, data="problems", config=DistillConfig, color="tab:purple", check=check_teacher, trl_config=lambda cfg: "trl.DistillationConfig",
    title="on-policy distillation: the student samples, the teacher's token distribution is the target",
    enabled=lambda cfg: cfg.distill.enabled and cfg.teacher_model is not None,
    starts_from=lambda cfg: "sft" if cfg.distill.init == "sft" else None,
    # the prompts RL trains on (the base's sometimes-solved problems under rl.pass_rate_filter), as before
    prompt_filter=lambda cfg: "rl" if cfg.rl.pass_rate_filter else None,
    reads_teacher=True,
    health_metrics=("accuracy",),
    curves=("accuracy", "loss", "completions/mean_length", "learning_rate"),
    verdicts=(("distill_vs_base_kmax", "distill", "base", "max", "max"),
              ("distill_vs_sft_pass1", "distill", "sft", 1, 1),
              ("distill_vs_sft_kmax", "distill", "sft", "max", "max")),
)

DISTILL_FIELDS = ("beta", "temperature", "top_p", "max_completion_length")


def distillation_trainer_class(tasks):
    """DistillationTrainer that also logs the student's on-policy accuracy under the task verifiers."""
    from trl import DistillationTrainer

    from tasks.base import Problem

    class Trainer(with_our_prompt_encoding(DistillationTrainer)):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if "problem" in inputs[0]:
                ids, mask = out["completion_ids"], out["completion_mask"]
                texts = [self.processing_class.decode(i[m.bool()], skip_special_tokens=True) for i, m in zip(ids, mask)]
                probs = [Problem.from_dict(json.loads(x["problem"])) for x in inputs]
                correct = [tasks[p.task].verify(p, t) for p, t in zip(probs, texts)]
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["accuracy"].append(sum(correct) / max(1, len(correct)))
            return out

    return Trainer


def build_distill_trainer(base_model: str, teacher_model: str, problems_path: str, task_specs, cfg: DistillConfig,
                          out_dir: str, seed: int, checkpoints: str | None = None, save_steps: int = 0):
    problems = load_problems(problems_path)  # first: a bad file fails before the heavy imports
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import DistillationConfig

    from tasks import build_tasks

    tasks = build_tasks(task_specs)
    unknown = sorted({p.task for p in problems} - set(tasks))
    if unknown:
        raise TrainInputError(f"problems file {problems_path}: task(s) {unknown} are not among the configured "
                              f"tasks {sorted(tasks)}")
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model, padding_side="left")
    data = Dataset.from_list(
        [{"prompt": tasks[p.task].prompt(p, tokenizer), "problem": json.dumps(p.to_dict())} for p in problems])
    fields = common_fields(cfg, out_dir, seed, checkpoints, save_steps)
    fields.update(same_named(cfg, DISTILL_FIELDS), lr_scheduler_type=cfg.lr_scheduler_type,
                  warmup_steps=cfg.warmup_ratio, use_vllm=False)
    args = build_args(DistillationConfig, "distill", fields, cfg.extra)
    return distillation_trainer_class(tasks)(model=base_model, teacher_model=teacher_model, args=args,
                                             train_dataset=data, processing_class=tokenizer,
                                             peft_config=peft_config(cfg.lora, "distill"))


def _run(cfg, problems: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    if cfg.teacher_model is None:
        raise TrainInputError("distill: the preset has no teacher_model (expected one: its distribution is the target)")
    trainer = build_distill_trainer(base_model, cfg.teacher_model, problems, cfg.tasks, cfg.distill, out, seed,
                                    checkpoints, cfg.compute.checkpoint_steps)
    log.info("on-policy distillation: %d prompts, %s -> %s, teacher %s", len(trainer.train_dataset), base_model, out,
             cfg.teacher_model)
    result = trainer.train(resume_from_checkpoint=resume_point(checkpoints))
    last = {k: v for row in trainer.state.log_history for k, v in row.items() if k == "accuracy"}
    return finish(trainer, result, out, {"num_problems": len(trainer.train_dataset),
                                         **{f"final_{k}": v for k, v in last.items()}})


def main(argv: list[str] | None = None) -> int:
    return cli("distill", "problems", "training problems (JSONL of Problem.to_dict())", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
