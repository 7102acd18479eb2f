"""Distinct correct solutions ("RL Squeezes, SFT Expands"): per problem and model, how many distinct
reasoning chains among the correct samples (the task's `canonical_chain`).

The count among all of a problem's correct samples grows with how many there are, so a model with a higher
pass rate would show more chains mechanically. Models are compared at an equal number m of correct samples:
the expected number of distinct chains among m of a problem's correct samples drawn without replacement,
sum over its chains j of 1 - C(c - c_j, m) / C(c, m) (c correct samples, c_j of them chain j), on the
problems with at least m correct samples.
"""
from __future__ import annotations

import re
from math import comb
from typing import Callable, Sequence

import pandas as pd

CHAIN_M = 4  # correct samples per problem at which chains are counted (fewer: the problem is left out)


def expected_distinct(multiplicities: Sequence[int], m: int) -> float:
    """Expected distinct chains among m of c = sum(multiplicities) correct samples drawn without replacement
    (NaN when c < m): sum over chains of P(the chain is drawn) = 1 - C(c - c_j, m) / C(c, m)."""
    c = sum(multiplicities)
    if m < 1 or c < m:
        return float("nan")
    return float(sum(1 - comb(c - cj, m) / comb(c, m) for cj in multiplicities))


def chain_multiplicities(samples: pd.DataFrame, canonical: Callable[[str, str], str | None]) -> dict[str, list[int]]:
    """Per problem with a correct sample: how many of its correct samples follow each distinct chain."""
    ok = samples[samples["correct"]]
    chains = [canonical(pid, c) for pid, c in ok[["problem_id", "completion"]].itertuples(index=False)]
    per = pd.Series(chains, index=ok["problem_id"].to_numpy(), dtype=object).fillna("<unreadable>")
    return {pid: g.value_counts().tolist() for pid, g in per.groupby(level=0)}


def distinct_at_m(samples: pd.DataFrame, canonical: Callable[[str, str], str | None], m: int = CHAIN_M) -> pd.Series:
    """Per problem with at least m correct samples: the expected distinct chains among m of them."""
    out = {pid: expected_distinct(mult, m) for pid, mult in chain_multiplicities(samples, canonical).items()}
    return pd.Series({k: v for k, v in out.items() if v == v}, dtype=float)


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

