"""The filtered traces: the teacher's verified traces, deduplicated, at most max_per_problem per
problem (rejection sampling); `python -m pipeline.stages.traces filter` runs filter_traces.
"""
from __future__ import annotations

from collections import defaultdict

import pandas as pd

from pipeline.config import ExperimentConfig
from pipeline.core import tracking
from pipeline.core.io import read_jsonl
from pipeline.stages.base import Stage
from pipeline.stages.problems import Problems
from pipeline.stages.traces import GenerateTeacherTraces
from tasks import Problem, build_tasks


def filter_traces(
    cfg: ExperimentConfig, problems: list[Problem], raw: pd.DataFrame, base_tokenizer
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep verified-correct traces, deduplicated, at most max_per_problem per problem.

    The SFT prompt is rendered with the *base* model's tokenizer: SFT trains the base, and it
    must see the same prompt the evaluator will give it. Returns (kept rows, yield per difficulty)."""
    tasks = build_tasks(cfg.tasks)
    by_id = {p.id: p for p in problems}
    kept, counts = [], defaultdict(lambda: dict(problems=0, samples=0, correct=0, kept=0, problems_kept=0))
    for pid, g in raw.sort_values(["problem_id", "sample_index"]).groupby("problem_id", sort=False):
        p = by_id[pid]
        c = counts[p.difficulty]
        c["problems"] += 1
        seen, n_kept = set(), 0
        for r in g.itertuples():
            c["samples"] += 1
            if not tasks[p.task].verify(p, r.completion):
                continue
            c["correct"] += 1
            norm = " ".join(r.completion.split())
            if norm in seen or n_kept >= cfg.traces.max_per_problem:
                continue
            seen.add(norm)
            n_kept += 1
            kept.append(dict(problem_id=pid, task=p.task, difficulty=p.difficulty,
                             prompt=tasks[p.task].prompt(p, base_tokenizer), completion=r.completion))
        c["kept"] += n_kept
        c["problems_kept"] += n_kept > 0
    yld = pd.DataFrame([dict(difficulty=d, **v) for d, v in sorted(counts.items(), key=lambda kv: str(kv[0]))])
    if not yld.empty:
        yld["sample_yield"] = yld["correct"] / yld["samples"]
        yld["problem_yield"] = yld["problems_kept"] / yld["problems"]
    return pd.DataFrame(kept, columns=["problem_id", "task", "difficulty", "prompt", "completion"]), yld


class FilterTraces(Stage):
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    stage, sections = "filtered", ("traces.max_per_problem", "base_model")
    reads_models = ("base_model",)

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides), "traces": GenerateTeacherTraces(self.config, self.overrides)}

    def execute(self, tmp, run_id):
        self.subprocess("pipeline.stages.traces", ["filter", "--config", str(tmp / "config.yaml"), "--problems",
                        self.input()["problems"].path + "/train.jsonl", "--traces", self.input()["traces"].path,
                        "--out", str(tmp)], run_id)
        kept, yld = pd.DataFrame(read_jsonl(tmp / "filtered.jsonl")), pd.read_csv(tmp / "yield.csv")
        tracking.log_dataset(self.cfg, run_id, kept[["problem_id", "completion"]], "filtered-traces", str(self.out_dir), "training")
        metrics = [("kept_traces", len(kept), 0), ("sample_yield", yld["correct"].sum() / yld["samples"].sum(), 0)]
        metrics += [(f"yield_level_{r.difficulty}", r.sample_yield, 0) for r in yld.itertuples()]
        tracking.log(self.cfg, run_id, metrics=metrics, artifacts=[tmp / "yield.csv"])
        return {"kept_traces": len(kept)}
