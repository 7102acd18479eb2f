"""Sharpening or new capability? The analyses that sharpen the paper's question, each from data the
study already has (the evaluations' per-problem counts and samples, the problems stage's training
answers, the perplexity stage's scores):

- crossover: the smallest k at which the base's pass@k is at least an arm's, with a percentile bootstrap
  interval over problems (1st to 99th percentile: at 2.5/97.5 it missed a simulated true crossover 5.5%
  of the time, at 1/99 2.0-2.5%, and claimed one where there is none 0.1-0.3%; tests/analysis/test_calibration.py),
  or "no crossover up to k = n" (n, the samples per problem, is the largest k the data can show one at), or
  "no lead" for an arm whose pass@1 is not above the base's;
- the guessing floor: the pass@k of a blind guesser that draws every answer from its task's training
  answers, computed exactly: 1 - (1 - p_i)^k for a test answer whose share of the training answers is p_i;
- support transitions (Wu et al. 2025, "The Invisible Leash"): each test problem, with all n samples,
  preserved (base and arm solve it), expanded (only the arm), shrunk (only the base) or out of support
  (neither), per difficulty level, each count beside what the same model evaluated twice would give; problems
  are called expanded or shrunk only in excess of that (a claim of the report's family, pipeline/analysis/family.py);
- distinct correct solutions ("RL Squeezes, SFT Expands"): per problem and model, the expected number of
  distinct reasoning chains (the task's `canonical_chain`) among m = CHAIN_M of its correct samples, so
  that a model with more correct samples does not show more chains mechanically;
- net gains: an arm's pass@k minus the best of a comparison group (control arms with another reward,
  the base sampled at a lower temperature), paired over problems like every verdict, with an interval
  simultaneous over the group's members (Bonferroni), so picking the best on the same data does not
  inflate its error rate;
- how far an arm moved: the mean log-ratio log p_arm - log p_base per completion token (both at T = 1) on
  the arm's own evaluation samples, from the perplexity stage's scores (not a KL divergence: logratio.py).

Support transitions are in pipeline/analysis/support.py, distinct chains in chains.py, the log-ratio in logratio.py.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from pipeline.analysis.chains import CHAIN_M, canonical_chain, distinct_at_m, distinct_correct  # noqa: F401
from pipeline.analysis.logratio import log_ratio_to_base
from pipeline.analysis.family import Family, paired_p
from pipeline.analysis.passk import merge_counts as _merge
from pipeline.analysis.passk import paired_difference, paired_summary, paired_values, per_problem_passk, resample_weights
from pipeline.analysis.support import SUPPORT, support_claims, support_transitions
from pipeline.core.text import md_table as _table

# the crossover interval's tails: the percentile bootstrap of a first-crossing k at 2.5% per tail missed the
# true crossover 5.5% of the time (simulated, tests/analysis/test_calibration.py); at 1% per tail it stays under 5%
CROSSOVER_TAIL = 0.01


def _first_at_least(diff: np.ndarray) -> np.ndarray:
    """Per row of diff [..., K] (base - arm at k = 1..K): the smallest k with diff >= 0, inf if none."""
    hit = diff >= -1e-12  # ties count as the base having caught up
    first = np.argmax(hit, axis=-1).astype(float) + 1
    first[~hit.any(axis=-1)] = np.inf
    return first


def crossover(base: pd.DataFrame, arm: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The smallest k at which pass@k(base) >= pass@k(arm), k = 1..K with K the smaller sample count:
    {k (None: no crossover up to K, or no lead: arm_leads_at_1 False, when nothing else is computed), ci_low,
    ci_high (None: beyond K), k_limit K, share of resamples with a crossover, arm_leads_at_1}. The interval is the CROSSOVER_TAIL and 1 - CROSSOVER_TAIL percentiles
    (order statistics) of the crossover over problem resamples; a bound past K means no crossover in that tail."""
    m = _merge(base, arm)
    K = int(min(m["n_a"].min(), m["n_b"].min()))
    ks = list(range(1, K + 1))
    vb = per_problem_passk(m["n_a"].to_numpy(), m["correct_a"].to_numpy(), ks)
    va = per_problem_passk(m["n_b"].to_numpy(), m["correct_b"].to_numpy(), ks)
    diff = vb - va
    k = _first_at_least(diff.mean(axis=0)[None])[0]
    leads = bool(diff[:, 0].mean() < 0)
    out: dict[str, Any] = dict(k=None if math.isinf(k) or not leads else int(k), k_limit=K, problems=len(m),
                               arm_leads_at_1=leads, ci_low=None, ci_high=None, share_crossing=None)
    if not leads:  # no lead to lose: nothing crosses (a crossover "at k = 1" would read as one)
        return out
    if n_boot > 0 and len(m) > 1:
        boots = _first_at_least(resample_weights(len(m), n_boot, seed) @ diff / len(m))
        lo, hi = np.percentile(boots, [100 * CROSSOVER_TAIL, 100 * (1 - CROSSOVER_TAIL)], method="inverted_cdf")
        out.update(ci_low=None if math.isinf(lo) else int(lo), ci_high=None if math.isinf(hi) else int(hi),
                   share_crossing=float(np.isfinite(boots).mean()))
    return out


def crossover_cell(c: Mapping[str, Any] | None) -> str:
    """A study table's short form: the k, "none up to K" or "no lead" (n/a without a crossover record)."""
    if c is None:
        return "n/a"
    return "no lead" if not c["arm_leads_at_1"] else f"none up to {c['k_limit']}" if c["k"] is None else str(c["k"])


def crossover_words(c: Mapping[str, Any]) -> str:
    if not c["arm_leads_at_1"]:
        return "no lead to lose: the base's pass@1 is already at least the arm's"
    if c["k"] is None:
        tail = "" if c["ci_low"] is None else f" (interval [{c['ci_low']}, > {c['k_limit']}])"
        return f"no crossover up to k = {c['k_limit']}{tail}"
    lo = c["ci_low"]
    hi = f"> {c['k_limit']}" if c["ci_high"] is None else c["ci_high"]
    return f"k = {c['k']}" + ("" if lo is None else f" [{lo}, {hi}]")


GUESS_CHECKS = 50_000  # most (test answer, training answer) pairs the guesser grades with the task's verify


def guesser_passk(test_answers: list[str], train_answers: list[str], ks: list[int],
                  accepts: Callable[[str, str], bool] | None = None) -> dict[int, float]:
    """Exact pass@k of a guesser that draws each answer independently from the training answers'
    empirical distribution: mean over test problems of 1 - (1 - p_i)^k, p_i the share of training answers
    that the grader accepts for problem i: accepts(test answer, guess) (the task's verify, which takes "0.5"
    for "1/2" where the task does), else the same string; exact strings too past GUESS_CHECKS pairs."""
    if not train_answers:
        raise ValueError("guesser_passk: no training answers to draw from")
    freq = Counter(a.strip() for a in train_answers)
    golds = sorted({a.strip() for a in test_answers})
    if accepts is not None and len(golds) * len(freq) <= GUESS_CHECKS:
        share = {g: sum(c for guess, c in freq.items() if accepts(g, guess)) / len(train_answers) for g in golds}
    else:
        share = {g: freq.get(g, 0) / len(train_answers) for g in golds}
    p = np.array([share[a.strip()] for a in test_answers], dtype=float)
    return {k: float(np.mean(1 - (1 - p) ** k)) for k in ks}


def net_gain(pp: Mapping[str, pd.DataFrame], arm: str, group: list[str], k: int, n_boot: int, seed: int,
             level: float = 0.95) -> dict[str, Any]:
    """pass@k(arm) minus the best of group: min over the group's members c of the paired mean of
    pass@k(arm) - pass@k(c) (best: that c), with a simultaneous `level` interval: each member's paired
    t-interval at level 1 - (1 - level) / len(group) (Bonferroni), the bounds the smallest lower and the
    smallest upper bound over the members. Picking the best on the same data and then using its own 95%
    interval called an arm equal to every control "lower" 4.4-6.4% of the time at a nominal 2.5%; the
    simultaneous interval holds the nominal rate on each side (tests/analysis/test_sharpening.py). The MDD
    is the best's, at the adjusted level. Its two-sided p-value "p" (the report's family, pipeline/analysis/
    family.py) is below 1 - level exactly when that interval excludes zero: G * max_c p_c when every
    difference is positive ("higher" needs every lower bound above zero), else G * min p_c over the negative
    differences ("lower" needs one upper bound below zero), G the group's size."""
    each_level = 1 - (1 - level) / len(group)
    diffs = {c: paired_values(pp[arm], pp[c], k, k) for c in group}
    res = {c: paired_summary(diffs[c], n_boot, each_level) for c in group}
    best = min(res, key=lambda c: res[c][0])
    d, _, _, n, mdd = res[best]
    lo, hi = min(r[1] for r in res.values()), min(r[2] for r in res.values())
    g = len(group)
    ps = {c: paired_p(diffs[c]) for c in group}
    if math.isnan(lo):
        p = math.nan
    elif all(r[0] > 0 for r in res.values()):
        p = min(1.0, g * max(ps.values()))
    else:
        p = min(1.0, g * min([ps[c] for c in group if res[c][0] < 0], default=1.0))
    value = float(per_problem_passk(pp[best]["n"].to_numpy(), pp[best]["correct"].to_numpy(), [k])[:, 0].mean())
    return dict(arm=arm, k=k, best=best, best_value=value, diff=d, ci_low=lo, ci_high=hi, problems=n, mdd=mdd,
                level=level, member_level=each_level, p=p)


# ---- the report's section ----------------------------------------------------------------------------


def section(pp: Mapping[str, pd.DataFrame], runs: Mapping[str, Any], *, arms: list[str], controls: Mapping[str, list[str]],
            sharpened: list[str], k_max: int, ks: list[int], train_answers: Mapping[str, list[str]], reasoning: Mapping[str, Any] | None,
            canonical: Callable[[Any, str], str | None], ppl_records: list[dict] | None, n_boot: int, seed: int,
            out, judge: Callable[[list[str], dict, float], str], family: Family | None = None,
            verify: Callable[[Any, str], bool] | None = None, not_learned: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every analysis above for the report: {"markdown": [...], "warning": [...] (for the report's top),
    "metrics": [(name, value, step)], "data": {...}} and, in `out`, sharpening.json,
    support_transitions.csv/.png and log_ratio_gain.png. `arms` are the trained arms compared with the base,
    `controls` {arm: its control arms}, `sharpened` the base's lower-temperature rows, `runs` the loaded
    EvalRuns (pipeline.analysis.analyses). Every claim goes into `family` (pipeline.analysis.family): the
    paired differences through `judge(models, v, p)` (v: diff, ci_low, ci_high, mdd; p its p-value), which
    registers v and returns a placeholder for its words; without a family the section decides its own.
    `verify(problem, completion)`, the task's grader, decides which training answers the guesser gets right."""
    own_family = family is None
    family = family or Family()
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
           f"2.0-2.5% of the time and claimed one where there is none 0.1-0.3%; at 2.5% and 97.5% it missed 5.5%); k runs to n = {int(base['n'].min())}, the samples per problem, "
           "the largest k these samples can show a crossover at (beyond the report's largest k where eval.ks stops short of n). "
           "An arm whose pass@1 is not above the base's has no lead to lose.", ""]
    md += _table(["arm", "pass@1 lead over base", "crossover", "resamples with a crossover"],
                 [[a, f"{_mean(pp[a], 1) - _mean(base, 1):+.3f}", crossover_words(c),
                   "n/a" if c["share_crossing"] is None else f"{c['share_crossing']:.0%}"] for a, c in cross.items()])
    for a, c in cross.items():
        if not c["arm_leads_at_1"]:  # no lead: no crossover to find, so no crossover metric either
            continue
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
            one = {test[pid].answer.strip(): test[pid] for pid in base["problem_id"] if test[pid].task == task}
            accepts = None if verify is None else (lambda gold, guess, one=one: bool(verify(one[gold], f"<answer>{guess}</answer>")))
            floor[task] = guesser_passk(answers, train_answers[task], sorted({1, k_max, *ks}), accepts)
            ids = [pid for pid in base["problem_id"] if test[pid].task == task]
            b_top = _mean(base[base["problem_id"].isin(ids)], k_max)
            rows.append([task, len(answers), floor[task][1], floor[task][k_max], b_top,
                         f"{floor[task][k_max] / b_top:.0%}" if b_top else "n/a"])
            metrics.append((f"summary/guesser_pass_at_{k_max}_{task}", floor[task][k_max], 0))
    data["guesser"] = floor
    if floor and len(floor) == len(by_task):  # the plot's curves pool every task's problems: so does its floor line
        pooled = {k: sum(len(by_task[t]) * floor[t][k] for t in floor) / len(base) for k in next(iter(floor.values()))}
    else:
        pooled = None
    data["guesser_pooled"] = pooled
    md += ["", "### The guessing floor", "",
           "A blind guesser draws each answer from its task's training answers; its pass@k is exact, "
           "1 − (1 − p_i)^k averaged over test problems, where p_i is the share of training answers the task's grader "
           "accepts for problem i (its `verify`, so every form of the answer counts). It is the dashed line on the "
           "pass@k plot (over all tasks' problems together when there are several).", ""]
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
                v = dict(arm=a, diff=d, ci_low=lo, ci_high=hi, problems=n, mdd=mdd)
                v["verdict"] = judge(["base", a], v, paired_p(paired_values(cot["base"], cot[a], k_max, k_max)))
                data.setdefault("cot", []).append(v)
                rows.append([f"base CoT-pass@{k_max} − {a} CoT-pass@{k_max}", f"{d:+.3f}{_ci(lo, hi)}", n, f"{mdd:.3f}",
                             v["verdict"]])
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
        claims = support_claims(sup, family, not_learned)
        n_samples = int(base["n"].min())
        md += ["", f"### Support transitions with all n = {n_samples} samples", "",
               "Each test problem against the base: preserved (both solve it), expanded (only the arm), shrunk "
               "(only the base), out of support (neither). Beside each count, in brackets, the count expected if the "
               "arm were the base evaluated twice: two evaluations of one model disagree on problems solved by few "
               "samples, so some problems read expanded and some shrunk by chance alone. Problems are called "
               "expanded or shrunk only in excess of that (the claims below, one of the report's family).",
               "", "![support transitions](support_transitions.png)", ""]
        md += _table(["arm", "level", "problems", *SUPPORT],
                     [[r.arm, r.level, r.problems, *[_count(r, c) for c in SUPPORT]] for r in sup.itertuples()])
        md += ["", *[f"- {c['arm']}: {c['count']} problems {c['class']} against {c['null']:.1f} expected by chance: "
                     f"{c['verdict']}." for c in claims]]
        for r in sup[sup["level"] == "all"].itertuples():
            metrics += [(f"summary/support_{r.arm}_{c}", float(getattr(r, c)), 0) for c in SUPPORT]
            metrics += [(f"summary/support_{r.arm}_{c}_same_model", float(getattr(r, f"{c}_null")), 0) for c in SUPPORT]
        data["support_claims"] = claims
        data["support"] = sup.to_dict(orient="records")

    chain_m = min(CHAIN_M, int(base["n"].min()))
    at_m = {m: distinct_at_m(runs[m].samples, lambda pid, c, r=runs[m]: canonical(r.problems[pid], c), chain_m)
            for m in pp if m in runs}
    rows, data["distinct_correct"] = [], {"m": chain_m}
    for m, s in at_m.items():
        shared = sorted(set(s.index) & set(at_m.get("base", pd.Series(dtype=float)).index))
        d = dict(problems=len(s), mean=float(s.mean()) if len(s) else math.nan, shared_with_base=len(shared),
                 mean_shared=float(s[shared].mean()) if shared else math.nan,
                 base_mean_shared=float(at_m["base"][shared].mean()) if shared else math.nan)
        data["distinct_correct"][m] = d
        rows.append([m, d["problems"], _num(d["mean"]), d["shared_with_base"], _num(d["mean_shared"]), _num(d["base_mean_shared"])])
        if len(s):
            metrics.append((f"summary/distinct_correct_{m}", d["mean"], 0))
    md += ["", "### Distinct correct solutions", "",
           f"Distinct reasoning chains (the task's `canonical_chain`) among m = {chain_m} correct samples of a problem: "
           "the expected number when m of its correct samples are drawn without replacement, on the problems with at "
           f"least {chain_m} correct samples. A count over all correct samples would grow with the pass rate; at an equal "
           "m it does not. The last columns compare each model with the base on the problems both have m for.", ""]
    md += _table(["model", f"problems with ≥ {chain_m} correct", f"distinct chains in {chain_m} (mean)",
                  "problems shared with base", "model, shared", "base, shared"], rows)

    nets, control_arms = [], {c for cs in controls.values() for c in cs}
    for a in arms_present:
        group = [c for c in controls.get(a, []) if c in pp]
        for kind, members in (("controls", group), ("sharpened base", [s for s in sharpened if s in pp])):
            if members and a not in control_arms:
                for k in (1, k_max):
                    g = net_gain(pp, a, members, k, n_boot, seed)
                    p = g.get("p", paired_p(paired_values(pp[a], pp[g["best"]], k, k)))
                    g.update(kind=kind, verdict=judge([a, g["best"]], g, p))
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
        drift = [log_ratio_to_base(ppl_records, a, n_boot=n_boot, seed=seed) for a in arms_present
                 if any(r["scorer"] == a for r in ppl_records)]
        for k in drift:
            d, lo, hi, _, _ = paired_difference(pp[k["model"]], base, 1, 1, n_boot=n_boot, seed=seed)
            k.update(gain=d, gain_low=lo, gain_high=hi)
            metrics.append((f"summary/log_ratio_to_base_{k['model']}", k["log_ratio_per_token"], 0))
        if drift:
            plots.log_ratio_gain(drift, out / "log_ratio_gain.png")
            md += ["", "### How far each arm moved from the base", "",
                   "The mean log-ratio log p_arm − log p_base per completion token, both models scoring at temperature 1, "
                   "on the arm's own evaluation samples (the perplexity stage's (problem, sample) pairs, drawn at the "
                   "evaluation's temperature and top_p). It is not KL(arm ‖ base): the samples do not come from p_arm at "
                   "temperature 1, so it can differ from that KL either way and can be negative. 95% bootstrap interval "
                   "over problems (a problem's pairs resampled together).", "",
                   "![pass@1 gain against the log-ratio](log_ratio_gain.png)", ""]
            md += _table(["arm", "pairs (problems)", "log-ratio per token [95% CI]", "log-ratio per completion",
                          "pass@1 gain over base [95% CI]"],
                         [[k["model"], f"{k['pairs']} ({k['problems']})",
                           f"{k['log_ratio_per_token']:.4f}{_ci(k['ci_low'], k['ci_high'], '.4f')}",
                           f"{k['log_ratio_per_sequence']:.3f}", f"{k['gain']:+.3f}{_ci(k['gain_low'], k['gain_high'])}"]
                          for k in drift])
        data["log_ratio"] = drift
    if own_family:
        family.decide()
        md, warn = [family.fill(x) for x in md], [family.fill(x) for x in warn]
    write_json_atomic(out / "sharpening.json", data)
    return dict(markdown=md, warning=warn, metrics=metrics, data=data, floor=floor, pooled_floor=pooled)


def _mean(pp: pd.DataFrame, k: int) -> float:
    return float(per_problem_passk(pp["n"].to_numpy(), pp["correct"].to_numpy(), [k])[:, 0].mean())


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _ci(lo: float, hi: float, fmt: str = "+.3f") -> str:
    return "" if lo is None or math.isnan(lo) else f" [{lo:{fmt}}, {hi:{fmt}}]"


def _count(r, c: str) -> str:
    return f"{getattr(r, c)} ({getattr(r, f'{c}_null'):.1f})"


