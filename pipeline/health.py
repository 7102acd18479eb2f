"""Training health: did a trained arm learn? Read from the trainer's own log history.

Every trained arm saves `log_history.json` (transformers' `state.log_history`) beside its model.
`check_arm` takes the arm's training metric (RL: `accuracy`, the share of rollouts `verify`
accepts; SFT: TRL's `mean_token_accuracy`) and compares its first window of logged steps (the
first 10%) with its last (the last 20%): the difference with a seeded 95% bootstrap CI over the
logged points. The arm learned when that CI lies above zero and the gain reaches `health.min_gain`. A run that did not learn is not a
finding about its method, so the report marks every verdict that involves it inconclusive.

`plot_arm` draws the arm's curves (reward or accuracy, loss, entropy, completion length,
frac_reward_zero_std and clip ratio for RL; loss and token accuracy for SFT) into one PNG.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FIRST, LAST = 0.10, 0.20  # window shares of the logged steps
MIN_WINDOW = 2  # logged points in each window, at least
# the metric that says "learning" for each kind of arm, in order of preference
TRAINING_METRIC = {"rl": ("accuracy", "reward"), "sft": ("mean_token_accuracy",)}
CURVES = {
    "rl": ("accuracy", "reward", "loss", "entropy", "completions/mean_length", "frac_reward_zero_std",
           "clip_ratio/region_mean", "learning_rate"),
    "sft": ("loss", "mean_token_accuracy", "entropy", "learning_rate"),
}


def read_history(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: training log history not found (a training stage writes it beside its model)")
    return json.loads(p.read_text())


def series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, training rows only (the final summary row has train_loss)."""
    rows = [r for r in history if key in r and "train_runtime" not in r and r[key] is not None]
    return [int(r.get("step", i)) for i, r in enumerate(rows)], [float(r[key]) for r in rows]


def check_arm(history: list[dict[str, Any]], kind: str | tuple[str, ...], min_gain: float = 0.05, n_boot: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """The health of one arm: its training metric's first and last windows, their difference with a
    95% bootstrap CI, and `learned`: the CI lies above zero and the gain is at least `min_gain` (a
    detectable but negligible rise, 0.03 → 0.05, is not a run that learned). `kind` is "rl" or "sft",
    or the arm's own metrics in order of preference (pipeline.arms.Arm.health_metrics)."""
    candidates = TRAINING_METRIC[kind] if isinstance(kind, str) else tuple(kind)
    metric = next((m for m in candidates if series(history, m)[1]), None)
    if metric is None:
        return dict(kind=kind, metric=None, learned=False, points=0,
                    reason=f"no {'/'.join(candidates)} in the log history")
    steps, values = series(history, metric)
    # each window needs two points at least: a bootstrap CI of a single value has no spread, and
    # called a 3-step run that went 0.0 -> 0.625 "learned"
    if len(values) < 2 * MIN_WINDOW:
        return dict(kind=kind, metric=metric, learned=False, points=len(values),
                    reason=f"only {len(values)} logged points of {metric} (need at least {2 * MIN_WINDOW}: "
                           f"{MIN_WINDOW} in each window)")
    a = np.array(values[: max(MIN_WINDOW, math.ceil(FIRST * len(values)))])
    b = np.array(values[-max(MIN_WINDOW, math.ceil(LAST * len(values))):])
    rng = np.random.default_rng(seed)
    boots = (rng.choice(b, (n_boot, len(b))).mean(1) - rng.choice(a, (n_boot, len(a))).mean(1))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    diff = float(b.mean() - a.mean())
    learned = bool(lo > 0 and diff >= min_gain)
    reason = (None if learned else "the last window is not above the first (the 95% CI includes or is below 0)"
              if lo <= 0 else f"the gain {diff:+.3f} is below health.min_gain={min_gain:g}")
    return dict(kind=kind, metric=metric, points=len(values), first_steps=[steps[0], steps[len(a) - 1]],
                last_steps=[steps[-len(b)], steps[-1]], first=float(a.mean()), last=float(b.mean()), diff=diff,
                ci_low=float(lo), ci_high=float(hi), min_gain=min_gain, learned=learned, reason=reason)


def describe(arm: str, h: dict[str, Any]) -> str:
    """One line: 'training accuracy 0.040 → 0.050 (+0.010 [−0.02, +0.04])'."""
    if h.get("first") is None:
        return f"{arm}: {h.get('reason')}"
    name = h["metric"].replace("_", " ")
    return (f"training {name} {h['first']:.3f} → {h['last']:.3f} "
            f"({h['diff']:+.3f} [{h['ci_low']:+.3f}, {h['ci_high']:+.3f}])")


def plot_arm(history: list[dict[str, Any]], kind: str | tuple[str, ...], path: str | Path, title: str) -> Path | None:
    """The arm's logged curves (CURVES[kind], or the names given), one small panel each, in one PNG;
    None if nothing was logged."""
    from pipeline.plots import plt, savefig_atomic

    curves = [(k, *series(history, k)) for k in (CURVES[kind] if isinstance(kind, str) else kind)]
    curves = [c for c in curves if c[2]]
    if not curves:
        return None
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (key, xs, ys) in zip(axes.flat, curves):
        ax.plot(xs, ys, marker=".", ms=3, lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return savefig_atomic(fig, path)
