"""Sharpening or new capability? The analyses that sharpen the paper's question, each from data the
study already has (the evaluations' per-problem counts and samples, the problems stage's training
answers, the perplexity stage's scores):

- crossover: the smallest k at which the base's pass@k is at least an arm's, with a percentile bootstrap
  interval over problems (1st to 99th percentile: at 2.5/97.5 it missed a simulated true crossover 5.5%
  of the time, at 1/99 3%; tests/analysis/test_calibration.py), or "no crossover up to k = n" (n, the samples per problem, is the largest k
  the data can show one at);
- the guessing floor: the pass@k of a blind guesser that draws every answer from its task's training
  answers, computed exactly: 1 - (1 - p_i)^k for a test answer whose share of the training answers is p_i;
- support transitions (Wu et al. 2025, "The Invisible Leash"): each test problem, at the sample
  budget, preserved (base and arm solve it), expanded (only the arm), shrunk (only the base) or out of
  support (neither), per difficulty level, counts with bootstrap intervals over that level's problems;
- distinct correct solutions ("RL Squeezes, SFT Expands"): per problem and model, how many distinct
  reasoning chains among the correct samples (the task's `canonical_chain`);
- net gains: an arm's pass@k minus the best of a comparison group (control arms with another reward,
  the base sampled at a lower temperature), paired over problems like every verdict, with an interval
  simultaneous over the group's members (Bonferroni), so picking the best on the same data does not
  inflate its error rate;
- KL(arm || base) on the arm's own test samples: the mean over completion tokens of
  log p_arm - log p_base, from the perplexity stage's scores of the same (problem, sample) pairs.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.analysis.passk import paired_difference, per_problem_passk, resample_weights
from pipeline.core.text import md_table as _table

SUPPORT = ("preserved", "expanded", "shrunk", "out_of_support")
# the crossover interval's tails: the percentile bootstrap of a first-crossing k at 2.5% per tail missed the
# true crossover 5.5% of the time (simulated, tests/analysis/test_calibration.py); at 1% per tail it stays under 5%
CROSSOVER_TAIL = 0.01


def _merge(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    m = a[["problem_id", "n", "correct"]].merge(b[["problem_id", "n", "correct"]], on="problem_id", suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError("the two evaluations share no problem ids")
    return m.sort_values("problem_id", kind="stable").reset_index(drop=True)


def _first_at_least(diff: np.ndarray) -> np.ndarray:
    """Per row of diff [..., K] (base - arm at k = 1..K): the smallest k with diff >= 0, inf if none."""
    hit = diff >= -1e-12  # ties count as the base having caught up
    first = np.argmax(hit, axis=-1).astype(float) + 1
    first[~hit.any(axis=-1)] = np.inf
    return first


def crossover(base: pd.DataFrame, arm: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The smallest k at which pass@k(base) >= pass@k(arm), k = 1..K with K the smaller sample count:
    {k (None: no crossover up to K), ci_low, ci_high (None: beyond K), k_limit K, share of resamples
    with a crossover, arm_leads_at_1}. The interval is the CROSSOVER_TAIL and 1 - CROSSOVER_TAIL percentiles
    (order statistics) of the crossover over problem resamples; a bound past K means no crossover in that tail."""
    m = _merge(base, arm)
    K = int(min(m["n_a"].min(), m["n_b"].min()))
    ks = list(range(1, K + 1))
    vb = per_problem_passk(m["n_a"].to_numpy(), m["correct_a"].to_numpy(), ks)
    va = per_problem_passk(m["n_b"].to_numpy(), m["correct_b"].to_numpy(), ks)
    diff = vb - va
    k = _first_at_least(diff.mean(axis=0)[None])[0]
    out: dict[str, Any] = dict(k=None if math.isinf(k) else int(k), k_limit=K, problems=len(m),
                               arm_leads_at_1=bool(diff[:, 0].mean() < 0), ci_low=None, ci_high=None, share_crossing=None)
    if n_boot > 0 and len(m) > 1:
        boots = _first_at_least(resample_weights(len(m), n_boot, seed) @ diff / len(m))
        lo, hi = np.percentile(boots, [100 * CROSSOVER_TAIL, 100 * (1 - CROSSOVER_TAIL)], method="inverted_cdf")
        out.update(ci_low=None if math.isinf(lo) else int(lo), ci_high=None if math.isinf(hi) else int(hi),
                   share_crossing=float(np.isfinite(boots).mean()))
    return out


def crossover_words(c: Mapping[str, Any]) -> str:
    if not c["arm_leads_at_1"]:
        return "no lead to lose: the base's pass@1 is already at least the arm's"
    if c["k"] is None:
        tail = "" if c["ci_low"] is None else f" (interval [{c['ci_low']}, > {c['k_limit']}])"
        return f"no crossover up to k = {c['k_limit']}{tail}"
    lo = c["ci_low"]
    hi = f"> {c['k_limit']}" if c["ci_high"] is None else c["ci_high"]
    return f"k = {c['k']}" + ("" if lo is None else f" [{lo}, {hi}]")


def guesser_passk(test_answers: list[str], train_answers: list[str], ks: list[int]) -> dict[int, float]:
    """Exact pass@k of a guesser that draws each answer independently from the training answers'
    empirical distribution: mean over test problems of 1 - (1 - p_i)^k."""
    if not train_answers:
        raise ValueError("guesser_passk: no training answers to draw from")
    freq = Counter(train_answers)
    p = np.array([freq.get(a, 0) / len(train_answers) for a in test_answers], dtype=float)
    return {k: float(np.mean(1 - (1 - p) ** k)) for k in ks}


def support_transitions(base: pd.DataFrame, arm: pd.DataFrame, levels: Mapping[str, str],
                        intervals: bool = True) -> pd.DataFrame:
    """Rows per level ("all" first, then each level): problems, and per class of SUPPORT its count
    and a 95% interval of the count: the exact (Clopper-Pearson) interval of the class's share of the
    level, times the level's problems. It covers the share in a population of problems like these (a
    percentile bootstrap would print "60 [60, 60]" when every problem is in one class); it treats each
    problem's class at this sample budget as known. intervals=False (eval.bootstrap: 0): none."""
    m = _merge(base, arm)
    b, a = m["correct_a"].to_numpy() > 0, m["correct_b"].to_numpy() > 0
    cls = np.stack([b & a, a & ~b, b & ~a, ~a & ~b], axis=1).astype(float)  # [problem, class]
    lv = m["problem_id"].map(lambda p: levels.get(p, "none")).to_numpy()
    rows = []
    for name in ["all", *sorted(set(lv), key=_level_key)]:
        sel = cls if name == "all" else cls[lv == name]
        row: dict[str, Any] = {"level": name, "problems": len(sel)}
        counts = sel.sum(axis=0)
        for j, c in enumerate(SUPPORT):
            row[c] = int(counts[j])
            lo = hi = math.nan
            if intervals and len(sel):
                ci = stats.binomtest(int(counts[j]), len(sel)).proportion_ci(0.95, method="exact")
                lo, hi = ci.low * len(sel), ci.high * len(sel)
            row[f"{c}_low"], row[f"{c}_high"] = float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def _level_key(s: str):
    try:
        return (0, float(s))
    except ValueError:
        return (1, 0.0)


def distinct_correct(samples: pd.DataFrame, canonical: Callable[[str, str], str | None]) -> pd.Series:
    """Per problem: the number of distinct canonical chains among its correct samples
    (canonical(problem_id, completion); None, a chain the task cannot read, counts as one more form)."""
    ok = samples[samples["correct"]]
    chains = [canonical(pid, c) for pid, c in ok[["problem_id", "completion"]].itertuples(index=False)]
    per = pd.Series(chains, index=ok["problem_id"].to_numpy(), dtype=object).fillna("<unreadable>")
    return per.groupby(level=0).nunique()


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def canonical_chain(task, problem, completion: str) -> str:
    """A correct sample's reasoning path in canonical form: the task's own `canonical_chain(problem,
    completion)` when it has one, else the normalised text of the reasoning (the <think> block when
    there is one, else the whole completion): lines stripped, blank lines dropped, inner whitespace
    collapsed, lower case. For toy_arith that is the sequence of operations as written, one per line."""
    own = getattr(task, "canonical_chain", None)
    if own is not None:
        return own(problem, completion)
    m = _THINK.search(completion)
    text = m.group(1) if m else completion
    return "\n".join(" ".join(ln.split()).lower() for ln in text.splitlines() if ln.strip())


def net_gain(pp: Mapping[str, pd.DataFrame], arm: str, group: list[str], k: int, n_boot: int, seed: int,
             level: float = 0.95) -> dict[str, Any]:
    """pass@k(arm) minus the best of group: min over the group's members c of the paired mean of
    pass@k(arm) - pass@k(c) (best: that c), with a simultaneous `level` interval: each member's paired
    t-interval at level 1 - (1 - level) / len(group) (Bonferroni), the bounds the smallest lower and the
    smallest upper bound over the members. Picking the best on the same data and then using its own 95%
    interval called an arm equal to every control "lower" 4.4-6.4% of the time at a nominal 2.5%; the
    simultaneous interval holds the nominal rate on each side (tests/analysis/test_sharpening.py). The MDD
    is the best's, at the adjusted level."""
    each_level = 1 - (1 - level) / len(group)
    res = {c: paired_difference(pp[arm], pp[c], k, k, n_boot=n_boot, seed=seed, level=each_level) for c in group}
    best = min(res, key=lambda c: res[c][0])
    d, _, _, n, mdd = res[best]
    lo, hi = min(r[1] for r in res.values()), min(r[2] for r in res.values())
    value = float(per_problem_passk(pp[best]["n"].to_numpy(), pp[best]["correct"].to_numpy(), [k])[:, 0].mean())
    return dict(arm=arm, k=k, best=best, best_value=value, diff=d, ci_low=lo, ci_high=hi, problems=n, mdd=mdd,
                level=level, member_level=each_level)


def kl_to_base(records: list[dict], model: str, base: str = "base", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """KL(model || base) estimated on the model's own sampled completions: the pooled mean over completion
    tokens of log p_model - log p_base (the perplexity stage's nll sums, scored by each model on the same
    (problem, sample) pairs), and a 95% bootstrap interval over those pairs. The samples were drawn at
    the evaluation's temperature and top_p, so this is the divergence on what the evaluation sees."""
    own = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == model and r["source"] == model}
    by_base = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == base and r["source"] == model}
    keys = sorted(set(own) & set(by_base))
    if not keys:
        raise ValueError(f"kl_to_base: no (problem, sample) pair of {model!r} is scored by both {model!r} and {base!r}")
    diff = np.array([by_base[x]["nll"] - own[x]["nll"] for x in keys])  # sum over tokens of log p_model - log p_base
    tokens = np.array([own[x]["num_tokens"] for x in keys], dtype=float)
    out = dict(model=model, pairs=len(keys), tokens=int(tokens.sum()), kl_per_token=float(diff.sum() / max(tokens.sum(), 1)),
               kl_per_sequence=float(diff.mean()), ci_low=math.nan, ci_high=math.nan)
    if n_boot > 0 and len(keys) > 1:
        w = resample_weights(len(keys), n_boot, seed)
        ratio = (w @ diff) / np.maximum(w @ tokens, 1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(ratio, [2.5, 97.5]))
    return out


# ---- the report's section ----------------------------------------------------------------------------


def section(pp: Mapping[str, pd.DataFrame], runs: Mapping[str, Any], *, arms: list[str], controls: Mapping[str, list[str]],
            sharpened: list[str], k_max: int, ks: list[int], train_answers: Mapping[str, list[str]], reasoning: Mapping[str, Any] | None,
            canonical: Callable[[Any, str], str | None], ppl_records: list[dict] | None, n_boot: int, seed: int,
            out, judge: Callable[[list[str], float, float], str]) -> dict[str, Any]:
    """Every analysis above for the report: {"markdown": [...], "warning": [...] (for the report's top),
    "metrics": [(name, value, step)], "data": {...}} and, in `out`, sharpening.json,
    support_transitions.csv/.png and kl_gain.png. `arms` are the trained arms compared with the base,
    `controls` {arm: its control arms}, `sharpened` the base's lower-temperature rows, `runs` the loaded
    EvalRuns (pipeline.analysis.analyses), `judge(models, lo, hi, d)` a paired difference's verdict words."""
    from pipeline.analysis import plots
    from pipeline.analysis.analyses import difficulty_label, write_json_atomic
    from pipeline.core.io import write_atomic

    base = pp["base"]
    md = ["## Sharpening or new capability?", ""]
    warn: list[str] = []
    metrics: list[tuple[str, float, int]] = []
    data: dict[str, Any] = {}
    arms_present = [a for a in arms if a in pp]

    cross = {a: crossover(base, pp[a], n_boot, seed) for a in arms_present}
    data["crossover"] = cross
    md += ["### Where the curves cross", "",
           "The smallest k at which the base's pass@k is at least the arm's, with a bootstrap interval over "
           f"problems (its {CROSSOVER_TAIL:.0%} and {1 - CROSSOVER_TAIL:.0%} percentiles: in simulation it missed the true crossover "
           f"3% of the time; at 2.5% and 97.5% it missed 5.5%); k runs to n = {k_max}, the largest k these samples can show a crossover at.", ""]
    md += _table(["arm", "pass@1 lead over base", "crossover", "resamples with a crossover"],
                 [[a, f"{_mean(pp[a], 1) - _mean(base, 1):+.3f}", crossover_words(c),
                   "n/a" if c["share_crossing"] is None else f"{c['share_crossing']:.0%}"] for a, c in cross.items()])
    for a, c in cross.items():
        metrics.append((f"summary/crossover_found_{a}", float(c["k"] is not None), 0))
        if c["k"] is not None:
            metrics.append((f"summary/crossover_k_{a}", float(c["k"]), 0))

    test = runs["base"].problems
    by_task: dict[str, list[str]] = {}
    for pid in base["problem_id"]:
        by_task.setdefault(test[pid].task, []).append(test[pid].answer)
    floor, rows = {}, []
    for task, answers in by_task.items():
        if train_answers.get(task):
            floor[task] = guesser_passk(answers, train_answers[task], sorted({1, k_max, *ks}))
            ids = [pid for pid in base["problem_id"] if test[pid].task == task]
            b_top = _mean(base[base["problem_id"].isin(ids)], k_max)
            rows.append([task, len(answers), floor[task][1], floor[task][k_max], b_top,
                         f"{floor[task][k_max] / b_top:.0%}" if b_top else "n/a"])
            metrics.append((f"summary/guesser_pass_at_{k_max}_{task}", floor[task][k_max], 0))
    data["guesser"] = floor
    md += ["", "### The guessing floor", "",
           "A blind guesser draws each answer from its task's training answers; its pass@k is exact, "
           "1 − (1 − p_i)^k averaged over test problems, where p_i is the share of training answers equal to "
           "problem i's answer. It is the dashed line on the pass@k plot.", ""]
    md += _table(["task", "test problems", "guesser pass@1", f"guesser pass@{k_max}", f"base pass@{k_max}",
                  "guesser / base"], rows) if rows else ["No task has training answers to guess from."]
    high = [r for r in rows if isinstance(r[4], float) and r[4] > 0 and r[3] >= 0.5 * r[4]]
    if high:
        warn.append(f"> **The guessing floor is high**: a blind guesser reaches pass@{k_max} "
                    + ", ".join(f"{r[3]:.3f} on {r[0]} ({r[5]} of the base's {r[4]:.3f})" for r in high)
                    + f". Differences at pass@{k_max} here are partly differences in lucky guesses; read the "
                    "CoT-pass@k verdicts, which count only samples with correct reasoning.")

    if reasoning:
        cot = {m: pd.DataFrame({"problem_id": list(v["per_problem"]), "n": [v["n"][p] for p in v["per_problem"]],
                                "correct": list(v["per_problem"].values())}) for m, v in reasoning.items()}
        rows = []
        for a in arms_present:
            if a in cot and "base" in cot:
                d, lo, hi, n, mdd = paired_difference(cot["base"], cot[a], k_max, k_max, n_boot=n_boot, seed=seed)
                rows.append([f"base CoT-pass@{k_max} − {a} CoT-pass@{k_max}", f"{d:+.3f}{_ci(lo, hi)}", n, f"{mdd:.3f}",
                             judge(["base", a], lo, hi, d)])
                metrics.append((f"summary/cot_base_vs_{a}_kmax", d, 0))
        md += ["", f"### The pass@{k_max} verdicts under CoT-pass@k", "",
               "The same paired comparisons, counting a sample only when its reasoning is correct too.", ""]
        md += _table(["comparison", "difference [95% CI]", "problems", "MDD", "verdict"], rows)

    levels = {pid: difficulty_label(test[pid].difficulty) for pid in base["problem_id"]}
    parts = [support_transitions(base, pp[a], levels, n_boot > 0).assign(arm=a) for a in arms_present]
    if parts:
        sup = pd.concat(parts, ignore_index=True)
        write_atomic(out / "support_transitions.csv", sup.to_csv(index=False))
        plots.support_transitions(sup, out / "support_transitions.png")
        md += ["", f"### Support transitions at k = {k_max}", "",
               "Each test problem against the base: preserved (both solve it), expanded (only the arm), shrunk "
               "(only the base), out of support (neither); counts with exact 95% intervals of each share of the level "
               "(Clopper-Pearson, times the level's problems), each problem's class at this sample budget taken as known.",
               "", "![support transitions](support_transitions.png)", ""]
        md += _table(["arm", "level", "problems", *SUPPORT],
                     [[r.arm, r.level, r.problems, *[_count(r, c) for c in SUPPORT]] for r in sup.itertuples()])
        for r in sup[sup["level"] == "all"].itertuples():
            metrics += [(f"summary/support_{r.arm}_{c}", float(getattr(r, c)), 0) for c in SUPPORT]
        data["support"] = sup.to_dict(orient="records")

    distinct = {m: distinct_correct(runs[m].samples, lambda pid, c, r=runs[m]: canonical(r.problems[pid], c))
                for m in pp if m in runs}
    md += ["", "### Distinct correct solutions", "",
           "Per problem, the number of distinct reasoning chains among the correct samples (the task's "
           "`canonical_chain`); the mean over the problems a model solves, and over all problems (0 when unsolved).", ""]
    md += _table(["model", "problems solved", "mean distinct chains (solved)", "mean distinct chains (all)"],
                 [[m, len(s), float(s.mean()) if len(s) else 0.0, float(s.sum() / len(pp[m]))] for m, s in distinct.items()])
    metrics += [(f"summary/distinct_correct_{m}", float(s.sum() / len(pp[m])), 0) for m, s in distinct.items()]
    data["distinct_correct"] = {m: {"solved": len(s), "mean_solved": float(s.mean()) if len(s) else 0.0,
                                    "mean_all": float(s.sum() / len(pp[m]))} for m, s in distinct.items()}

    nets, control_arms = [], {c for cs in controls.values() for c in cs}
    for a in arms_present:
        group = [c for c in controls.get(a, []) if c in pp]
        for kind, members in (("controls", group), ("sharpened base", [s for s in sharpened if s in pp])):
            if members and a not in control_arms:
                for k in (1, k_max):
                    g = net_gain(pp, a, members, k, n_boot, seed)
                    g.update(kind=kind, verdict=judge([a, g["best"]], g["ci_low"], g["ci_high"], g["diff"]))
                    nets.append(g)
                    metrics.append((f"summary/net_gain_{a}_vs_{kind.replace(' ', '_')}_pass_at_{k}", g["diff"], 0))
    if nets:
        md += ["", "### Gains net of the controls and of sharpening", "",
               "Each arm's pass@k minus the best of its comparison group (control arms trained with another reward; "
               "the base sampled at a lower temperature), paired over problems; the 95% interval is simultaneous over "
               "the group's members (each member's paired interval at 1 − 5%/members, the smallest bounds), so "
               "picking the best on the same data does not inflate its error rate.", ""]
        md += _table(["arm", "against", "k", "best of them", "net gain [95% CI]", "MDD", "verdict"],
                     [[g["arm"], g["kind"], g["k"], f"{g['best']} ({g['best_value']:.3f})",
                       f"{g['diff']:+.3f}{_ci(g['ci_low'], g['ci_high'])}", f"{g['mdd']:.3f}", g["verdict"]] for g in nets])
    data["net_gains"] = nets

    if ppl_records:
        kls = [kl_to_base(ppl_records, a, n_boot=n_boot, seed=seed) for a in arms_present
               if any(r["scorer"] == a for r in ppl_records)]
        for k in kls:
            d, lo, hi, _, _ = paired_difference(pp[k["model"]], base, 1, 1, n_boot=n_boot, seed=seed)
            k.update(gain=d, gain_low=lo, gain_high=hi)
            metrics.append((f"summary/kl_to_base_{k['model']}", k["kl_per_token"], 0))
        if kls:
            plots.kl_gain(kls, out / "kl_gain.png")
            md += ["", "### How far each arm moved from the base", "",
                   "KL(arm ‖ base) on the arm's own test samples: the mean over completion tokens of log p_arm − "
                   "log p_base, on the perplexity stage's (problem, sample) pairs (drawn at the evaluation's "
                   "temperature and top_p), with a 95% bootstrap interval over the pairs.", "",
                   "![pass@1 gain against KL](kl_gain.png)", ""]
            md += _table(["arm", "pairs", "KL per token [95% CI]", "KL per completion", "pass@1 gain over base [95% CI]"],
                         [[k["model"], k["pairs"], f"{k['kl_per_token']:.4f}{_ci(k['ci_low'], k['ci_high'], '.4f')}",
                           f"{k['kl_per_sequence']:.3f}", f"{k['gain']:+.3f}{_ci(k['gain_low'], k['gain_high'])}"] for k in kls])
        data["kl"] = kls
    write_json_atomic(out / "sharpening.json", data)
    return dict(markdown=md, warning=warn, metrics=metrics, data=data, floor=floor)


def _mean(pp: pd.DataFrame, k: int) -> float:
    return float(per_problem_passk(pp["n"].to_numpy(), pp["correct"].to_numpy(), [k])[:, 0].mean())


def _ci(lo: float, hi: float, fmt: str = "+.3f") -> str:
    return "" if lo is None or math.isnan(lo) else f" [{lo:{fmt}}, {hi:{fmt}}]"


def _count(r, c: str) -> str:
    lo, hi = getattr(r, f"{c}_low"), getattr(r, f"{c}_high")
    return f"{getattr(r, c)}" + ("" if math.isnan(lo) else f" [{lo:.0f}, {hi:.0f}]")


