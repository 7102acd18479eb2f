"""Training health: did a trained arm learn? Read from the trainer's own log history, or from the
probe set (pipeline/analysis/probe.py) when the prompt order makes the log's windows unlike each other.

Every trained arm saves `log_history.json` (transformers' `state.log_history`) beside its model.
`check_arm` takes the arm's training metric (RL: `accuracy`, the share of rollouts `verify`
accepts; SFT: TRL's `mean_token_accuracy`) over m logged points and compares its first window
(the first max(3, ceil(0.1 m)) points) with its last (the last max(3, ceil(0.2 m))): mean(last) −
mean(first) against its standard error under AR(1) noise whose lag-1 autocorrelation is the run's
own (the residuals around a straight line through the whole run, their lag-1 correlation r corrected
for its downward bias, r + (1 + 4 r) / m, within [0, RHO_CAP]), the noise variance from the same
residuals. Logged training metrics are autocorrelated (a batch's prompts and the policy carry over
from one logging step to the next), and a fixed assumed correlation gives flat runs whose own is
higher a false "learned" (a fixed 0.4 did so 15% of the time at 0.7). The one-sided 95% lower
bound is difference − CRITICAL(m) · se, with CRITICAL simulated so that flat runs with any lag-1
correlation up to 0.7 cross it at most 4.5% of the time (scripts/calibrate_health.py). The arm
learned when that bound is above zero and the gain reaches `health.min_gain`. Fewer than MIN_POINTS
(6) points are "not judged" (`judged` False, with the reason): the windows would overlap. A run that
did not learn, or was not judged, is not a finding about its method, so the report marks every
verdict that involves it inconclusive.

Measured (tests/analysis/test_calibration.py, 20,000 flat runs per cell, Monte Carlo s.e. <= 0.15%):
flat AR(1) runs of 10-60 points are called learned 0.2-2.6% of the time at rho 0, 1.0-3.6% at 0.3,
2.1-3.8% at 0.5, 4.2-4.7% at 0.7 (beyond the bound, 0.8: up to 6.2%). Power: the default preset's
rise, accuracy 0.38 → 0.66 over 30 points with sd 0.068 noise, is called learned 95% of the time at
rho 0.3 (80% at 0.7); over 10 points 57-65%. The default preset's GRPO run
(tests/fixtures/log_histories/rl_learning.json: 30 points, 0.34 → 0.67, its own corrected r 0.22)
reads learned with a lower bound of +0.20.

`check_probe` reads probe.json (curriculum and one-shot RL runs write it): per-problem correct
counts of a fixed probe set at the start and the end of training; the arm learned when the paired
t lower bound (one-sided, PROBE_LEVEL 0.965: calibrated to <= 5% on equal-rate binomial draws) of the
per-problem accuracy gain is above zero and the gain reaches `health.min_gain`.

`plot_arm` draws the arm's curves (reward or accuracy, loss, entropy, completion length,
frac_reward_zero_std and clip ratio for RL; loss and token accuracy for SFT) into one PNG.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

FIRST, LAST = 0.10, 0.20  # window shares of the logged points
MIN_WINDOW = 3  # logged points in each window, at least
MIN_POINTS = 2 * MIN_WINDOW  # fewer: not judged (the windows would overlap)
RHO_CAP = 0.95  # the largest lag-1 autocorrelation a run's own estimate may take
# one-sided 95% critical values of difference / window_se by logged points: per m, the 95.5th percentile of
# the statistic on flat AR(1) runs, the largest over rho = 0, 0.1, ..., 0.7 (scripts/calibrate_health.py,
# 40,000 runs per cell); the 0.5-point margin keeps a fresh simulation under 5% (tests/analysis/test_calibration.py)
CRITICAL = {6: 3.828, 7: 3.787, 8: 3.711, 9: 3.65, 10: 3.577, 12: 3.253, 15: 2.964, 20: 2.537, 25: 2.327, 30: 2.191, 40: 2.026,
            50: 1.944, 60: 1.892}
MIN_PROBE = 8  # probe problems, at least, for a judgment from probe.json
# the paired t's one-sided level: on 4-sample 0/1 data the nominal 0.95 passed equal rates up to 5.4% of
# the time (simulation: 8-64 problems, pass rates 0.02-0.97, 20,000 runs each); 0.965 keeps it at or below 3.8%
PROBE_LEVEL = 0.965
PROBE_FILE = "probe.json"  # beside the model and its log_history.json (pipeline/analysis/probe.py writes it)


def _arm_spec(kind: str | tuple[str, ...], what: str) -> tuple[str, ...]:
    """The names given, or for an arm's name its declared health_metrics or curves (pipeline.arms.Arm)."""
    if not isinstance(kind, str):
        return tuple(kind)
    from pipeline.arms import get_arm

    return getattr(get_arm(kind), what)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: training log history not found (a training stage writes it beside its model)")
    return json.loads(p.read_text())


def series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, training rows only (the final summary row has train_loss)."""
    rows = [r for r in history if key in r and "train_runtime" not in r and r[key] is not None]
    return [int(r.get("step", i)) for i, r in enumerate(rows)], [float(r[key]) for r in rows]


def window_sizes(m: int) -> tuple[int, int]:
    return max(MIN_WINDOW, math.ceil(FIRST * m)), max(MIN_WINDOW, math.ceil(LAST * m))


@lru_cache(maxsize=256)
def _design(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For m logged points: the residual maker M of a straight-line fit, the window contrast c (last mean
    minus first mean) and, per lag l, the sums a_l = sum_{|i-j|=l} c_i c_j and b_l = sum_{|i-j|=l} M_ij,
    so that under AR(1) noise of lag-1 correlation rho and variance s2, var(c.x) = s2 sum_l a_l rho^l and
    E[residual sum of squares] = s2 sum_l b_l rho^l."""
    n1, n2 = window_sizes(m)
    x = np.stack([np.ones(m), np.arange(m, dtype=float)], axis=1)
    resid = np.eye(m) - x @ np.linalg.solve(x.T @ x, x.T)
    c = np.zeros(m)
    c[:n1], c[m - n2:] = -1 / n1, 1 / n2
    lag = np.abs(np.subtract.outer(np.arange(m), np.arange(m))).ravel()
    return resid, c, np.bincount(lag, np.outer(c, c).ravel(), m), np.bincount(lag, resid.ravel(), m)


def autocorrelation(values: np.ndarray) -> np.ndarray:
    """Per run (last axis: logged points), the lag-1 autocorrelation of the residuals around a straight
    line, plus the first-order correction (1 + 4 r) / m of their downward bias, clipped to [0, RHO_CAP]."""
    values = np.asarray(values, float)
    m = values.shape[-1]
    e = values @ _design(m)[0]
    ss = (e ** 2).sum(-1)
    r = np.divide((e[..., 1:] * e[..., :-1]).sum(-1), ss, out=np.zeros_like(ss), where=ss > 0)
    return np.clip(r + (1 + 4 * r) / m, 0.0, RHO_CAP)


def window_se(values: np.ndarray, rho=None) -> np.ndarray:
    """Per run, the standard error of mean(last window) - mean(first window) under AR(1) noise with the
    run's own lag-1 autocorrelation (`autocorrelation`, or `rho` given): the noise variance from the
    residuals around a straight line, each scaled by its exact expectation under that correlation."""
    values = np.asarray(values, float)
    m = values.shape[-1]
    resid, _, a, b = _design(m)
    rho = autocorrelation(values) if rho is None else np.broadcast_to(np.asarray(rho, float), values.shape[:-1])
    powers = np.asarray(rho)[..., None] ** np.arange(m)
    ss = ((values @ resid) ** 2).sum(-1)
    return np.sqrt(ss * (powers @ a) / (powers @ b))


def critical(m: int) -> float:
    """The one-sided 95% critical value of (difference / window_se) at m logged points (CRITICAL, linearly
    interpolated; past its last entry, the last)."""
    ms = sorted(CRITICAL)
    return float(np.interp(m, ms, [CRITICAL[x] for x in ms]))


def window_test(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """(first mean, last mean, difference, one-sided 95% lower bound, upper bound) of each row of
    `values` (runs x m logged points, m >= MIN_POINTS): difference -+ critical(m) x window_se."""
    values = np.asarray(values, float)
    m = values.shape[-1]
    n1, n2 = window_sizes(m)
    a, b = values[..., :n1].mean(-1), values[..., m - n2:].mean(-1)
    h = critical(m) * window_se(values)
    return a, b, b - a, b - a - h, b - a + h


def paired_test(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, ...]:
    """(start mean, end mean, difference, one-sided lower bound, upper bound) of a paired t over
    the last axis at PROBE_LEVEL (probe problems: per-problem accuracy at the start and the end of training)."""
    d = end - start
    n = d.shape[-1]
    se = d.std(-1, ddof=1) / math.sqrt(n)
    t = stats.t.ppf(PROBE_LEVEL, n - 1)
    return start.mean(-1), end.mean(-1), d.mean(-1), d.mean(-1) - t * se, d.mean(-1) + t * se


def learned(lo, diff, min_gain: float):
    """The decision, on scalars or arrays: the lower bound is above zero and the gain reaches min_gain."""
    return (lo > 0) & (diff >= min_gain)


def _verdict(h: dict[str, Any], min_gain: float) -> dict[str, Any]:
    ok = bool(learned(h["ci_low"], h["diff"], min_gain))
    if ok:
        reason = None
    elif h["diff"] < 0 and h["ci_high"] < 0:
        reason = f"the metric fell ({h['diff']:+.3f}; the one-sided {h.get('level', 0.95):.1%} upper bound is below 0)"
    elif h["ci_low"] <= 0:
        reason = f"the last window is not above the first (the one-sided {h.get('level', 0.95):.1%} lower bound is at or below 0)"
    else:
        reason = f"the gain {h['diff']:+.3f} is below health.min_gain={min_gain:g}"
    return dict(h, min_gain=min_gain, judged=True, learned=ok, reason=reason)


def at_bound(values, what: str) -> str | None:
    """The reason a metric cannot be judged when it sits at 0 or 1 everywhere (its floor or ceiling): its
    differences are all 0, so any interval from them would be zero-width, certain where nothing was
    measured (a run can learn what the metric cannot see, such as Logic-RL's format); None otherwise."""
    v = np.asarray(values, float)
    for bound, name in ((0.0, "floor"), (1.0, "ceiling")):
        if len(v) and np.all(v == bound):
            return f"not judged: {what.format(f'{bound:.0f}')}, its {name}: it cannot show a change"
    return None


def check_arm(history: list[dict[str, Any]], kind: str | tuple[str, ...], min_gain: float = 0.05,
              seed: int = 0) -> dict[str, Any]:
    """The health of one arm from its log history: the training metric's first and last windows,
    their difference with one-sided 95% bounds, `judged` (enough logged points) and `learned`. `kind`
    is an arm's name (its pipeline.arms.Arm.health_metrics) or the metrics themselves, in order of preference.
    `seed` is unused (the test has no resampling); kept for callers."""
    candidates = _arm_spec(kind, "health_metrics")
    metric = next((m for m in candidates if series(history, m)[1]), None)
    if metric is None:
        return dict(kind=kind, metric=None, judged=False, learned=False, points=0,
                    reason=f"not judged: no {'/'.join(candidates)} in the log history")
    steps, values = series(history, metric)
    if len(values) < MIN_POINTS:
        return dict(kind=kind, metric=metric, judged=False, learned=False, points=len(values),
                    reason=f"not judged: only {len(values)} logged points of {metric} (need at least {MIN_POINTS}: "
                           f"{MIN_WINDOW} in each window)")
    stuck = at_bound(values, f"{metric} is {{}} at every one of the {len(values)} logged points")
    if stuck:
        return dict(kind=kind, metric=metric, source="log_history", judged=False, learned=False, points=len(values),
                    reason=stuck)
    first, last, diff, lo, hi = (float(x) for x in window_test(np.array(values)))
    n1, n2 = window_sizes(len(values))
    return _verdict(dict(kind=kind, metric=metric, source="log_history", points=len(values),
                         first_steps=[steps[0], steps[n1 - 1]], last_steps=[steps[-n2], steps[-1]], first=first,
                         last=last, diff=diff, ci_low=lo, ci_high=hi), min_gain)


def check_probe(probe: dict[str, Any], min_gain: float = 0.05, kind: str = "probe") -> dict[str, Any]:
    """The health of an RL arm from its probe.json (pipeline/analysis/probe.py): per-problem accuracy of the
    probe set at the start and the end of training, a paired one-sided t bound of the gain at PROBE_LEVEL (0.965)."""
    k = int(probe["samples"])
    start, end = np.array(probe["start"], float) / k, np.array(probe["end"], float) / k
    base = dict(kind=kind, metric="probe accuracy", source=PROBE_FILE, points=len(start))
    if len(start) < MIN_PROBE:
        return dict(base, judged=False, learned=False,
                    reason=f"not judged: only {len(start)} probe problems in {PROBE_FILE} (need at least {MIN_PROBE})")
    stuck = at_bound(np.concatenate([start, end]), f"the probe accuracy is {{}} on all {len(start)} problems at the start "
                                                     f"and the end ({k} samples each)")
    if stuck:
        return dict(base, judged=False, learned=False, reason=stuck)
    first, last, diff, lo, hi = (float(x) for x in paired_test(start, end))
    return _verdict(dict(base, first=first, last=last, diff=diff, ci_low=lo, ci_high=hi, level=PROBE_LEVEL), min_gain)


def describe(arm: str, h: dict[str, Any]) -> str:
    """One line: 'training accuracy 0.040 → 0.050 (+0.010 [−0.02, +0.04])', the gain between its
    one-sided 95% bounds; or the reason there is no gain ('rl: not judged: ...')."""
    if h.get("first") is None:
        return f"{arm}: {h.get('reason')}"
    name = h["metric"].replace("_", " ")
    return (f"training {name} {h['first']:.3f} → {h['last']:.3f} "
            f"({h['diff']:+.3f} [{h['ci_low']:+.3f}, {h['ci_high']:+.3f}])")


def plot_arm(history: list[dict[str, Any]], kind: str | tuple[str, ...], path: str | Path, title: str) -> Path | None:
    """The arm's logged curves (an arm's name: its pipeline.arms.Arm.curves; or the names given), one small panel each, in one PNG;
    None if nothing was logged."""
    from pipeline.analysis.plots import plt, savefig_atomic

    curves = [(k, *series(history, k)) for k in _arm_spec(kind, "curves")]
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
