"""The trained arms of a study, one file each, on one shape (as tasks/ has one file per family).

An arm is a training method that starts from the base: `sft` (distillation by fine-tuning on the
teacher's verified traces, pipeline/arms/sft.py), `rl` (RLVR: GRPO in its loss variants, or RLOO,
pipeline/arms/rl.py), `distill` (on-policy distillation: the student samples, the teacher's token
distribution is the target, pipeline/arms/distill.py). Each file declares its `ARM` (what it reads, how it
is trained, what says it learned) and a `build_trainer`; the DAG has one `Train(arm=...)` stage and one
`Evaluate(model=...)` for all of them, and the report compares every enabled arm with the base.

Adding an arm: a file `pipeline/arms/<arm>.py` with `ARM` and `build_trainer`, its name in ARM_MODULES, and
its config section in pipeline/config/schema.py.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

ARM_MODULES = ("pipeline.arms.sft", "pipeline.arms.rl", "pipeline.arms.distill")


@dataclass(frozen=True)
class Arm:
    name: str  # the model's name in every table, plot and verdict; also its config section
    module: str  # `python -m <module>` (or `accelerate launch -m`) trains it
    data: str  # its training input: "traces" (the filtered teacher traces) or "problems" (training prompts)
    title: str  # one line for the report
    # a config -> is the arm part of this study? (e.g. SFT needs a teacher)
    enabled: Callable = lambda cfg: True
    reads_teacher: bool = False  # loads the teacher model while training (its key then covers the teacher)
    # health: the logged metric that says it learned (first found), and the curves drawn
    health_metrics: tuple[str, ...] = ("accuracy",)
    curves: tuple[str, ...] = ("accuracy", "loss", "learning_rate")
    # verdicts: (name, a, b, k_a, k_b) with k "max" for the study's k_max; a and b are model names
    verdicts: tuple[tuple[str, str, str, object, object], ...] = field(default_factory=tuple)


_ARMS: dict[str, Arm] = {}


def arms() -> dict[str, Arm]:
    """Every registered arm, in ARM_MODULES order. Importing an arm's module is light: its trainer
    imports (torch, TRL) happen inside its functions, so the scheduler process stays free of them."""
    if not _ARMS:
        for m in ARM_MODULES:
            arm = importlib.import_module(m).ARM
            _ARMS[arm.name] = arm
    return _ARMS


def get_arm(name: str) -> Arm:
    try:
        return arms()[name]
    except KeyError:
        raise KeyError(f"unknown arm {name!r} (expected one of {sorted(arms())})") from None


def enabled_arms(cfg) -> list[str]:
    return [name for name, arm in arms().items() if arm.enabled(cfg)]


def is_arm(model: str) -> bool:
    return model in arms()
