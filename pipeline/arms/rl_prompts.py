"""Which training problems the RL arm sees, and in what order: the curriculum's reach (rl.curriculum),
one-shot RLVR's problem (rl.one_shot, rl.one_shot_problem) and the base's pass rates that the RL prompt
filter measured (which the one-shot pick and the random-reward control read)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from pipeline.arms.common import TrainInputError
from tasks.base import Problem


def curriculum_error(level_counts: dict, max_steps: int, prompts_per_step: float) -> str | None:
    """rl.curriculum walks the problems sorted by level: the error when max_steps x prompts_per_step
    prompts never reach the hardest level ({level: problems}); None when they do."""
    levels = sorted(lv for lv in level_counts if lv is not None)
    before = sum(level_counts[lv] for lv in levels[:-1])
    if len(levels) < 2 or max_steps * prompts_per_step > before:
        return None
    return (f"rl.curriculum: rl.max_steps={max_steps} x {prompts_per_step:g} prompts per step = "
            f"{int(max_steps * prompts_per_step)} prompts never reach level {levels[-1]} (levels {levels} hold "
            f"{[level_counts[lv] for lv in levels]} problems, the last starting at prompt {before + 1}); expected "
            f"rl.max_steps >= {math.floor(before / prompts_per_step) + 1}, or fewer problems per level")


def check_curriculum(cfg) -> None:
    """rl.curriculum reaches every level (ValueError if not). Assumes each task's train_size splits evenly over
    its levels (tasks.base.Task.problems) and that all of them reach RL; with rl.pass_rate_filter the count
    is known only at training (build_rl_trainer checks it there)."""
    rl = cfg.rl
    if rl.enabled and rl.curriculum and not rl.one_shot and not rl.pass_rate_filter and all(
            t.levels for t in cfg.tasks if t.train_size):
        counts: dict[int, int] = {}
        for t in (t for t in cfg.tasks if t.train_size):
            for i, lv in enumerate(t.levels):
                counts[lv] = counts.get(lv, 0) + t.train_size // len(t.levels) + (i < t.train_size % len(t.levels))
        err = curriculum_error(counts, rl.max_steps, rl.prompts_per_step(cfg.compute.num_processes))
        if err:
            raise ValueError(err)


def base_rates(rates_csv: Path, who: str) -> dict[str, float]:
    """{problem_id: the base's pass rate} from the RL prompt filter's per_problem.csv."""
    if not rates_csv.is_file():
        raise TrainInputError(f"{who}: {rates_csv} not found (the RL prompt filter writes the base's pass "
                              f"rates there; expected rl.pass_rate_filter: true)")
    with open(rates_csv) as f:
        return {r["problem_id"]: int(r["correct"]) / int(r["n"]) for r in csv.DictReader(f)}


def one_shot_problem(problems: list[Problem], rates_csv: Path, named: str | None = None) -> Problem:
    """One-shot RLVR's training problem: `named` (rl.one_shot_problem) when given, else the one whose base
    pass rate p has the highest variance p(1-p), ties to the first in file order. Wang et al. (2025) rank
    by the variance of an example's training accuracy over a previous RL run's epochs: `python -m
    pipeline.analysis.one_shot RL_MODEL_DIR` ranks a finished run's problems that way, and its pick goes
    into rl.one_shot_problem; before any RL run, the base's own pass-rate variance (from the RL prompt
    filter's samples) is the estimate this DAG has."""
    if named is not None:
        match = [p for p in problems if p.id == named]
        if not match:
            raise TrainInputError(f"rl.one_shot_problem: {named!r} is not among the {len(problems)} training problems "
                                  f"(expected an id from the RL prompt filter's kept problems)")
        return match[0]
    rate = base_rates(rates_csv, "rl.one_shot")
    return max(problems, key=lambda p: rate.get(p.id, 0.0) * (1 - rate.get(p.id, 0.0)))


def base_pass_rate(problems_path: str, problems: list[Problem]) -> float:
    """The base's mean pass rate on these training problems, from the RL prompt filter's samples."""
    rates_csv = Path(problems_path).parent / "base-train" / "per_problem.csv"
    rate = base_rates(rates_csv, "a random-reward control")
    missing = [p.id for p in problems if p.id not in rate]
    if missing:
        raise TrainInputError(f"{rates_csv}: no pass rate for training problem {missing[0]!r}")
    return sum(rate[p.id] for p in problems) / len(problems)
