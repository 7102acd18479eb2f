"""The training problems the base solves sometimes (an arm's pass_rate_filter): `<section>prompts`."""
from __future__ import annotations

from pathlib import Path

import luigi
import pandas as pd

from pipeline.core import tracking
from pipeline.core.io import write_jsonl
from pipeline.stages.base import Stage, _gpu, load_problems
from pipeline.stages.problems import Problems


class FilterRLProblems(Stage):
    """The training problems the base solves sometimes: the evaluator samples the base on the train
    split (`<section>.filter_samples` rollouts per problem, at that section's rollout temperature,
    top_p and max_completion_length) and the problems with 0 < c < n are kept. Their mean pass rate is
    the base's training accuracy. `section`: the config section of the arm whose settings it uses (an
    arm's `prompt_filter`, pipeline/arms); the stage and its directory are named `<section>prompts`."""

    priority = 10
    section = luigi.Parameter()
    resources = property(lambda self: _gpu(self.cfg))

    @property
    def stage(self) -> str:
        return f"{self.section}prompts"

    @property
    def sections(self):
        return ("base_model", *(f"{self.section}.{k}" for k in ("filter_samples", "temperature", "top_p",
                                                                 "max_completion_length")),
                "eval.backend", "eval.batch_size", "eval.dtype", "seed")

    reads_models = ("base_model",)

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides)}

    def execute(self, tmp, run_id):
        rl, src = self.cfg.get(self.section), Path(self.input()["problems"].path) / "train.jsonl"
        self.subprocess("pipeline.stages.evaluate", [
            "--config", str(tmp / "config.yaml"), "--model", self.model_ref("base_model"), "--name", "base",
            "--problems", str(src), "--n", str(rl.filter_samples), "--ks", "1", "--temperature", str(rl.temperature),
            "--top-p", str(rl.top_p), "--max-tokens", str(rl.max_completion_length), "--bootstrap", "0",
            "--seed", str(self.cfg.seed), "--out", str(tmp / "base-train"), *self.eval_args()], run_id,
            devices=self.cfg.compute.eval_devices)
        pp = pd.read_csv(tmp / "base-train" / "per_problem.csv", dtype={"problem_id": str})
        rate = dict(zip(pp["problem_id"], pp["correct"] / pp["n"]))
        problems = load_problems(src.parent, "train")
        kept = [p for p in problems if 0 < rate[p.id] < 1]
        if not kept:
            raise RuntimeError(f"{self.stage}: the base solves none of the {len(problems)} training problems only "
                               f"sometimes (0 < pass rate < 1 over {rl.filter_samples} samples); nothing for {self.section} to learn from")
        write_jsonl(tmp / "train.jsonl", (p.to_dict() for p in kept))
        levels = pd.DataFrame([dict(difficulty=p.difficulty, rate=rate[p.id], kept=0 < rate[p.id] < 1) for p in problems])
        by = levels.groupby("difficulty").agg(problems=("rate", "size"), pass_rate=("rate", "mean"), kept=("kept", "sum"))
        by.reset_index().to_csv(tmp / "pass_rates.csv", index=False)
        metrics = [("base_train_accuracy", float(levels["rate"].mean()), 0), ("kept_problems", len(kept), 0),
                   ("kept_share", len(kept) / len(problems), 0), ("all_wrong", int((levels["rate"] == 0).sum()), 0),
                   ("all_right", int((levels["rate"] == 1).sum()), 0)]
        metrics += [(f"pass_rate_level_{d}", r.pass_rate, 0) for d, r in by.iterrows()]
        tracking.log(self.cfg, run_id, metrics=metrics, artifacts=[tmp / "pass_rates.csv"])
        print(f"[{self.stage}] kept {len(kept)} of {len(problems)} problems; base pass rate per level:\n{by.to_string()}")
        return {"kept_problems": len(kept), "base_train_accuracy": float(levels["rate"].mean())}
