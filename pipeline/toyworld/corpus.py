"""The pretraining corpora: chat-formatted toy_arith documents in each completion style."""
from __future__ import annotations

import random

from pipeline.toyworld.config import STYLES, BootstrapConfig, CorpusSpec
from pipeline.toyworld.model import build_tokenizer
from tasks.base import Problem
from tasks.toy_arith import ToyArith, apply, binop_lines, completion_text, expr, parse_chain, trace_lines


# ---- corpora --------------------------------------------------------------------------------------
def _mistake(rng: random.Random, r: int) -> int:
    """A plausible arithmetic slip near r (never r itself; a slip below 0 only if r already is)."""
    options = [r + d for d in (-10, -2, -1, 1, 2, 10) if r + d >= min(r, 0)]
    s = str(r)
    if r >= 10 and s[-1] != s[-2]:
        options.append(int(s[:-2] + s[-1] + s[-2]))
    return rng.choice(options)


def completion_for(problem: Problem, style: str, rng: random.Random, step_error: float = 0.3) -> str:
    """One pretraining completion of `problem` in a style:
    direct (the answer only), flawed (the plain rewrite chain, each result wrong with probability
    step_error and the slip carried on to the answer), plain (the correct rewrite chain), column
    (the correct chain with a column line, explicit carries, before every rewrite)."""
    terms, ops = parse_chain(problem.question)
    if style == "direct":
        return completion_text([], problem.answer)
    if style in ("plain", "column"):
        return completion_text(trace_lines(terms, ops, columns=style == "column"), problem.answer)
    if style == "binop":
        return completion_text(binop_lines(terms, ops, columns=True), problem.answer)
    if style == "flawed":
        lines = [expr(terms, ops)]
        while ops:
            r = apply(terms[0], ops[0], terms[1])
            if rng.random() < step_error:
                r = _mistake(rng, r)
            terms, ops = [r] + terms[2:], ops[1:]
            lines.append("=" + expr(terms, ops))
        return completion_text(lines, str(terms[0]))
    raise ValueError(f"style: expected one of {STYLES}, got {style!r}")


def build_corpus(spec: CorpusSpec, task: ToyArith, tokenizer, seed: int, salt: str) -> list[str]:
    """The documents of one pretraining corpus: chat-formatted prompt + completion + EOS, the exact
    text a model sees at inference. Problems come only from the train split."""
    pool = task.problems("train", spec.problems_per_level * len(spec.levels), seed=seed, levels=spec.levels)
    by_level = {lv: [p for p in pool if p.difficulty == lv] for lv in spec.levels}
    rng = random.Random(f"{seed}/{salt}")
    styles, style_w = list(spec.styles), list(spec.styles.values())
    docs = []
    for _ in range(spec.documents):
        level = rng.choices(spec.levels, weights=spec.level_weights)[0]
        p = rng.choice(by_level[level])
        style = rng.choices(styles, weights=style_w)[0]
        docs.append(task.prompt(p, tokenizer) + completion_for(p, style, rng, spec.step_error) + tokenizer.eos_token)
    return docs


def corpora(cfg: BootstrapConfig, tokenizer=None) -> dict[str, list[str]]:
    """Both pretraining corpora of a bootstrap config, by model name."""
    tokenizer = tokenizer or build_tokenizer()
    task = ToyArith(max_value=cfg.max_value)
    return {name: build_corpus(getattr(cfg, name).corpus, task, tokenizer, cfg.seed, name) for name in ("base", "teacher")}


def eval_problems(cfg: BootstrapConfig) -> list[Problem]:
    return ToyArith(max_value=cfg.max_value).problems("test", cfg.eval.test_size, seed=cfg.seed, levels=cfg.eval.levels)
