"""The report's sections drawn from the analyses: coverage, accuracy histogram, dSE, answer vs
reasoning, perplexity, the grader comparison and pass@k per benchmark (pipeline.stages.report
assembles them with the verdicts)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from pipeline.analysis.passk import passk_table
from pipeline.arms import arms, is_arm
from pipeline.core.io import read_problems
from pipeline.core.text import md_table as _table


def per_benchmark(evals: dict[str, Path], pp: dict[str, pd.DataFrame], ks: list[int], n_boot: int, seed: int):
    """pass@k per task label (benchmark) when the study has more than one: (table, markdown)."""
    first = next(iter(evals.values()))
    task_of = {p.id: p.task for p in read_problems(first / "problems.jsonl")}
    if len(set(task_of.values())) < 2:
        return None, []
    parts = []
    for task in sorted(set(task_of.values())):
        sub = pd.concat([g[g["problem_id"].map(task_of) == task] for g in pp.values()], ignore_index=True)
        parts.append(passk_table(sub, [k for k in ks if k <= sub["n"].min()], n_boot=n_boot, seed=seed).assign(task=task))
    tab = pd.concat(parts, ignore_index=True)[["task", "model", "k", "pass_at_k", "ci_low", "ci_high"]]
    k_max = int(tab["k"].max())
    models = list(pp)
    md = ["", "## pass@k by benchmark", "", "| benchmark | problems | " + " | ".join(
        f"{m} pass@1 | {m} pass@{k_max}" for m in models) + " |", "|---|---|" + "---|---|" * len(models)]
    for task, g in tab.groupby("task", sort=False):
        val = {(r.model, r.k): r.pass_at_k for r in g.itertuples()}
        n_probs = sum(1 for t in task_of.values() if t == task)
        md.append(f"| {task} | {n_probs} | " + " | ".join(f"{val.get((m, 1), float('nan')):.3f} | "
                                                             f"{val.get((m, k_max), float('nan')):.3f}" for m in models) + " |")
    return tab, md


def grader_markdown(evals: dict[str, Path], pp: dict[str, pd.DataFrame], k_max: int) -> list[str]:
    """pass@1 and pass@k_max under the task's grader and under its lenient variant (last number
    anywhere in the completion for math): how much of a curve depends on the grader."""
    rows, differs = [], False
    for m, d in evals.items():
        f = d / "per_problem_lenient.csv"
        if not f.is_file():
            continue
        len_pp = pd.read_csv(f, dtype={"problem_id": str})
        differs |= not len_pp["correct"].equals(pp[m]["correct"])
        s, l = passk_table(pp[m], [1, k_max], n_boot=0), passk_table(len_pp, [1, k_max], n_boot=0)
        rows.append([m, *s["pass_at_k"].tolist(), *l["pass_at_k"].tolist()])
    if not rows:
        return []
    if not differs:
        return ["", "## Grader", "", "The lenient grader (any last number counts) gives the same counts as the study's "
                "grader (itself the lenient one where a task sets `extraction: lenient`)."]
    return ["", "## Grader", "", "Strict: only an `<answer>` block or `\\boxed{}` counts. Lenient: else the last number "
            "anywhere in the completion.", ""] + _table(
        ["model", "strict pass@1", f"strict pass@{k_max}", "lenient pass@1", f"lenient pass@{k_max}"], rows)


def _snippet(text: str | None, limit: int = 160) -> str:
    t = " ".join((text or "").split()).replace("|", "\\|")
    return f"`{t[:limit]}{'…' if len(t) > limit else ''}`"


def analysis_markdown(a: dict, outside: tuple[str, ...] = ()) -> str:
    """The analyses' sections; each arm lists the coverage it reports (Arm.coverage), each outside model both."""
    cov = a["coverage"]
    lines = ["## Coverage", "", f"Solvable set: problems with at least one correct sample, of {cov['num_problems']}.", ""]
    lines += _table(["model", "solvable"], [[m, v] for m, v in cov["solvable"].items()])
    lines += [""] + _table(["vs base", "both", "base only", "model only", "neither"],
                           [[m, v["both"], v["base_only"], v["model_only"], v["neither"]] for m, v in cov["vs_base"].items()])
    lists = [(m, arms()[m].coverage) for m in cov["vs_base"] if is_arm(m) and arms()[m].coverage]
    lists += [(m, key) for m in outside if m in cov["vs_base"] for key in ("lost", "gained")]
    for m, key in lists:
        title = (f"Problems lost by {m} (base solves, {m} does not)" if key == "lost"
                 else f"Problems gained by {m} ({m} solves, base does not)")
        items = cov["vs_base"][m].get(key, [])
        lines += ["", f"### {title}: {len(items)}", ""]
        for it in items[:10]:
            ex = it.get("correct_completion") or {}
            lines.append(f"- `{it['question']}` = {it['answer']} (difficulty {it['difficulty']}); "
                         f"{it['solved_by']} sample: {_snippet(ex.get('completion'))}")
        if len(items) > 10:
            lines.append(f"- … {len(items) - 10} more in coverage.json")
    lines += ["", "## Per-problem accuracy", "", "![accuracy histogram](accuracy_histogram.png)", "",
              "## pass@k by difficulty", "", "![pass@k by difficulty](passk_by_difficulty.png)", "",
              "## Sampling-efficiency gap", ""]
    k = next(iter(a["dse"].values()), {}).get("k_max", "k_max")
    lines += [f"dSE = base pass@{k} − model pass@1 (lower is better).", ""]
    lines += _table(["model", f"base pass@{k}", "model pass@1", "dSE"],
                    [[m, v["base_pass_at_kmax"], v["pass_at_1"], v["dse"]] for m, v in a["dse"].items()])
    if a.get("reasoning"):
        lines += ["", "## Answer vs reasoning", "",
                  "Share of correct answers whose step-by-step reasoning is also correct; CoT-pass@k counts "
                  "a sample only if both are.", ""]
        lines += _table(["model", "correct answers", "with correct reasoning", "share", "solved", "solved with reasoning"],
                        [[m, v["correct"], v["correct_with_reasoning"], v["share"] if v["share"] is not None else "n/a",
                          v["problems_solved"], v["problems_solved_with_reasoning"]] for m, v in a["reasoning"].items()])
        lines += ["", "![CoT-pass@k](cot_passk.png)"]
    return "\n".join(lines) + "\n"


def perplexity_markdown(p: dict) -> str:
    b = p["base_name"]
    lines = ["", "## Perplexity", "",
             f"On {p['subset']} seeded (problem, sample) pairs. PPL_{b}(Y_m): the base's perplexity of model m's "
             f"samples (completion tokens only). PPL_m(Y_{b}): model m's perplexity of the base's samples. "
             f"Entropy: {p['entropy_method']}", "", "![perplexity](perplexity.png)", ""]
    rows = []
    for m, v in p["ppl_under_base"].items():
        rows.append([m, v.get("median", "n/a"), p["ppl_of_base_samples"].get(m, {}).get("median", "n/a"),
                     p.get("ppl_own_samples", {}).get(m, {}).get("median", "n/a"),
                     p["entropy"].get(m, {}).get("median", "n/a")])
    lines += _table([f"model m", f"median PPL_{b}(Y_m)", f"median PPL_m(Y_{b})", "median PPL_m(Y_m)", "median entropy"], rows)
    return "\n".join(lines) + "\n"
