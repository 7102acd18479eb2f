"""Report analyses beyond the pass@k table: pure functions of the evaluation directories.

Each model has one evaluation directory (written by pipeline.stages.evaluate): samples.jsonl,
problems.jsonl, per_problem.csv (model,problem_id,n,correct) and passk.csv. Nothing here loads
a model. The analyses follow Yue et al. 2025 ("Does Reinforcement Learning Really Incentivize Reasoning
Capacity in LLMs Beyond the Base Model?"):

- coverage: the solvable set of each model (problems with c > 0), Venn counts against the base,
  and the problems a model lost / gained against the base with one sample completion each;
- the per-problem accuracy histogram in the paper's bins 0, (0,0.1], ..., (0.9,1.0), 1.0;
- pass@k curves per difficulty level;
- the sampling-efficiency gap dSE = base pass@k_max - model pass@1;
- answer-vs-reasoning: for tasks whose Task offers `check_reasoning(problem, completion)`, the
  share of correct answers whose reasoning is also correct, and CoT-pass@k (a sample counts
  only if answer and reasoning are both correct): a lucky guess is not a solved problem.

`analyze(evals, out_dir)` runs them all, writes JSON and PNG files, and returns one dict with a
flat `metrics` section (scalar name -> float) ready for mlflow.log_metrics.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.analysis import plots
from pipeline.core.io import read_jsonl, read_problems, write_atomic
from pipeline.analysis.passk import PER_PROBLEM_COLUMNS, pass_at_k
from tasks.base import Problem

SAMPLE_COLUMNS = ["problem_id", "sample_index", "completion", "extracted", "correct"]
# Display labels of the paper's accuracy bins, and the same bins as MLflow-safe metric keys.
BIN_LABELS = ["0"] + [f"({i / 10:g},{(i + 1) / 10:g}]" for i in range(9)] + ["(0.9,1.0)", "1.0"]
BIN_KEYS = ["0"] + [f"{i / 10:g}-{(i + 1) / 10:g}" for i in range(9)] + ["0.9-1", "1"]


@dataclass
class EvalRun:
    """One model's evaluation directory, loaded and checked."""

    name: str
    dir: Path
    per_problem: pd.DataFrame  # problem_id, n, correct (one row per problem)
    samples: pd.DataFrame  # at least SAMPLE_COLUMNS
    problems: dict[str, Problem]

    def solved(self) -> set[str]:
        return set(self.per_problem.loc[self.per_problem["correct"] > 0, "problem_id"])


# ---- loading ---------------------------------------------------------------------------------


def load_eval(name: str, path: str | os.PathLike) -> EvalRun:
    """Load and check one evaluation directory; every problem is a one-line error naming the file."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: evaluation directory of model {name!r} not found")
    pp_path = d / "per_problem.csv"
    if not pp_path.is_file():
        raise FileNotFoundError(f"{pp_path}: file not found (expected columns {','.join(PER_PROBLEM_COLUMNS)})")
    pp = pd.read_csv(pp_path, dtype={"problem_id": str})
    if list(pp.columns) != PER_PROBLEM_COLUMNS:
        raise ValueError(f"{pp_path}: columns {','.join(map(str, pp.columns))}; expected {','.join(PER_PROBLEM_COLUMNS)}")
    if pp["problem_id"].duplicated().any():
        raise ValueError(f"{pp_path}: problem_id {pp['problem_id'][pp['problem_id'].duplicated()].iloc[0]!r} appears twice")
    bad = pp[(pp["n"] < 1) | (pp["correct"] < 0) | (pp["correct"] > pp["n"])]
    if len(bad):
        r = bad.iloc[0]
        raise ValueError(f"{pp_path}: problem {r['problem_id']!r} has n={r['n']}, correct={r['correct']}; expected 0 <= correct <= n, n >= 1")
    pp = pp[["problem_id", "n", "correct"]].astype({"n": int, "correct": int})

    problems = {p.id: p for p in read_problems(d / "problems.jsonl")}
    missing = set(pp["problem_id"]) - set(problems)
    if missing:
        raise ValueError(f"{d / 'problems.jsonl'}: no record for problem {sorted(missing)[0]!r} of per_problem.csv")

    rows = read_jsonl(d / "samples.jsonl")
    samples = pd.DataFrame(rows, columns=list(dict.fromkeys(SAMPLE_COLUMNS + (list(rows[0]) if rows else []))))
    for i, row in enumerate(rows, 1):
        lacking = [c for c in SAMPLE_COLUMNS if c not in row]
        if lacking:
            raise ValueError(f"{d / 'samples.jsonl'}:{i}: missing field {lacking[0]!r}")
    samples["problem_id"] = samples["problem_id"].astype(str)
    samples["correct"] = samples["correct"].astype(bool)
    return EvalRun(name, d, pp.reset_index(drop=True), samples, problems)


def load_evals(evals: Mapping[str, str | os.PathLike]) -> dict[str, EvalRun]:
    return {name: ev if isinstance(ev, EvalRun) else load_eval(name, ev) for name, ev in evals.items()}


def _same_problems(a: EvalRun, b: EvalRun) -> set[str]:
    ia, ib = set(a.per_problem["problem_id"]), set(b.per_problem["problem_id"])
    if ia != ib:
        raise ValueError(
            f"evaluations {a.name!r} ({a.dir}) and {b.name!r} ({b.dir}) cover different problems "
            f"({len(ia - ib)} only in {a.name}, {len(ib - ia)} only in {b.name}); expected the same test set"
        )
    return ia


# ---- coverage ----------------------------------------------------------------------------------


def venn(base_solved: set[str], model_solved: set[str], universe: set[str]) -> dict[str, int]:
    return {
        "both": len(base_solved & model_solved),
        "base_only": len(base_solved - model_solved),
        "model_only": len(model_solved - base_solved),
        "neither": len(universe - base_solved - model_solved),
    }


def _first_sample(run: EvalRun, pid: str, correct: bool | None) -> dict[str, Any] | None:
    s = run.samples[run.samples["problem_id"] == pid]
    if correct is not None:
        s = s[s["correct"] == correct]
    if s.empty:
        return None
    r = s.sort_values("sample_index").iloc[0]
    return {"sample_index": int(r["sample_index"]), "completion": r["completion"],
            "extracted": None if pd.isna(r["extracted"]) else r["extracted"]}


def _listing(pids: set[str], solver: EvalRun, other: EvalRun) -> list[dict[str, Any]]:
    """Problems `solver` solved and `other` did not, each with one correct completion of the
    solver and one (wrong) completion of the other (the lowest sample_index of each)."""
    out = []
    for pid in sorted(pids):
        p = solver.problems[pid]
        out.append({
            "problem_id": pid, "difficulty": p.difficulty, "question": p.question, "answer": p.answer,
            "solved_by": solver.name, "correct_completion": _first_sample(solver, pid, True),
            "unsolved_by": other.name, "wrong_completion": _first_sample(other, pid, None),
        })
    return out


def coverage(runs: Mapping[str, EvalRun], base: str = "base") -> dict[str, Any]:
    """Solvable sets, Venn counts of every other model against `base`, and the problems each model
    lost (base-solved, model-unsolved) and gained (model-solved, base-unsolved)."""
    b = runs[base]
    universe = set(b.per_problem["problem_id"])
    out: dict[str, Any] = {"base": base, "num_problems": len(universe),
                           "solvable": {m: len(r.solved()) for m, r in runs.items()}, "vs_base": {}}
    for m, r in runs.items():
        if m == base:
            continue
        _same_problems(b, r)
        bs, ms = b.solved(), r.solved()
        out["vs_base"][m] = {**venn(bs, ms, universe), "lost": _listing(bs - ms, b, r), "gained": _listing(ms - bs, r, b)}
    return out


# ---- accuracy histogram ----------------------------------------------------------------------------


def accuracy_bin(c: int, n: int) -> int:
    """Index into BIN_LABELS of accuracy c/n: 0 -> "0", n -> "1.0", else the i with
    i/10 < c/n <= (i+1)/10 (the last interval is (0.9,1.0) because 1.0 has its own bin).
    Integer arithmetic, so the bin edges are exact by construction rather than float edges."""
    if not 0 <= c <= n or n < 1:
        raise ValueError(f"accuracy_bin: need 0 <= c <= n, n >= 1, got c={c}, n={n}")
    if c == 0:
        return 0
    if c == n:
        return 11
    return -(-10 * c // n)  # ceil(10c/n) in 1..10


def accuracy_histogram(runs: Mapping[str, EvalRun]) -> pd.DataFrame:
    """Problem counts per accuracy bin: rows are models, columns BIN_LABELS."""
    rows = {}
    for m, r in runs.items():
        counts = [0] * len(BIN_LABELS)
        for n, c in zip(r.per_problem["n"], r.per_problem["correct"]):
            counts[accuracy_bin(int(c), int(n))] += 1
        rows[m] = counts
    return pd.DataFrame.from_dict(rows, orient="index", columns=BIN_LABELS)


# ---- pass@k per difficulty, dSE ------------------------------------------------------------------


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... below n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _mean_passk(n: pd.Series, c: pd.Series, k: int) -> float:
    return float(np.mean([pass_at_k(int(ni), int(ci), k) for ni, ci in zip(n, c)]))


def difficulty_label(d: Any) -> str:
    return "none" if d is None or (isinstance(d, float) and math.isnan(d)) else str(d)


def _difficulty_order(labels) -> list[str]:
    def key(s: str):
        try:
            return (0, float(s), s)
        except ValueError:
            return (1, 0.0, s)

    return sorted(set(labels), key=key)


def passk_by_difficulty(runs: Mapping[str, EvalRun], ks: list[int] | None = None) -> pd.DataFrame:
    """Columns model, difficulty (label), k, pass_at_k, num_problems; difficulty-major, models in
    the given order. ks default to 1, 2, 4, ..., n; a model only gets the ks up to its smallest n."""
    tables = {}
    for m, r in runs.items():
        labels = [difficulty_label(r.problems[p].difficulty) for p in r.per_problem["problem_id"]]
        tables[m] = r.per_problem.assign(difficulty=labels)
    rows = []
    for d in _difficulty_order(pd.concat(tables.values())["difficulty"]):
        for m, pp in tables.items():
            n_min = int(pp["n"].min())
            g = pp[pp["difficulty"] == d]
            if len(g):
                rows += [(m, d, k, _mean_passk(g["n"], g["correct"], k), len(g))
                         for k in (ks or default_ks(n_min)) if k <= n_min]
    return pd.DataFrame(rows, columns=["model", "difficulty", "k", "pass_at_k", "num_problems"])


def dse(runs: Mapping[str, EvalRun], base: str = "base", ks: list[int] | None = None) -> dict[str, dict[str, float]]:
    """dSE = base pass@k_max - model pass@1 for every model but the base (lower is better), where k_max is the
    largest of `ks` (the report's ks, so the same k as its tables and the study's), else the base's sample count
    n (its smallest, if problems differ)."""
    b = runs[base]
    k_max = min(max(ks), int(b.per_problem["n"].min())) if ks else int(b.per_problem["n"].min())
    base_top = _mean_passk(b.per_problem["n"], b.per_problem["correct"], k_max)
    out = {}
    for m, r in runs.items():
        if m == base:
            continue
        _same_problems(b, r)
        p1 = _mean_passk(r.per_problem["n"], r.per_problem["correct"], 1)
        out[m] = {"k_max": k_max, "base_pass_at_kmax": base_top, "pass_at_1": p1, "dse": base_top - p1}
    return out


# ---- answer vs reasoning ---------------------------------------------------------------------------


def reasoning_check(runs: Mapping[str, EvalRun], ks: list[int] | None = None,
                    tasks: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """For problems whose task has `check_reasoning(problem, completion)`: per model, how many
    correct answers also have correct reasoning, and pass@k vs CoT-pass@k on those problems.
    None when no evaluated task offers a reasoning check. `tasks` ({name: Task}, e.g. from
    tasks.build_tasks) supplies configured instances; other tasks come from the registry."""
    from tasks import task_for as registry_task

    def task_for(p: Problem):
        return (tasks or {}).get(p.task) or registry_task(p)

    out: dict[str, Any] = {}
    for m, r in runs.items():
        checkable = {pid for pid in r.per_problem["problem_id"]
                     if hasattr(task_for(r.problems[pid]), "check_reasoning")}
        if not checkable:
            continue
        good: dict[str, int] = {pid: 0 for pid in checkable}
        n_correct = 0
        for pid, completion in r.samples.loc[r.samples["correct"], ["problem_id", "completion"]].itertuples(index=False):
            if pid in checkable:
                n_correct += 1
                p = r.problems[pid]
                good[pid] += bool(task_for(p).check_reasoning(p, completion))
        pp = r.per_problem[r.per_problem["problem_id"].isin(checkable)]
        cot = pp["problem_id"].map(good)
        n_min = int(pp["n"].min())
        mks = [k for k in (ks or default_ks(n_min)) if k <= n_min]
        n_good = sum(good.values())
        out[m] = {
            "num_problems": len(pp), "correct": n_correct, "correct_with_reasoning": n_good,
            "share": n_good / n_correct if n_correct else None,
            "problems_solved": int((pp["correct"] > 0).sum()), "problems_solved_with_reasoning": int((cot > 0).sum()),
            "pass_at_k": {k: _mean_passk(pp["n"], pp["correct"], k) for k in mks},
            "cot_pass_at_k": {k: _mean_passk(pp["n"], cot, k) for k in mks},
            # per problem: samples with a correct answer and correct reasoning, of n (the CoT verdicts)
            "per_problem": dict(zip(pp["problem_id"], cot.astype(int))), "n": dict(zip(pp["problem_id"], pp["n"].astype(int))),
        }
    return out or None


# ---- everything ----------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    return x


def analyze(evals: Mapping[str, str | os.PathLike | EvalRun], out_dir: str | os.PathLike, base: str = "base",
            ks: list[int] | None = None, tasks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every analysis on the evaluation directories {model name: dir}; write coverage.json,
    analysis.json, accuracy_histogram.png, passk_by_difficulty.png (and cot_passk.png where a task
    checks reasoning) into out_dir. Returns the analyses, the file paths and flat `metrics`."""
    runs = load_evals(evals)
    if base not in runs:
        raise ValueError(f"evals: no evaluation for the base model {base!r} (got {sorted(runs)})")
    out = Path(out_dir)
    cov = coverage(runs, base)
    hist = accuracy_histogram(runs)
    by_diff = passk_by_difficulty(runs, ks)
    gap = dse(runs, base, ks)
    reasoning = reasoning_check(runs, ks, tasks)

    files = {
        "coverage": write_json_atomic(out / "coverage.json", cov),
        "accuracy_histogram": plots.accuracy_histogram(hist, out / "accuracy_histogram.png"),
        "passk_by_difficulty": plots.passk_by_difficulty(by_diff, out / "passk_by_difficulty.png"),
    }
    if reasoning:
        files["cot_passk"] = plots.cot_passk(reasoning, out / "cot_passk.png")

    result = {
        "base": base, "models": list(runs),
        "coverage": cov,
        "histogram": {"bins": BIN_LABELS, "counts": {m: [int(v) for v in hist.loc[m]] for m in hist.index}},
        "passk_by_difficulty": by_diff.to_dict(orient="records"),
        "dse": gap, "reasoning": reasoning,
    }
    result["metrics"] = flat_metrics(result)
    files["analysis"] = out / "analysis.json"
    # names relative to the report directory: `out` may be a temporary directory renamed afterwards
    result["files"] = {k: Path(v).name for k, v in files.items()}
    write_json_atomic(files["analysis"], {k: v for k, v in result.items() if k != "coverage"})
    return result


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Scalar metrics with MLflow-safe names (letters, digits, _ - . / only)."""
    m: dict[str, float] = {}
    cov = result["coverage"]
    for model, v in cov["solvable"].items():
        m[f"coverage/solvable/{model}"] = v
    for model, v in cov["vs_base"].items():
        for key in ("both", "base_only", "model_only", "neither"):
            m[f"coverage/{model}_vs_base/{key}"] = v[key]
    for model, counts in result["histogram"]["counts"].items():
        for key, v in zip(BIN_KEYS, counts):
            m[f"acc_hist/{model}/{key}"] = v
    for row in result["passk_by_difficulty"]:
        m[f"pass_at_k_by_difficulty/{row['model']}/d{row['difficulty']}/k{row['k']}"] = row["pass_at_k"]
    for model, v in result["dse"].items():
        m[f"dse/{model}"] = v["dse"]
    for model, v in (result["reasoning"] or {}).items():
        if v["share"] is not None:
            m[f"reasoning/{model}/share_correct_with_reasoning"] = v["share"]
        for k, val in v["cot_pass_at_k"].items():
            m[f"cot_pass_at_k/{model}/k{k}"] = val
    return {k: float(v) for k, v in m.items()}
