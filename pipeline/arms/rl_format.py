"""The `rl_format` arm, a control of RL: the RL arm (the `rl` section's settings, prompts and steps) with
a reward for a well-formed answer regardless of correctness (1.0 when the task's `extract` finds an
answer, else 0.0), as in Shao et al. 2025, "Spurious Rewards". If it gains as much as RLVR, the gain is
not from the verifier's signal. Its logged `accuracy` is still `verify`'s, for comparison.

    python -m pipeline.arms.rl_format --config C --problems train.jsonl --out models/rl_format
"""
from __future__ import annotations

import sys

from pipeline.arms import Arm
from pipeline.arms.common import cli
from pipeline.arms.rl import ARM as RL, ControlConfig, TaskReward, train_control


class FormatReward(TaskReward):
    def __init__(self, tasks, problems=None):
        super().__init__(tasks)
        self.__name__ = "format"  # TRL's curve rewards/format/mean
        self._score = {name: (lambda p, text, t=task: float(t.extract(text) is not None)) for name, task in tasks.items()}


ARM = Arm(
    name="rl_format", order=4, data="problems", config=ControlConfig, color="tab:olive", control_of="rl", reads=("rl",),
    title="control: RL rewarded for a well-formed answer, right or wrong",
    enabled=lambda cfg: cfg.rl_format.enabled and cfg.rl.enabled, prompt_filter=RL.prompt_filter, trl_config=RL.trl_config,
    health_metrics=("rewards/format/mean", "accuracy"), curves=("rewards/format/mean", "accuracy", "loss", "entropy"),
)


def _run(cfg, problems: str, out: str, base_model: str, seed: int, checkpoints: str | None = None) -> dict:
    return train_control(cfg, "rl_format", FormatReward, problems, out, base_model, seed, checkpoints)


def main(argv: list[str] | None = None) -> int:
    return cli("rl_format", "problems", "training problems (JSONL of Problem.to_dict())", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
