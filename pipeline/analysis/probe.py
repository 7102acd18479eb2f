"""The probe set: like-for-like training health whatever the order of the training prompts.

A curriculum walks the training problems easy to hard, and one-shot RLVR repeats one problem, so
the first and last windows of the logged training accuracy (pipeline/analysis/health.py) score different
problems, or the one memorised problem. A curriculum or one-shot RL run therefore scores a fixed
probe set, a seeded subset of PROBE_PROBLEMS distinct training problems (never the one-shot
problem), PROBE_SAMPLES samples each at the rollout temperature, with the project's engine
(pipeline/sampling/engine.py), once on the base before the first step and once on the trained model, in
the training process. `probe.json` beside the model holds the per-problem correct counts;
pipeline.analysis.health.check_probe reads it.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from pipeline.analysis.health import PROBE_FILE
from pipeline.core.io import write_atomic
from tasks.base import Problem, encode_prompt

PROBE_PROBLEMS = 32
PROBE_SAMPLES = 4

log = logging.getLogger(__name__)


def probe_set(problems: list[Problem], exclude: str | None = None, size: int = PROBE_PROBLEMS,
              seed: int = 0) -> list[Problem]:
    """A seeded subset of `size` distinct problems (by id), without the one `exclude` names."""
    distinct = list({p.id: p for p in problems if p.id != exclude}.values())
    return random.Random(seed).sample(distinct, min(size, len(distinct)))


def _decode(tokenizer, ids: list[int], eos_ids: list[int]) -> str:
    end = next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True)


def score(model, tokenizer, tasks: dict[str, Any], problems: list[Problem], *, samples: int, temperature: float,
          top_p: float, max_tokens: int, seed: int) -> list[int]:
    """Correct samples (of `samples`) per problem, sampled from `model` with the project's engine."""
    import torch

    from pipeline.sampling import engine as batching

    prompts = [encode_prompt(tokenizer, tasks[p.task].prompt(p, tokenizer)) for p in problems]
    eos = model.generation_config.eos_token_id
    eos_ids = sorted(set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
                     | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    was_training = model.training
    model.eval()
    try:
        with batching.attention(model), torch.no_grad():
            out, _ = batching.generate(model, prompts, samples, max_tokens=max_tokens, temperature=temperature,
                                       top_p=top_p, eos_ids=eos_ids, seed=seed)
    finally:
        model.train(was_training)
    return [sum(bool(tasks[p.task].verify(p, _decode(tokenizer, seq, eos_ids))) for seq in row)
            for p, row in zip(problems, out)]


class Probe:
    """The probe of one RL run: `start()` before trainer.train() (the trainer holds the base then,
    also on a resumed run, which loads its checkpoint inside train()), `finish(out_dir)` after it."""

    def __init__(self, trainer, problems: list[Problem], tasks: dict[str, Any], cfg, seed: int,
                 exclude: str | None = None):
        self.trainer, self.tasks, self.cfg, self.seed = trainer, tasks, cfg, seed
        self.problems = probe_set(problems, exclude, seed=seed)
        self.counts: list[int] = []
        # every process would draw the same; sharded weights (FSDP, DeepSpeed) cannot sample here
        self.active = (bool(self.problems) and trainer.is_world_process_zero() and not trainer.is_fsdp_enabled
                       and not trainer.is_deepspeed_enabled)

    def _score(self) -> list[int]:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        model = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: adapters applied inside
        return score(model, self.trainer.processing_class, self.tasks, self.problems, samples=PROBE_SAMPLES,
                     temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                     max_tokens=self.cfg.max_completion_length, seed=self.seed)

    def start(self) -> None:
        if self.active:
            self.counts = self._score()
            log.info("probe at the start: %d/%d correct", sum(self.counts), PROBE_SAMPLES * len(self.problems))

    def finish(self, out_dir: str | Path) -> Path | None:
        if not self.active:
            return None
        end = self._score()
        log.info("probe at the end: %d/%d correct", sum(end), PROBE_SAMPLES * len(self.problems))
        # out_dir may not exist yet: the trainer saves the model into it after this
        return write_atomic(Path(out_dir) / PROBE_FILE, json.dumps(dict(
            problems=[p.id for p in self.problems], samples=PROBE_SAMPLES, temperature=self.cfg.temperature,
            start=self.counts, end=end), indent=1))
