"""toy_arith: chains of + and - over small numbers, the task family of the embedded toy world.

A problem is a chain like `25+28-15` (level L = L operations, i.e. L+1 terms, each 1..max_value,
default 30;
a `-` never takes the running total below 0). The answer is the exact integer; `verify` compares
the integer inside the last <answer></answer>.

The reasoning trace inside <think></think> restates the chain, then rewrites it one operation
at a time (the first two terms replaced by their result), one line each, ending at the answer
(`check_reasoning` also accepts the step notation `95+28=123` / `123-15=108`, one line per
operation, without the restated chain):

    95+28-15
    =123-15
    =108

Before a rewrite line there may be a column line that works the operation digit by digit from
the ones up, carries and borrows explicit (`5+8=13 9+2+1=12` for 95+28; `3-5+10=8` borrows):

    95+28-15
    5+8=13 9+2+1=12
    =123-15
    3-5+10=8 2-1-1=0 1-0=1
    =108

The column line is the "explicit carries" reasoning pattern of the toy world: the teacher's
corpus always has it, the base corpus almost never does (docs/toyworld.md). `check_reasoning`
checks every line of either form.
"""
from __future__ import annotations

import random
import re
from typing import Any

from tasks import register
from tasks.base import Problem, Task, extract_tagged

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
CHAIN_RE = re.compile(r"^\d+(?:[+-]\d+)+$")
DEFAULT_LEVEL = 2


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def expr(terms: list[int], ops: list[str]) -> str:
    """([95, 28, 15], ['+', '-']) -> '95+28-15'."""
    return str(terms[0]) + "".join(f"{op}{b}" for op, b in zip(ops, terms[1:]))


def parse_chain(question: str) -> tuple[list[int], list[str]]:
    """'95+28-15' -> ([95, 28, 15], ['+', '-'])."""
    q = question.strip()
    if not CHAIN_RE.match(q):
        raise ValueError(f"toy_arith question: expected a chain like 12+7-3, got {question!r}")
    return [int(t) for t in re.split(r"[+-]", q)], re.findall(r"[+-]", q)


def column_work(a: int, op: str, b: int) -> str:
    """The digit columns of `a op b`, ones first. Addition: `x+y=s`, `x+y+1=s` with a carry in
    (the last column writes its whole sum). Subtraction (a >= b): `x-y=d`, `x-y-1=d` with a
    borrow in, and `...+10=d` when the column borrows."""
    if a < 0 or b < 0 or (op == "-" and a < b):
        raise ValueError(f"column_work: {a}{op}{b} leaves the non-negative numbers of the toy world")
    da, db = str(a)[::-1], str(b)[::-1]
    cols, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        if op == "+":
            s = x + y + carry
            cols.append(f"{x}+{y}{'+1' if carry else ''}={s}")
            carry = s // 10
        else:
            d = x - y - carry
            cols.append(f"{x}-{y}{'-1' if carry else ''}{'+10' if d < 0 else ''}={d + 10 if d < 0 else d}")
            carry = 1 if d < 0 else 0
    return " ".join(cols)


def trace_lines(terms: list[int], ops: list[str], columns: bool = False) -> list[str]:
    """The correct trace of a chain: the chain, then one rewrite line per operation, each
    preceded by its column line when `columns`."""
    lines = [expr(terms, ops)]
    while ops:
        a, op, b = terms[0], ops[0], terms[1]
        if columns:
            lines.append(column_work(a, op, b))
        terms, ops = [apply(a, op, b)] + terms[2:], ops[1:]
        lines.append("=" + expr(terms, ops))
    return lines


def chain_steps(terms: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """The true binary steps (running total, op, term, result) of a chain, in order."""
    steps, cur = [], terms[0]
    for op, b in zip(ops, terms[1:]):
        steps.append((cur, op, b, apply(cur, op, b)))
        cur = steps[-1][3]
    return steps


def plain_step(a: int, op: str, b: int, result: int | None = None) -> str:
    """A step line of the older, also accepted notation: `a op b=result` (one per operation,
    `a` the running total). `result` defaults to the true value; pass another to write a slip."""
    return f"{a}{op}{b}={apply(a, op, b) if result is None else result}"


def binop_lines(terms: list[int], ops: list[str], columns: bool = True) -> list[str]:
    """The schoolbook trace, one operation at a time: the operation `a op b` (`a` the running total,
    `b` the next term, looked up in the question), its column line when `columns`, then `=r`. Unlike
    the rewrite pattern it does not carry the rest of the chain along, so every step has to find its
    next term in the question again."""
    lines = []
    for a, op, b, r in chain_steps(terms, ops):
        lines.append(f"{a}{op}{b}")
        if columns:
            lines.append(column_work(a, op, b))
        lines.append(f"={r}")
    return lines


def completion_text(lines: list[str], answer: str) -> str:
    """The completion format every corpus and every model uses."""
    think = "".join(f"{ln}\n" for ln in lines)
    return f"<think>\n{think}</think>\n<answer>{answer}</answer>"


@register("toy_arith")
class ToyArith(Task):
    """Options: max_value (largest term, default 30: the shipped toy world is pretrained on it)."""

    name = "toy_arith"

    def __init__(self, max_value: int = 30, **options: Any):
        if not isinstance(max_value, int) or max_value < 2:
            raise ValueError(f"toy_arith option max_value: expected an int >= 2, got {max_value!r}")
        super().__init__(max_value=max_value, **options)
        self.max_value = max_value

    def check_spec(self, sizes: dict[str, int], levels: list[int] | None) -> None:
        unknown = sorted(set(self.options) - {"max_value"})
        if unknown:
            raise ValueError(f"options: task toy_arith: unknown option {unknown[0]!r} (expected one of ['max_value'])")
        max_level = 20  # operations per chain; the toy world's corpora cover levels 1-6
        bad = [v for v in levels or [] if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= max_level]
        if bad:
            raise ValueError(f"levels: {bad} outside 1..{max_level} (expected toy_arith levels, the number of "
                             f"operations per chain, from 1 to {max_level})")

    def generate(self, rng_seed: int, level: int | None) -> tuple[str, str, dict[str, Any]]:
        level = DEFAULT_LEVEL if level is None else level
        if not isinstance(level, int) or level < 1:
            raise ValueError(f"toy_arith level: expected an int >= 1 (number of operations), got {level!r}")
        rng = random.Random(rng_seed)
        cur = rng.randint(1, self.max_value)
        terms, ops = [cur], []
        for _ in range(level):
            op = "-" if cur > 0 and rng.random() < 0.5 else "+"
            b = rng.randint(1, min(cur, self.max_value)) if op == "-" else rng.randint(1, self.max_value)
            cur = apply(cur, op, b)
            terms.append(b)
            ops.append(op)
        question = expr(terms, ops)
        return question, str(cur), {"terms": terms, "ops": ops}

    def user_text(self, problem: Problem) -> str:
        # compact on purpose: every prompt token costs every sample of every model
        return f"Compute {problem.question}. Steps in <think> </think>, result in <answer> </answer>."

    def extract(self, completion: str) -> str | None:
        got = extract_tagged(completion)
        if got is None or not re.fullmatch(r"-?\d+", got):
            return None
        return str(int(got))

    def verify(self, problem: Problem, completion: str) -> bool:
        pred = self.extract(completion)
        return pred is not None and pred == str(int(problem.answer))

    def check_reasoning(self, problem: Problem, completion: str) -> bool:
        """True if the <think> trace is a correct chain: the question restated, then one rewrite
        line per operation in order (each optionally preceded by its exact column line), every
        result right, ending at the completion's answer. Answer correctness is `verify`'s job."""
        m = THINK_RE.search(completion)
        pred = self.extract(completion)
        if m is None or pred is None:
            return False
        terms, ops = parse_chain(problem.question)
        lines = [ln.strip() for ln in m.group(1).strip().splitlines() if ln.strip()]
        if lines and lines[0] != expr(terms, ops):  # one operation at a time (`binop_lines`, or `a op b=r` lines)
            steps = chain_steps(terms, ops)
            i = 0
            for a, op, b, r in steps:
                col = column_work(a, op, b)
                for form in ([f"{a}{op}{b}", col, f"={r}"], [f"{a}{op}{b}", f"={r}"], [plain_step(a, op, b)]):
                    if lines[i:i + len(form)] == form:
                        i += len(form)
                        break
                else:
                    return False
            return i == len(lines) and str(steps[-1][3]) == pred
        if not lines:
            return False
        i = 1
        while ops:
            a, op, b = terms[0], ops[0], terms[1]
            if i < len(lines) and lines[i] == column_work(a, op, b):
                i += 1
            terms, ops = [apply(a, op, b)] + terms[2:], ops[1:]
            if i >= len(lines) or lines[i] != "=" + expr(terms, ops):
                return False
            i += 1
        return i == len(lines) and str(terms[0]) == pred
