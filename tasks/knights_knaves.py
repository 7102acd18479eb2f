"""knights_knaves: reasoning-gym's Knights-and-Knaves puzzles, levels = number of people,
with the Logic-RL reward as an option (Xie et al. 2025, Logic-RL).

`verify` is reasoning-gym's `score_answer == 1.0` (the inherited ReasoningGymTask check). The
Logic-RL reward (Xie et al. 2025, scoring as in their kk.py) adds:
  format  +1 when the completion has exactly one <think>, </think>, <answer>, </answer>, in that
          order; -1 otherwise;
  answer  +2 when `verify` holds, -1.5 when the answer names a role for every person but is
          wrong, -2 when it cannot be parsed (a person's "X is a knight/knave" missing, the
          number of role words not the number of people) or the format is wrong.
So the reward runs from -3 to 3. Option `reward="logic_rl"` makes `reward()` this reward; the
default `reward="verify"` keeps the 1/0 reward. `logic_rl_reward` is available either way.

Option `template="logic_rl"` is Logic-RL's prompt (their qwen-instruct template): a system message
that describes the tags and the answer list, the puzzle as the user message, and the assistant turn
opened with "<think>", so the model starts inside its reasoning. The prefilled "<think>" is part of
the response the format score reads, as in Logic-RL. The default, `template="plain"`, is every
task's prompt (the puzzle and the project's one-line instruction).
Puzzles use other role words at random (sage/fool, ...); the parser reads them from the entry.
"""
from __future__ import annotations

import re
from typing import Any

from tasks import register
from tasks.base import Problem, extract_tagged
from tasks.gym import ReasoningGymTask

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
REWARDS = ("verify", "logic_rl")
TEMPLATES = ("plain", "logic_rl")
# Logic-RL's system prompt (Xie et al. 2025, data_preprocess/kk.py, template "qwen-instruct")
LOGIC_RL_SYSTEM = (
    "You are a helpful assistant. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think><answer> answer "
    "here </answer>.  Now the user asks you to solve a logical reasoning problem. After thinking, when you "
    "finally reach a conclusion, clearly state the identity of each character within <answer> </answer> tags. "
    "i.e., <answer> (1) Zoey is a knight\n(2) ... </answer>.\n")
PREFILL = "<think>"


@register("knights_knaves")
class KnightsKnavesTask(ReasoningGymTask):
    OPTIONS = ReasoningGymTask.OPTIONS + ("reward", "template")

    def __init__(self, **options: Any):
        self.reward_kind = options.get("reward", "verify")
        if self.reward_kind not in REWARDS:
            raise ValueError(f"task knights_knaves: option reward: expected one of {list(REWARDS)}, "
                             f"got {self.reward_kind!r}")
        self.template = options.get("template", "plain")
        if self.template not in TEMPLATES:
            raise ValueError(f"task knights_knaves: option template: expected one of {list(TEMPLATES)}, "
                             f"got {self.template!r}")
        if "n_people" in (options.get("config") or {}):
            raise ValueError("task knights_knaves: option config.n_people: the number of people is the "
                             "difficulty level; use levels instead")
        super().__init__("knights_knaves", **options)

    def level_overrides(self, level: int) -> dict[str, Any]:
        if level in self.level_options:
            return dict(self.level_options[level])
        if level < 2:
            raise ValueError(f"task knights_knaves: level {level}: expected a number of people >= 2")
        return {"n_people": level}

    def prompt(self, problem: Problem, tokenizer=None) -> str:
        if self.template == "plain":
            return super().prompt(problem, tokenizer)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            head = tokenizer.apply_chat_template(
                [{"role": "system", "content": LOGIC_RL_SYSTEM}, {"role": "user", "content": problem.question}],
                tokenize=False, add_generation_prompt=True)
        else:
            head = f"{LOGIC_RL_SYSTEM}\n{problem.question}\n"
        return head + PREFILL

    def response(self, completion: str) -> str:
        """The model's whole response: the completion after the prefilled "<think>" when the prompt has one."""
        return PREFILL + completion if self.template == "logic_rl" else completion

    def reward(self, problem: Problem, completion: str) -> float:
        if self.reward_kind == "logic_rl":
            return self.logic_rl_reward(problem, completion)
        return super().reward(problem, completion)

    def logic_rl_reward(self, problem: Problem, completion: str) -> float:
        return sum(self.logic_rl_parts(problem, completion).values())

    def logic_rl_parts(self, problem: Problem, completion: str) -> dict[str, float]:
        """Logic-RL's two scores: format (+1 when the tags are right, else -1) and answer (+2 correct, -1.5
        parsed but wrong, -2 not parsed or the format wrong); the reward is their sum."""
        if not format_ok(self.response(completion)):
            return {"format_reward": -1.0, "answer_reward": -2.0}
        if parse_roles(extract_tagged(completion) or "", problem.meta["entry"]["metadata"]) is None:
            return {"format_reward": 1.0, "answer_reward": -2.0}
        return {"format_reward": 1.0, "answer_reward": 2.0 if self.verify(problem, completion) else -1.5}


def format_ok(completion: str) -> bool:
    """Exactly one of each tag, in the order <think> </think> <answer> </answer>."""
    if any(completion.count(t) != 1 for t in TAGS):
        return False
    pos = [completion.find(t) for t in TAGS]
    return pos == sorted(pos)


def parse_roles(answer: str, metadata: dict[str, Any]) -> dict[str, bool] | None:
    """{name: is_knight} from "NAME is a ROLE" for every person, or None (Logic-RL's parser, with
    the puzzle's own role words)."""
    terms = metadata["knight_knave_terms"]
    knight, knave = terms["knight"], terms["knave"]
    n_roles = len(re.findall(rf"\b(?:{re.escape(knight)}|{re.escape(knave)})\b", answer, re.IGNORECASE))
    if n_roles != len(metadata["names"]):
        return None
    roles = {}
    for name in metadata["names"]:
        m = re.search(rf"\b{re.escape(name)}\s+is\s+({re.escape(terms['a_knight'])}|{re.escape(terms['a_knave'])})\b",
                      answer, re.IGNORECASE)
        if m is None:
            return None
        roles[name] = m.group(1).lower() == terms["a_knight"].lower()
    return roles
