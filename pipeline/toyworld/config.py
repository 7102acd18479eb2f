"""The bootstrap config: the recipes of the base and the teacher and how they are measured."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, _format_error


# ---- bootstrap config -----------------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


STYLES = ("direct", "flawed", "plain", "column", "binop")


class ModelSpec(Strict):
    hidden: int = Field(96, ge=32)
    layers: int = Field(3, ge=1)
    heads: int | None = None
    intermediate: int | None = None
    max_positions: int = Field(512, ge=64)


class CorpusSpec(Strict):
    """A pretraining mixture: which levels, how often each completion style, how many documents."""

    levels: list[int] = Field(min_length=1)
    level_weights: list[float] | None = None  # default: uniform over levels
    styles: dict[str, float]  # style -> weight; styles: direct, flawed, plain, column
    step_error: float = Field(0.3, ge=0, le=1)  # per-step mistake rate of the "flawed" style
    problems_per_level: int = Field(800, ge=1)  # distinct train problems per level the documents draw from
    documents: int = Field(40000, ge=1)

    @field_validator("styles")
    @classmethod
    def known_styles(cls, v):
        bad = sorted(set(v) - set(STYLES))
        if bad or not v or min(v.values()) < 0 or sum(v.values()) <= 0:
            raise ValueError(f"styles: expected positive weights over {list(STYLES)}, got {v}")
        return v

    @model_validator(mode="after")
    def weights_match(self):
        if self.level_weights is not None and len(self.level_weights) != len(self.levels):
            raise ValueError(f"level_weights: expected {len(self.levels)} weights (one per level), got {len(self.level_weights)}")
        return self


class TrainSpec(Strict):
    max_steps: int = Field(800, ge=1)
    batch_size: int = Field(16, ge=1)
    block_size: int = Field(256, ge=16)  # documents are packed into blocks of this many tokens
    learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)


class Recipe(Strict):
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec
    train: TrainSpec = TrainSpec()


class EvalSpec(Strict):
    levels: list[int] = [1, 2, 3, 4, 5]
    test_size: int = Field(100, ge=1)
    n: int = Field(64, ge=1)
    ks: list[int] = [1, 2, 4, 8, 16, 32, 64]
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = Field(256, ge=1)
    # the base's accuracy on the RL training split, sampled as GRPO samples its rollouts
    train_size: int = Field(200, ge=1)
    train_n: int = Field(8, ge=1)
    rollout_temperature: float = Field(1.0, gt=0)


class BootstrapConfig(Strict):
    seed: int = 0
    # torch CPU threads while pretraining. Part of the config (and so of the hash) because float
    # sums, hence the weights, depend on it; 1 is also the fastest when others share the 2 cores.
    threads: int = Field(1, ge=1)
    max_value: int = Field(30, ge=2)  # largest term of toy_arith problems (the task's default)
    # Both models: 1.1M parameters (hidden 128, 4 layers), 1,000 steps. The 0.46M/800-step models of the
    # first world could not sample a worked chain reliably at temperature 1.0 (docs/toyworld.md).
    base: Recipe = Recipe(
        model=ModelSpec(hidden=128, layers=4),
        corpus=CorpusSpec(
            levels=[1, 2, 3, 4], level_weights=[0.35, 0.3, 0.2, 0.15],
            # real pretraining: mostly bare answers; careful schoolbook working (one operation at a time,
            # digit columns) in a large minority; the teacher's rewrite pattern almost never
            styles={"direct": 0.6, "binop": 0.38, "column": 0.02},
        ),
        train=TrainSpec(max_steps=1000),
    )
    teacher: Recipe = Recipe(model=ModelSpec(hidden=128, layers=4),
                             corpus=CorpusSpec(levels=[1, 2, 3, 4, 5, 6], styles={"column": 1.0}),
                             train=TrainSpec(max_steps=1000))
    eval: EvalSpec = EvalSpec()


def load_bootstrap_config(path: str | os.PathLike | None = None, seed: int | None = None) -> BootstrapConfig:
    """The defaults above, overridden by a YAML file and/or a seed. Errors name the file and field."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: bootstrap config not found (expected a YAML file)")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    if seed is not None:
        data["seed"] = seed
    try:
        return BootstrapConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path or "bootstrap config"), e)) from None
