"""The report: pass@k table and curves for every model, and three verdicts computed from the data.

Each verdict is a paired difference over the shared test problems with a seeded 95% bootstrap
CI; one whose CI includes zero says "not distinguishable".
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from pipeline import plots
from pipeline.analysis import analyze
from pipeline.config import ExperimentConfig
from pipeline.passk import paired_difference
from tasks import build_tasks

def verdict(name: str, a: str, b: str, k_a: int, k_b: int, pp: dict[str, pd.DataFrame], n_boot: int, seed: int) -> dict:
    """pass@k_a(a) − pass@k_b(b) with its CI, in words."""
    d, lo, hi, m = paired_difference(pp[a], pp[b], k_a, k_b, n_boot=n_boot, seed=seed)
    if lo <= 0 <= hi:
        words = f"not distinguishable (the 95% CI includes zero)"
    else:
        words = f"{a} {'higher' if d > 0 else 'lower'} than {b}"
    label = f"{a} pass@{k_a} − {b} pass@{k_b}"
    return dict(name=name, comparison=label, diff=d, ci_low=lo, ci_high=hi, problems=m, verdict=words)


def write_report(cfg: ExperimentConfig, evals: dict[str, Path], out: Path, ppl_dir: Path | None = None) -> dict:
    """Build report files in `out` from the evaluation directories {model: dir} (and the
    Perplexity stage's directory, when there is one)."""
    pp = {m: pd.read_csv(d / "per_problem.csv") for m, d in evals.items()}
    passk = pd.concat([pd.read_csv(d / "passk.csv") for d in evals.values()], ignore_index=True)
    pd.concat(pp.values(), ignore_index=True).to_csv(out / "per_problem.csv", index=False)
    passk.to_csv(out / "passk.csv", index=False)
    plots.passk_curves(passk, out / "passk.png", f"{cfg.name}: pass@k on {len(next(iter(pp.values())))} test problems")

    k_max = int(passk["k"].max())
    nb, seed = max(cfg.eval.bootstrap, 1), cfg.seed
    verdicts = []
    if "rl" in pp:
        verdicts.append(verdict("rl_vs_base_pass1", "rl", "base", 1, 1, pp, nb, seed))
        verdicts.append(verdict("base_vs_rl_kmax", "base", "rl", k_max, k_max, pp, nb, seed))
    if "sft" in pp:
        verdicts.append(verdict("sft_vs_base_kmax", "sft", "base", k_max, k_max, pp, nb, seed))

    analysis = analyze(evals, out, tasks=build_tasks(cfg.tasks))
    extra_metrics = [(k, v, 0) for k, v in analysis["metrics"].items()]
    extra_md = analysis_markdown(analysis)
    if ppl_dir is not None:
        ppl = json.loads((ppl_dir / "perplexity.json").read_text())
        shutil.copy(ppl_dir / "perplexity.png", out / "perplexity.png")
        shutil.copy(ppl_dir / "perplexity.json", out / "perplexity.json")
        extra_md += perplexity_markdown(ppl)
        extra_metrics += [(k, v, 0) for k, v in ppl["metrics"].items()]

    table = passk.pivot(index="k", columns="model", values="pass_at_k")
    lo = passk.pivot(index="k", columns="model", values="ci_low")
    hi = passk.pivot(index="k", columns="model", values="ci_high")
    models = list(pp)
    lines = [f"# {cfg.name}: distillation vs RL", "",
             f"Base `{cfg.base_model}`, teacher `{cfg.teacher_model}`, tasks "
             f"{', '.join(t.name for t in cfg.tasks)}; n={cfg.eval.n} samples per problem at temperature "
             f"{cfg.eval.temperature}, top_p {cfg.eval.top_p}; 95% bootstrap CIs over problems (seed {seed}).", "",
             "## Verdicts", ""]
    for v in verdicts:
        lines.append(f"- **{v['comparison']}** = {v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] "
                     f"on {v['problems']} problems: {v['verdict']}.")
    lines += ["", "## pass@k", "", "![pass@k curves](passk.png)", "",
              "| k | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for k in table.index:
        cells = [f"{table.loc[k, m]:.3f} [{lo.loc[k, m]:.3f}, {hi.loc[k, m]:.3f}]" for m in models]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", extra_md] if extra_md else []
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=2))

    metrics = [(f"pass_at_k/{r.model}", r.pass_at_k, int(r.k)) for r in passk.itertuples()]
    # headline numbers under "summary/", so the chart view's first section is the pass_at_k curves
    for m in models:
        if 1 in table.index:
            metrics.append((f"summary/{m}_pass_at_1", table.loc[1, m], 0))
        metrics.append((f"summary/{m}_pass_at_{k_max}", table.loc[k_max, m], 0))
    metrics += [(f"summary/verdict_{v['name']}", v["diff"], 0) for v in verdicts]
    # the parent run gets only the curves and headline numbers, so its chart view opens on them
    return dict(verdicts=verdicts, parent_metrics=metrics, analysis_metrics=list(extra_metrics))


def _table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def _snippet(text: str | None, limit: int = 160) -> str:
    t = " ".join((text or "").split()).replace("|", "\\|")
    return f"`{t[:limit]}{'…' if len(t) > limit else ''}`"


def analysis_markdown(a: dict) -> str:
    cov = a["coverage"]
    lines = ["## Coverage", "", f"Solvable set: problems with at least one correct sample, of {cov['num_problems']}.", ""]
    lines += _table(["model", "solvable"], [[m, v] for m, v in cov["solvable"].items()])
    lines += [""] + _table(["vs base", "both", "base only", "model only", "neither"],
                           [[m, v["both"], v["base_only"], v["model_only"], v["neither"]] for m, v in cov["vs_base"].items()])
    for m, key, title in (("rl", "lost", "Problems lost by RL (base solves, RL does not)"),
                          ("sft", "gained", "Problems gained by SFT (SFT solves, base does not)")):
        items = cov["vs_base"].get(m, {}).get(key, [])
        lines += ["", f"### {title}: {len(items)}", ""]
        for it in items[:10]:
            ex = it.get("correct_completion") or {}
            lines.append(f"- `{it['question']}` = {it['answer']} (difficulty {it['difficulty']}); "
                         f"{it['solved_by']} sample: {_snippet(ex.get('completion'))}")
        if len(items) > 10:
            lines.append(f"- … {len(items) - 10} more in coverage.json")
    lines += ["", "## Per-problem accuracy", "", "![accuracy histogram](accuracy_histogram.png)", "",
              "## pass@k by difficulty", "", "![pass@k by difficulty](passk_by_difficulty.png)", "",
              "## Sampling-efficiency gap", "", "dSE = base pass@k_max − model pass@1 (lower is better).", ""]
    lines += _table(["model", "base pass@k_max", "model pass@1", "dSE"],
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
                     p["entropy"].get(m, {}).get("median", "n/a")])
    lines += _table([f"model m", f"median PPL_{b}(Y_m)", f"median PPL_m(Y_{b})", "median entropy"], rows)
    return "\n".join(lines) + "\n"
