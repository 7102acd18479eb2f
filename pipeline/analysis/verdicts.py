"""Verdicts: a paired difference of two models' pass@k over the shared test problems, in words. Each
is one claim of the report's family (pipeline.analysis.family): stated ("a higher than b") only when its
Holm-adjusted p-value is below 0.05, "not distinguishable" with the comparison's minimum detectable
difference otherwise, "inconclusive" when an arm in it did not learn (pipeline.analysis.health), and no
verdict without resamples (eval.bootstrap: 0)."""
from __future__ import annotations

import math

import pandas as pd

from pipeline.analysis.family import Family, paired_p
from pipeline.analysis.health import describe
from pipeline.analysis.passk import paired_difference, paired_values
from pipeline.arms import get_arm, is_arm


def verdict(name: str, a: str, b: str, k_a: int, k_b: int, pp: dict[str, pd.DataFrame], n_boot: int, seed: int,
            health: dict[str, dict] | None = None, family: Family | None = None) -> dict:
    """pass@k_a(a) − pass@k_b(b) with its CI, in words. A comparison with an arm whose training did
    not learn is inconclusive, and one without resamples (eval.bootstrap: 0) states no verdict. The
    verdict is one claim of the report's `family` (pipeline.analysis.family), stated only when its
    Holm-adjusted p-value is below 0.05; its words are set when the family is decided (at once without one)."""
    d, lo, hi, m, mdd = paired_difference(pp[a], pp[b], k_a, k_b, n_boot=n_boot, seed=seed)
    label = f"{a} pass@{k_a} − {b} pass@{k_b}"
    v = dict(name=name, comparison=label, diff=d, ci_low=lo, ci_high=hi, problems=m, mdd=mdd)
    claim(v, a, b, paired_p(paired_values(pp[a], pp[b], k_a, k_b)), health, family)
    return v


def claim(v: dict, a: str, b: str, p: float, health: dict[str, dict] | None, family: Family | None) -> str:
    """Register the paired difference v (diff, ci_low, ci_high, mdd) as a claim of `family` with p-value p
    (none when an arm did not learn or there is no interval: it states nothing) and return its placeholder;
    its "verdict" and "conclusive" are set when the family is decided (at once when family is None)."""
    v["p"] = math.nan if sick_arms((a, b), health) or math.isnan(v["ci_low"]) else p

    def words(c: dict) -> str:
        w = verdict_words(a, b, c["diff"], c["ci_low"], c["ci_high"], c.get("mdd"), health, claim=c)
        c["conclusive"] = not w.startswith(("inconclusive", "no verdict"))
        return w

    fam = family or Family()
    token = fam.add(v, words)
    if family is None:
        fam.decide()
    return token


def sick_arms(models, health: dict[str, dict] | None) -> list[str]:
    """The models among `models` whose training did not learn; a control arm (Arm.control_of) is never
    one: its reward is not meant to teach the task, so a flat accuracy curve is what it should show."""
    return [x for x in models if x in (health or {}) and not health[x]["learned"]
            and not (is_arm(x) and get_arm(x).control_of)]


def verdict_words(a: str, b: str, d: float, lo: float, hi: float, mdd: float | None, health: dict[str, dict] | None,
                  level: float = 0.95, claim: dict | None = None) -> str:
    """A paired difference a − b in words: inconclusive when an arm did not learn, no verdict without an
    interval, else whether the 95% CI excludes zero (and the MDD, when given, when it does not). With `claim`,
    a decided claim of the report's family: stated only when its Holm-adjusted p-value is below 0.05."""
    sick = sick_arms((a, b), health)
    if sick:
        return "inconclusive: " + "; ".join(
            f"the {x} run {'did not learn' if health[x].get('judged', True) else 'was not judged'} "
            f"({describe(x, health[x])})" for x in sick)
    if math.isnan(lo):
        return "no verdict: eval.bootstrap is 0, so there is no confidence interval"
    if lo <= 0 <= hi:
        return f"not distinguishable (the {level:.0%} CI includes zero" + ("" if mdd is None else f"; could have detected |d| >= {mdd:.3f}") + ")"
    if claim is not None and not claim["stated"]:
        return (f"not distinguishable after adjustment for the report's {claim['family_size']} claims "
                f"(p = {claim['p']:.3f}, Holm-adjusted {claim['p_adjusted']:.3f})")
    return f"{a} {'higher' if d > 0 else 'lower'} than {b}"


def family_words(family: Family) -> str:
    return (f"The report makes {family.claims[0]['family_size'] if family.claims else 0} claims that could be false "
            "alarms (these verdicts, the CoT-pass@k verdicts, the net gains and the support claims below); each is "
            "stated only when its Holm-adjusted p-value over all of them is below 0.05, so a study whose models do "
            "not differ states none of them at least 95% of the time. Intervals are each claim's own 95% interval.")


def _p(v: dict) -> str:
    return "" if math.isnan(v.get("p", math.nan)) else f"; p {v['p']:.3g}, Holm-adjusted {v['p_adjusted']:.3g}"


def _ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]"
