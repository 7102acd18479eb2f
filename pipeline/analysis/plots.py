"""Figures for the report: accuracy histogram, pass@k curves, perplexity/entropy box plots.

Matplotlib with the Agg backend (no display on these machines). Every figure is written to a
temporary name and renamed into place, so a half-written PNG never looks done. One colour per
model across all figures.
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.core.io import atomic_file  # noqa: E402

MODEL_COLORS = {"base": "tab:gray", "teacher": "tab:green"}  # and each arm's own `color` (pipeline.arms.Arm)
_OTHER = ["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def model_colors() -> dict[str, str]:
    from pipeline.arms import arms

    return {**MODEL_COLORS, **{name: arm.color for name, arm in arms().items() if arm.color}}


def color_of(model: str, order: Sequence[str] = ()) -> str:
    colors = model_colors()
    if model in colors:
        return colors[model]
    others = [m for m in order if m not in colors]
    i = others.index(model) if model in others else zlib.crc32(model.encode())
    return _OTHER[i % len(_OTHER)]


def savefig_atomic(fig, path: str | os.PathLike) -> Path:
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _log2_k_axis(ax, ks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks))
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (log2 scale)")


def accuracy_histogram(counts: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bars: rows of `counts` are models, columns the accuracy bins, values problem counts."""
    models, bins = list(counts.index), list(counts.columns)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(bins) + 2), 4.5))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = [b + (i - (len(models) - 1) / 2) * width for b in range(len(bins))]
        ax.bar(xs, counts.loc[m].to_list(), width=width, label=m, color=color_of(m, models))
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(bins, rotation=30)
    ax.set_xlabel("per-problem accuracy c/n")
    ax.set_ylabel("number of problems")
    ax.set_title(title or "Per-problem accuracy histogram")
    ax.legend(title="model")
    ax.grid(axis="y", alpha=0.3)
    return savefig_atomic(fig, path)


def passk_curves(passk: pd.DataFrame, path: str | os.PathLike, title: str,
                 floor: Mapping[int, float] | None = None) -> Path:
    """Overlaid pass@k curves with their 95% CI bands (passk.csv's columns), log2 k axis; `floor`
    {k: pass@k}, a blind guesser's pass@k on the same problems as the curves (pipeline.analysis.sharpening),
    as a dashed black line."""
    models = list(dict.fromkeys(passk["model"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in models:
        g = passk[passk["model"] == m].sort_values("k")
        ax.plot(g["k"], g["pass_at_k"], marker="o", ms=3, label=m, color=color_of(m, models))
        if g["ci_low"].notna().all():
            ax.fill_between(g["k"], g["ci_low"], g["ci_high"], alpha=0.2, color=color_of(m, models))
    if floor:
        ks = sorted(floor)
        ax.plot(ks, [floor[k] for k in ks], "--", color="black", lw=1, label="blind guesser")
    _log2_k_axis(ax, sorted(passk["k"].unique()))
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(title="model (95% CI bands)" if passk["ci_low"].notna().all() else "model (no CI: eval.bootstrap is 0)")
    return savefig_atomic(fig, path)


def passk_by_difficulty(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One panel per difficulty, one line per model. `df` columns: model, difficulty, k, pass_at_k,
    num_problems (difficulty is a label string, panels in the order they first appear)."""
    diffs = list(dict.fromkeys(df["difficulty"]))
    models = list(dict.fromkeys(df["model"]))
    cols = min(3, len(diffs))
    rows = math.ceil(len(diffs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, d in zip(axes.flat, diffs):
        g = df[df["difficulty"] == d]
        for m in models:
            gm = g[g["model"] == m].sort_values("k")
            if len(gm):
                ax.plot(gm["k"], gm["pass_at_k"], marker="o", ms=3, label=m, color=color_of(m, models))
        _log2_k_axis(ax, sorted(g["k"].unique()))
        ax.set_title(f"difficulty {d} ({int(g['num_problems'].max())} problems)")
        ax.set_ylabel("pass@k")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(title="model", fontsize=8)
    for ax in list(axes.flat)[len(diffs):]:
        ax.set_visible(False)
    fig.suptitle("pass@k by difficulty")
    return savefig_atomic(fig, path)


def cot_passk(curves: Mapping[str, Mapping[str, Mapping[int, float]]], path: str | os.PathLike) -> Path:
    """Solid: pass@k (answer correct); dashed: CoT-pass@k (answer and reasoning correct).
    `curves[model]` has keys "pass_at_k" and "cot_pass_at_k", each {k: value}."""
    models = list(curves)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ks_all: set[int] = set()
    for m in models:
        for key, style in (("pass_at_k", "-"), ("cot_pass_at_k", "--")):
            ks = sorted(int(k) for k in curves[m][key])
            ks_all |= set(ks)
            label = f"{m} {'pass@k' if key == 'pass_at_k' else 'CoT-pass@k'}"
            ax.plot(ks, [curves[m][key][k] for k in ks], style, marker="o", ms=3, color=color_of(m, models), label=label)
    _log2_k_axis(ax, sorted(ks_all))
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("pass@k (solid: answer correct) vs CoT-pass@k (dashed: answer and reasoning correct)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return savefig_atomic(fig, path)


def box_panels(panels: Sequence[tuple[str, str, Mapping[str, Sequence[float]], bool]], path: str | os.PathLike,
               color_model: Mapping[str, str] | None = None) -> Path:
    """Side-by-side box plots; each panel is (title, ylabel, {label: values}, log_y); log_y applies
    when the values span more than a factor of 10. Medians are
    drawn as a line and written above each box. `color_model` maps a box label to the model
    whose colour it takes (default: the label itself)."""
    color_model = color_model or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, ylabel, groups, log_y) in zip(axes.flat, panels):
        labels = [k for k, v in groups.items() if len(v)]
        data = [list(groups[k]) for k in labels]
        if data:
            bp = ax.boxplot(data, showfliers=True, patch_artist=True, medianprops={"color": "black", "linewidth": 2})
            for patch, label in zip(bp["boxes"], labels):
                patch.set_facecolor(color_of(color_model.get(label, label)))
                patch.set_alpha(0.5)
            for i, vals in enumerate(data, 1):
                med = float(pd.Series(vals).median())
                ax.annotate(f"median {med:.3g}", (i, med), xytext=(0, 4), textcoords="offset points",
                            ha="center", fontsize=8)
            ax.set_xticks(range(1, len(labels) + 1))
            ax.set_xticklabels(labels, rotation=15)
        flat = [v for vals in data for v in vals]
        if log_y and flat and min(flat) > 0 and max(flat) / min(flat) > 10:  # log only where the range needs it
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    return savefig_atomic(fig, path)


def training_length(tab: pd.DataFrame, path: str | os.PathLike, title: str = "pass@k against training steps") -> Path:
    """pass@1 and pass@k_max (with CI bars where there are CIs) against the training step, one line
    per arm and k. `tab`: arm, step, k, pass_at_k, ci_low, ci_high."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    arms = list(dict.fromkeys(tab["arm"]))
    for (arm, k), g in tab.groupby(["arm", "k"], sort=False):
        g = g.sort_values("step")
        err = None
        if g["ci_low"].notna().all():
            err = [g["pass_at_k"] - g["ci_low"], g["ci_high"] - g["pass_at_k"]]
        ax.errorbar(g["step"], g["pass_at_k"], yerr=err, marker="o", capsize=3, color=color_of(arm, arms),
                    ls="-" if k == 1 else "--", label=f"{arm} pass@{k}")
    ax.set_xlabel("training step")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return savefig_atomic(fig, path)


def support_transitions(sup: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Stacked bars per arm and level (sup: pipeline.analysis.sharpening.support_transitions rows with an
    `arm` column): the share of the level's problems preserved, expanded, shrunk and out of support."""
    kinds = [("preserved", "tab:gray"), ("expanded", "tab:green"), ("shrunk", "tab:red"), ("out_of_support", "white")]
    arms = list(dict.fromkeys(sup["arm"]))
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.8), squeeze=False, sharey=True, layout="constrained")
    for ax, arm in zip(axes[0], arms):
        g = sup[sup["arm"] == arm]
        bottom = [0.0] * len(g)
        for kind, colour in kinds:
            share = (g[kind] / g["problems"].clip(lower=1)).tolist()
            ax.bar(g["level"].astype(str), share, bottom=bottom, color=colour, edgecolor="black", lw=0.5,
                   label=kind.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, share)]
        ax.set_title(f"{arm} against the base")
        ax.set_xlabel("difficulty level")
    axes[0][0].set_ylabel("share of the level's problems")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return savefig_atomic(fig, path)


def log_ratio_gain(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Each arm's pass@1 gain over the base against its mean log-ratio log p_arm − log p_base per token on its
    own samples (pipeline.analysis.logratio), with 95% intervals."""
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    names = [r["model"] for r in rows]
    for r in rows:
        x = r["log_ratio_per_token"]
        xerr = [[x - r["ci_low"]], [r["ci_high"] - x]] if not math.isnan(r["ci_low"]) else None
        yerr = [[r["gain"] - r["gain_low"]], [r["gain_high"] - r["gain"]]] if not math.isnan(r["gain_low"]) else None
        ax.errorbar([x], [r["gain"]], xerr=xerr, yerr=yerr, fmt="o", capsize=3,
                    color=color_of(r["model"], names), label=r["model"])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("mean log p_arm − log p_base per token (T = 1), on the arm's samples (nats)")
    ax.set_ylabel("pass@1 gain over the base")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return savefig_atomic(fig, path)
