"""Lenient answer extraction, for task families that offer it (math, reasoning-gym).

Option `extraction`: strict, the default, takes only what the prompt asks for (the task's own
extraction); lenient falls back to the last number anywhere in the completion, for a model that
answers right but ignores the format (SmolLM2-135M-Instruct never writes <answer> tags:
docs/real-lm.md). It credits incidental numbers, so it inflates pass@k at large k; the evaluator
records both graders whichever one a study uses. A base class, not a helper module, so that it is
part of every using task's code fingerprint (pipeline.core.identity.task_version).
"""
from __future__ import annotations

import re

from tasks.base import Problem, Task

NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
EXTRACTIONS = ("strict", "lenient")


class LenientExtraction(Task):
    def set_extraction(self, task: str, value: str = "strict") -> None:
        if value not in EXTRACTIONS:
            raise ValueError(f"task {task}: option extraction: expected 'strict' or 'lenient', got {value!r}")
        self.extraction = value

    def lenient_on(self, lenient: bool | None) -> bool:
        """The call's choice, else the task's option."""
        return self.extraction == "lenient" if lenient is None else lenient

    @staticmethod
    def last_number(completion: str) -> str | None:
        numbers = NUMBER_RE.findall(completion)
        return numbers[-1].replace(",", "") if numbers else None

    def verify_lenient(self, problem: Problem, completion: str) -> bool:
        return self.verify(problem, completion, lenient=True)
