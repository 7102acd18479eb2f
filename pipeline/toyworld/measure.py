"""Measuring a built world: pass@k of each model and the properties a world must have (TARGETS)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.toyworld.config import BootstrapConfig
from pipeline.toyworld.corpus import eval_problems
from tasks.base import Problem
from tasks.toy_arith import ToyArith, parse_chain


# ---- measurement ----------------------------------------------------------------------------------
def measure(model_dir: Path, name: str, cfg: BootstrapConfig, out_dir: Path) -> dict[str, Any]:
    """pass@k of one model on the held-out test problems, overall and per level, with the project's
    evaluator (same engine, same prompt, same verifier as every later stage)."""
    from pipeline.config import GenerationConfig
    from pipeline.analysis.passk import passk_table
    from pipeline.stages.evaluate import evaluate

    e = cfg.eval
    task = ToyArith(max_value=cfg.max_value)
    problems = eval_problems(cfg)
    gen = GenerationConfig(temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_tokens, n=e.n)
    t0 = time.time()
    overall = evaluate(str(model_dir), problems, {task.name: task}, gen, e.ks, out_dir, name=name, seed=cfg.seed)
    seconds = time.time() - t0
    per_problem = pd.read_csv(out_dir / "per_problem.csv")
    level_of = {p.id: p.difficulty for p in problems}
    by_level = {}
    for level, g in per_problem.groupby(per_problem["problem_id"].map(level_of)):
        tab = passk_table(g, e.ks, n_boot=0)
        by_level[str(level)] = {f"pass@{k}": round(float(v), 4) for k, v in zip(tab["k"], tab["pass_at_k"])}
    reasoning_ok = _reasoning_share(out_dir / "samples.jsonl", problems, task)
    return dict(
        overall={f"pass@{int(r.k)}": round(float(r.pass_at_k), 4) for r in overall.itertuples()},
        by_level=by_level, correct_with_correct_reasoning=reasoning_ok, eval_seconds=round(seconds, 1),
    )


def _reasoning_share(samples_path: Path, problems: list[Problem], task: ToyArith) -> float | None:
    """Share of correct samples whose <think> chain is also right (CoT-pass check)."""
    from pipeline.core.io import read_jsonl

    by_id = {p.id: p for p in problems}
    correct = [r for r in read_jsonl(samples_path) if r["correct"]]
    if not correct:
        return None
    return round(sum(task.check_reasoning(by_id[r["problem_id"]], r["completion"]) for r in correct) / len(correct), 4)


# ---- the properties a world must have ----------------------------------------------------------------
TARGETS = {
    "base_train_accuracy": "between 0.15 and 0.5 (RL training split, at the rollout temperature)",
    "base_reasoning_share": "at least 0.7 of the base's correct answers pass check_reasoning",
    "base_coverage": "test pass@k_max at least 0.8 and at least 3x pass@1",
    "teacher_pattern": "the teacher's pattern is (nearly) absent from the base's corpus and samples, "
                       "and the teacher solves levels the base rarely solves",
}


def pattern_of(completion: str, question: str) -> str:
    """Which reasoning pattern a toy_arith completion uses: `direct` (no working), `binop` (one
    operation at a time, the base corpus's careful working), `rewrite` (the chain rewritten line by
    line), `rewrite+columns` (the teacher's pattern), `one-step` (a chain of one operation, where the
    working patterns coincide), or `other`. Columns are recognised by a line holding two digit
    columns, so a rewrite chain whose every step is one-digit arithmetic reads as `rewrite`."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    lines = [ln.strip() for ln in (m.group(1) if m else "").splitlines() if ln.strip()]
    if not lines:
        return "direct"
    if len(parse_chain(question)[1]) == 1:
        return "one-step"
    if any(re.fullmatch(r"\d+[+-]\d+", ln) for ln in lines[1:]):
        return "binop"
    if any(ln.startswith("=") for ln in lines):
        return "rewrite+columns" if any(" " in ln for ln in lines) else "rewrite"
    return "other"


def world_properties(models: dict[str, dict[str, Any]], cfg: BootstrapConfig, model_dirs: dict[str, Path],
                     eval_dir: Path) -> dict[str, Any]:
    """Measure the world's properties against TARGETS: the base's training accuracy at the rollout
    temperature (a fresh evaluation on the train split), the share of its correct answers with
    correct reasoning, its coverage, and where each reasoning pattern occurs."""
    from pipeline.config import GenerationConfig
    from pipeline.core.io import read_jsonl
    from pipeline.stages.evaluate import evaluate

    e = cfg.eval
    task = ToyArith(max_value=cfg.max_value)
    train = task.problems("train", e.train_size, seed=cfg.seed, levels=e.levels)
    gen = GenerationConfig(temperature=e.rollout_temperature, top_p=1.0, max_tokens=e.max_tokens, n=e.train_n)
    evaluate(str(model_dirs["base"]), train, {task.name: task}, gen, [1], eval_dir / "base-train", "base", cfg.seed, 0)
    train_rows = read_jsonl(eval_dir / "base-train" / "samples.jsonl")
    train_acc = sum(r["correct"] for r in train_rows) / len(train_rows)
    patterns = {}
    questions = {p.id: p.question for p in eval_problems(cfg)}
    for name in ("base", "teacher"):
        rows = read_jsonl(eval_dir / name / "samples.jsonl")
        counts = pd.Series([pattern_of(r["completion"], questions[r["problem_id"]]) for r in rows]).value_counts()
        patterns[name] = {k: round(float(v) / len(rows), 4) for k, v in counts.items()}
    base, teacher = models["base"]["eval"], models["teacher"]["eval"]
    k_max = f"pass@{max(e.ks)}"
    corpus_share = cfg.base.corpus.styles.get("column", 0) / sum(cfg.base.corpus.styles.values())
    rare = [lv for lv, v in base["by_level"].items()
            if v["pass@1"] < 0.1 and teacher["by_level"][lv]["pass@1"] > 0.5]
    checks = {
        "base_train_accuracy": 0.15 <= train_acc <= 0.5,
        "base_reasoning_share": (base["correct_with_correct_reasoning"] or 0) >= 0.7,
        "base_coverage": base["overall"][k_max] >= 0.8 and base["overall"][k_max] >= 3 * base["overall"]["pass@1"],
        "teacher_pattern": corpus_share <= 0.05 and patterns["base"].get("rewrite+columns", 0) <= 0.05
                           and patterns["teacher"].get("rewrite+columns", 0) >= 0.5 and bool(rare),
    }
    return dict(
        base_train_accuracy=round(train_acc, 4), base_train_problems=len(train), base_train_samples=e.train_n,
        rollout_temperature=e.rollout_temperature,
        base_reasoning_share=base["correct_with_correct_reasoning"],
        base_pass_at_1=base["overall"]["pass@1"], base_pass_at_kmax=base["overall"][k_max],
        teacher_pattern_in_base_corpus=round(corpus_share, 4), patterns=patterns,
        levels_base_rarely_solves_teacher_solves=rare, targets=TARGETS, checks=checks,
    )
