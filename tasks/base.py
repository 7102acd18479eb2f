"""The common base of every verifiable task.

A task gives deterministic problems by split and seed, one zero-shot prompt for every model,
answer extraction, and `verify(problem, completion) -> bool`. That one function is what the
trace filter, the RL reward and the evaluator all call, so "is this answer correct" has a
single source of truth.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # share of the problem space reserved for the test split (by hash)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INSTRUCTION = "Think step by step inside <think> </think>, then give the final answer inside <answer> </answer>."


@dataclass(frozen=True)
class Problem:
    """One problem. `id` is stable across runs; `meta` holds what the verifier needs (JSON-able)."""

    id: str
    task: str
    question: str
    answer: str
    difficulty: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Problem":
        return cls(**d)


def split_of(question: str) -> str:
    """Assign a question to a split by a hash of its text: train and test never overlap,
    whatever the sizes and seeds asked for, and a problem keeps its split forever."""
    h = int.from_bytes(hashlib.sha256(question.strip().encode()).digest()[:8], "big")
    return "test" if (h % 1000) < TEST_FRACTION * 1000 else "train"


def extract_tagged(completion: str) -> str | None:
    """The content of the last <answer>...</answer> block, stripped; None if there is none."""
    found = ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


def render_prompt(user_text: str, tokenizer=None) -> str:
    """The model-facing prompt: the model's chat template where it has one, plain text otherwise.
    Every model gets the same user text; only the wrapping differs by tokenizer."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return f"{user_text}\n"


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The token ids of a rendered prompt, the same in every stage (sampling, SFT, GRPO, perplexity):
    no special tokens added, since the chat template already wrote the ones the model expects (a
    tokenizer that adds BOS would otherwise give Llama-3, Mistral or Gemma a doubled BOS)."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


class Task:
    """Base class. Subclasses implement `generate` (and `verify` when the answer check is special)."""

    name: str = "task"
    max_attempts_factor = 50  # candidates drawn per problem wanted, before giving up on a split

    def __init__(self, **options: Any):
        self.options = options

    # ---- problems -------------------------------------------------------------------------
    def generate(self, rng_seed: int, level: int | None) -> tuple[str, str, dict[str, Any]]:
        """One candidate (question, answer, meta) from a seed, at a difficulty level."""
        raise NotImplementedError

    def problems(self, split: str, n: int, seed: int = 0, levels: list[int] | None = None) -> list[Problem]:
        """n distinct problems of `split`, spread evenly over `levels`; deterministic in seed."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        levels = list(levels) if levels else [None]
        out: list[Problem] = []
        seen: set[str] = set()
        for li, level in enumerate(levels):
            want = n // len(levels) + (1 if li < n % len(levels) else 0)
            got, i = 0, 0
            while got < want:
                if i > self.max_attempts_factor * max(want, 20):
                    raise ValueError(
                        f"task {self.name}: only {got} distinct {split} problems at level {level} "
                        f"(wanted {want}); the problem space is too small for this split size"
                    )
                # the seed mixes split, level and index so the streams never coincide
                q, a, meta = self.generate(_mix(seed, split, level, i), level)
                i += 1
                if q in seen or split_of(q) != split:
                    continue
                seen.add(q)
                pid = f"{self.name}-{split}-{seed}-L{level if level is not None else 0}-{got:05d}"
                out.append(Problem(pid, self.name, q, a, level, meta))
                got += 1
        return out

    def check_spec(self, sizes: dict[str, int], levels: list[int] | None) -> None:
        """Cheap checks of a task spec before anything runs (`sizes`: split -> problems asked for):
        a ValueError whose message starts with the spec's field (`levels: ...`, `test_size: ...`,
        `options: ...`). The problems themselves are drawn by the Problems stage."""

    # ---- prompting and checking --------------------------------------------------------------
    def user_text(self, problem: Problem) -> str:
        return f"{problem.question}\n{INSTRUCTION}"

    def prompt(self, problem: Problem, tokenizer=None) -> str:
        return render_prompt(self.user_text(problem), tokenizer)

    def extract(self, completion: str) -> str | None:
        return extract_tagged(completion)

    def verify(self, problem: Problem, completion: str) -> bool:
        pred = self.extract(completion)
        return pred is not None and pred == problem.answer.strip()

    def verify_lenient(self, problem: Problem, completion: str) -> bool:
        """`verify` with the most forgiving answer extraction the task has (for a report of how much a
        result depends on the grader); the same as `verify` for tasks with one way to extract."""
        return self.verify(problem, completion)

    def reward(self, problem: Problem, completion: str) -> float:
        """RL reward; by default exactly `verify`. Tasks may offer shaped variants (Logic-RL)."""
        return 1.0 if self.verify(problem, completion) else 0.0


def _mix(seed: int, split: str, level: int | None, i: int) -> int:
    key = f"{seed}/{split}/{level}/{i}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & 0x7FFFFFFF
