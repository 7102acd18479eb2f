"""The report: pass@k table and curves for every model, and three verdicts computed from the data.

Each verdict is a paired difference over the shared test problems with a seeded 95% bootstrap
CI; one whose CI includes zero says "not distinguishable".
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import ExperimentConfig  # noqa: E402
from pipeline.passk import paired_difference  # noqa: E402

COLORS = {"base": "tab:gray", "teacher": "tab:purple", "sft": "tab:blue", "rl": "tab:red"}


def verdict(name: str, a: str, b: str, k_a: int, k_b: int, pp: dict[str, pd.DataFrame], n_boot: int, seed: int) -> dict:
    """pass@k_a(a) − pass@k_b(b) with its CI, in words."""
    d, lo, hi, m = paired_difference(pp[a], pp[b], k_a, k_b, n_boot=n_boot, seed=seed)
    if lo <= 0 <= hi:
        words = f"not distinguishable (the 95% CI includes zero)"
    else:
        words = f"{a} {'higher' if d > 0 else 'lower'} than {b}"
    label = f"{a} pass@{k_a} − {b} pass@{k_b}"
    return dict(name=name, comparison=label, diff=d, ci_low=lo, ci_high=hi, problems=m, verdict=words)


def plot_passk(passk: pd.DataFrame, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for model, g in passk.groupby("model", sort=False):
        c = COLORS.get(model)
        ax.plot(g["k"], g["pass_at_k"], marker="o", ms=3, label=model, color=c)
        ax.fill_between(g["k"], g["ci_low"], g["ci_high"], alpha=0.2, color=c)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem, log2 scale)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(title="model (95% CI bands)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(cfg: ExperimentConfig, evals: dict[str, Path], out: Path) -> dict:
    """Build report files in `out` from the evaluation directories {model: dir}."""
    pp = {m: pd.read_csv(d / "per_problem.csv") for m, d in evals.items()}
    passk = pd.concat([pd.read_csv(d / "passk.csv") for d in evals.values()], ignore_index=True)
    pd.concat(pp.values(), ignore_index=True).to_csv(out / "per_problem.csv", index=False)
    passk.to_csv(out / "passk.csv", index=False)
    plot_passk(passk, out / "passk.png", f"{cfg.name}: pass@k on {len(next(iter(pp.values())))} test problems")

    k_max = int(passk["k"].max())
    nb, seed = max(cfg.eval.bootstrap, 1), cfg.seed
    verdicts = []
    if "rl" in pp:
        verdicts.append(verdict("rl_vs_base_pass1", "rl", "base", 1, 1, pp, nb, seed))
        verdicts.append(verdict("base_vs_rl_kmax", "base", "rl", k_max, k_max, pp, nb, seed))
    if "sft" in pp:
        verdicts.append(verdict("sft_vs_base_kmax", "sft", "base", k_max, k_max, pp, nb, seed))

    extra_md, extra_metrics = "", []
    try:
        from pipeline.analysis import analyze  # the analyses beyond pass@k (coverage, histograms, ...)
    except ImportError:
        analyze = None
    if analyze is not None:
        res = analyze(evals, out, n_boot=nb, seed=seed)
        extra_md, extra_metrics = res.get("markdown", ""), res.get("metrics", [])

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
    for m in models:
        metrics.append((f"pass_at_1/{m}", table.loc[1, m] if 1 in table.index else float("nan"), 0))
        metrics.append((f"pass_at_kmax/{m}", table.loc[k_max, m], 0))
    metrics += [(f"verdict/{v['name']}", v["diff"], 0) for v in verdicts]
    return dict(verdicts=verdicts, parent_metrics=metrics + list(extra_metrics))
