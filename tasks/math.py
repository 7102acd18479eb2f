"""math: word problems in GSM8K or MATH-500 JSONL layout, checked with math-verify.

Layouts (one JSON object per line, detected per record):
  GSM8K     {"question": ..., "answer": "...reasoning...\\n#### 42"}   gold = after "####", commas dropped
  MATH-500  {"problem": ..., "solution": ..., "answer": ..., "level": 3}  gold = answer (else the last
            \\boxed{} of the solution); level (3 or "Level 3") is the difficulty
Sources, per split: option `train_file` / `test_file` (local JSONL), or `dataset` (a hub name such
as "openai/gsm8k", with `dataset_config` and `train_split`/`test_split`) loaded with `datasets`
where the hub is reachable. Train never overlaps test: train drops every question the test source
also has (whitespace-normalised text).

Answer extraction (option `extraction`): strict, the default, takes the last <answer>...</answer>
(what the prompt asks for), else the last \\boxed{...} (what math models are trained to write), and
nothing else. lenient also falls back to the last number anywhere in the completion, which credits
a rambling model for incidental numbers and so inflates pass@k at large k; the evaluator records
both, and the report shows how much of a curve depends on the grader.
The extracted text is parsed by math-verify as LaTeX (wrapped in $...$ unless it has its own
delimiters); if it also contains words ("42 dollars") math-verify's plain-text extraction is tried
as well. Gold is parsed as \\boxed{gold}. math-verify runs with its signal timeouts off (they raise
in threads) and the whole check is bounded by tasks/bounded.py instead. math-verify only hands
number-and-operator strings to sympy's parse_expr, so no model output runs as code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from math_verify import parse
from math_verify import verify as mv_verify

from tasks import register
from tasks.base import SPLITS, Problem, extract_tagged
from tasks.bounded import CheckTimeout, WorkerError, run_bounded
from tasks.lenient import LenientExtraction

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 5.0
WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word, not a LaTeX command
LEVEL_RE = re.compile(r"(\d+)")


class _NoTimeoutNotice(logging.Filter):
    # math-verify warns once that its timeouts are off; here they are off on purpose (see above)
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutNotice())


@register("math")
class MathTask(LenientExtraction):
    name = "math"
    OPTIONS = ("train_file", "test_file", "dataset", "dataset_config", "train_split", "test_split", "timeout",
               "extraction")

    def __init__(self, **options: Any):
        super().__init__(**options)
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"task math: unknown option {unknown[0]!r} (expected one of {list(self.OPTIONS)})")
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
        self.set_extraction("math", options.get("extraction", "strict"))
        self._pools: dict[str, list[Problem]] = {}

    # ---- problems -------------------------------------------------------------------------
    def problems(self, split: str, n: int, seed: int = 0, levels: list[int] | None = None) -> list[Problem]:
        """n problems of `split` drawn with `seed`, spread evenly over `levels` (MATH levels)."""
        pool = self.pool(split)
        levels = list(levels) if levels else [None]
        out: list[Problem] = []
        for li, level in enumerate(levels):
            want = n // len(levels) + (1 if li < n % len(levels) else 0)
            group = [p for p in pool if level is None or p.difficulty == level]
            if len(group) < want:
                at = "" if level is None else f" at level {level}"
                raise ValueError(f"task math: the {split} split has only {len(group)} problems{at} "
                                 f"(wanted {want}); ask for fewer or give a bigger {split} source")
            out += random.Random(f"{seed}/{split}/{level}").sample(group, want)
        return out

    def check_spec(self, sizes: dict[str, int], levels: list[int] | None) -> None:
        """Every split asked for has a source; a local file's split has the problems asked for (a hub
        dataset is counted by the Problems stage, which downloads it)."""
        for split, n in sizes.items():
            if n == 0:
                continue
            if not self._has_source(split):
                raise ValueError(f"options: task math needs {split}_file (a local JSONL file) or dataset (a hub name) "
                                 f"for its {split} split (expected e.g. {{test_file: data/benchmarks/gsm8k.test.jsonl}})")
            if not self.options.get(f"{split}_file"):
                continue
            pool = self.pool(split)
            for li, level in enumerate(list(levels) if levels else [None]):
                want = n // len(levels or [None]) + (1 if li < n % len(levels or [None]) else 0)
                have = sum(1 for p in pool if level is None or p.difficulty == level)
                if have < want:
                    at = "" if level is None else f" at level {level}"
                    raise ValueError(f"{split}_size: {n} asked for, but the {split} split ({self.options[f'{split}_file']}) "
                                     f"has {have} problems{at} (expected {split}_size <= "
                                     f"{have * len(levels or [None])}, or a bigger {split} source)")

    def pool(self, split: str) -> list[Problem]:
        """Every problem of `split`, deduplicated; train minus any question of the test source."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if split not in self._pools:
            probs = [_to_problem(r, split, where) for r, where in self._records(split)]
            exclude: set[str] = set()
            if split == "train" and self._has_source("test"):
                exclude = {_norm(p.question) for p in self.pool("test")}
            seen, pool = set(exclude), []
            for p in probs:
                if _norm(p.question) not in seen:
                    seen.add(_norm(p.question))
                    pool.append(p)
            self._pools[split] = pool
        return self._pools[split]

    def _has_source(self, split: str) -> bool:
        return bool(self.options.get(f"{split}_file") or self.options.get("dataset"))

    def _records(self, split: str) -> list[tuple[dict, str]]:
        opt = f"{split}_file"
        if self.options.get(opt):
            return _read_jsonl(opt, Path(self.options[opt]))
        if self.options.get("dataset"):
            return _load_hub(self.options["dataset"], self.options.get("dataset_config"),
                             self.options.get(f"{split}_split", split))
        raise ValueError(f"task math: split {split!r} needs option {opt} (a local JSONL file) or dataset (a hub name)")

    # ---- checking ---------------------------------------------------------------------------
    def extract(self, completion: str, lenient: bool | None = None) -> str | None:
        tagged = extract_tagged(completion)
        if tagged is not None:
            return tagged
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed
        return self.last_number(completion) if self.lenient_on(lenient) else None

    def verify(self, problem: Problem, completion: str, lenient: bool | None = None) -> bool:
        pred = self.extract(completion, lenient)
        if pred is None or not pred.strip():
            return False
        try:
            return bool(run_bounded(check_answer, problem.answer, pred, timeout=self.timeout))
        except CheckTimeout:
            return False
        except WorkerError:
            raise
        except Exception as e:  # math-verify catches its own errors; anything else: not correct
            log.warning("task math: problem %s: check failed (%s: %s); counted as incorrect",
                        problem.id, type(e).__name__, e)
            return False


def check_answer(gold: str, pred: str) -> bool:
    """math-verify equivalence of an extracted answer with the gold (module level: it may run in
    the worker process; unbounded by itself, callers bound it)."""
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    if not gold_parsed:
        return False
    # a LaTeX currency sign: math-verify reads "\\$36" inside $...$ as nothing, so a model that writes the
    # gold answer of MATH-500 "\\$36" exactly was marked wrong (3 of its 500 answers; tests/tasks/test_benchmark_data.py)
    pred = pred.replace("\\$", "")
    candidates = [pred if ("$" in pred or "\\boxed" in pred) else f"${pred}$"]
    if WORD_RE.search(pred):
        candidates.append(pred)
    return any(mv_verify(gold_parsed, parse(c, parsing_timeout=None), timeout_seconds=None) for c in candidates)


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _to_problem(rec: dict, split: str, where: str) -> Problem:
    if isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str) and "####" in rec["answer"]:
        question, solution = rec["question"], rec["answer"]
        gold, level, layout = solution.split("####")[-1].strip().replace(",", ""), None, "gsm8k"
    elif isinstance(rec.get("problem"), str) and (rec.get("answer") is not None or "solution" in rec):
        question, solution = rec["problem"], str(rec.get("solution", ""))
        gold = str(rec["answer"]) if rec.get("answer") is not None else last_boxed(solution)
        level, layout = _level(rec.get("level"), where), "math500"
    else:
        raise ValueError(f"task math: {where}: expected GSM8K layout {{question, answer ending in '#### N'}} "
                         f"or MATH-500 layout {{problem, solution, answer}}, got keys {sorted(rec)}")
    if not gold:
        raise ValueError(f"task math: {where}: empty gold answer")
    pid = f"math-{split}-{hashlib.sha256(_norm(question).encode()).hexdigest()[:12]}"
    meta = {"layout": layout, "solution": solution}
    meta.update({k: rec[k] for k in ("subject", "unique_id") if k in rec})
    return Problem(pid, "math", question, gold, level, meta)


def _level(value: Any, where: str) -> int | None:
    if value is None:
        return None
    m = LEVEL_RE.search(str(value))
    if m is None:
        raise ValueError(f"task math: {where}: level: expected a number like 3 or 'Level 3', got {value!r}")
    return int(m.group(1))


def _norm(question: str) -> str:
    return " ".join(question.split())


def _read_jsonl(option: str, path: Path) -> list[tuple[dict, str]]:
    """Records of a local JSONL file, each with where it came from (file and line). Not `datasets`'
    json loader: it builds one Arrow schema for the whole file (so GSM8K and MATH-500 records, or a
    `level` given as 3 in one line and "Level 3" in another, fail or gain each other's keys as null),
    writes a cache under ~/.cache, and its errors name no line; a bad line here is one line of error."""
    if not path.is_file():
        raise ValueError(f"task math: option {option}: no such file {str(path)!r} (expected a JSONL file)")
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"task math: option {option}: {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                         f"offset {e.start}); expected UTF-8 JSONL") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{option} {path} line {i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"task math: {where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"task math: {where}: expected a JSON object")
        out.append((rec, where))
    if not out:
        raise ValueError(f"task math: option {option}: {path} has no records")
    return out


def _load_hub(name: str, config: str | None, split: str) -> list[tuple[dict, str]]:
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all end the same way
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"task math: option dataset={name!r}: could not load split {split!r} from the Hugging "
                         f"Face hub ({type(e).__name__}: {reason}); offline? use train_file/test_file") from None
    return [(dict(r), f"dataset {name} {split} row {i}") for i, r in enumerate(ds, 1)]
