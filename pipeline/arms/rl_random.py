"""The `rl_random` arm, a control of RL: the RL arm (the `rl` section's settings, prompts and steps) with
a random reward, a coin that pays 1.0 with the base's mean pass rate on the training problems (so the
reward has RLVR's mean at the start, and no information), as in Shao et al. 2025, "Spurious Rewards".
Each coin is a function of (seed, step, problem, rollout index, completion), so a resumed run draws the
same coins. Its logged `accuracy` is still `verify`'s.

    python -m pipeline.arms.rl_random --config C --problems train.jsonl --out models/rl_random
"""
from __future__ import annotations

import hashlib
import logging
import sys

from pipeline.arms import Arm
from pipeline.arms.common import cli
from pipeline.arms.rl import ARM as RL, ControlConfig, TaskReward, train_control
from pipeline.arms.rl_prompts import base_pass_rate

log = logging.getLogger(__name__)


def coin(seed: int, step: int, problem_id: str, index: int, text: str) -> float:
    """A uniform number in [0, 1) from a hash of its arguments."""
    h = hashlib.sha256(f"{seed}|{step}|{problem_id}|{index}|{text}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


class RandomReward(TaskReward):
    def __init__(self, tasks, problems, rate: float, seed: int):
        super().__init__(tasks)
        self.__name__ = "random"  # TRL's curve rewards/random/mean
        self.rate, self.seed = rate, seed

    def scores(self, probs, texts, trainer_state=None):
        step = trainer_state.global_step if trainer_state is not None else 0
        return [float(coin(self.seed, step, p.id, i, t) < self.rate) for i, (p, t) in enumerate(zip(probs, texts))]


ARM = Arm(
    name="rl_random", order=5, data="problems", config=ControlConfig, color="tab:cyan", control_of="rl", reads=("rl",),
    title="control: RL rewarded by a coin with the base's mean pass rate",
    enabled=lambda cfg: cfg.rl_random.enabled and cfg.rl.enabled, prompt_filter=RL.prompt_filter, trl_config=RL.trl_config,
    health_metrics=("accuracy",), curves=("rewards/random/mean", "accuracy", "loss", "entropy"),
)


def _run(cfg, problems: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    def reward(tasks, probs):
        rate = base_pass_rate(problems, probs)
        log.info("random reward: a coin paying 1.0 with probability %.4f (the base's mean pass rate)", rate)
        return RandomReward(tasks, probs, rate, seed)

    return train_control(cfg, "rl_random", reward, problems, out, base_model, seed, checkpoints)


def main(argv: list[str] | None = None) -> int:
    return cli("rl_random", "problems", "training problems (JSONL of Problem.to_dict())", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
