"""Distinct correct solutions ("RL Squeezes, SFT Expands"): per problem and model, how many distinct
reasoning chains among the correct samples (the task's `canonical_chain`)."""
from __future__ import annotations

import re
from typing import Callable

import pandas as pd


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

