"""The config's sections (tasks, sampling, traces, evaluation, health, tracking, compute) and the base
they share (Strict: unknown keys refused, frozen); the experiment that assembles them is schema.py."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_BOOTSTRAP = 100
# upper bounds where a larger number is a typo, not a study: samples per problem (pass@k studies go to
# 1024-2048), bootstrap resamples (each a pass over the problems x samples table)
MAX_SAMPLES = 65536
MAX_BOOTSTRAP = 100_000
MAX_STEPS = 1_000_000  # optimizer steps of a training arm


class ConfigError(ValueError):
    """A bad config: the message is one line, `file: field: what was expected`."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)



class TaskSpec(Strict):
    name: str
    # the spec's identity in the study (default: name); needed when two specs share a family,
    # e.g. {name: math, label: gsm8k} and {name: math, label: math500}. Results are reported per label.
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.-]*$")
    train_size: int = Field(1000, ge=0)  # 0: an evaluation-only benchmark (no training problems, e.g. AIME24)
    test_size: int = Field(100, ge=1)
    levels: list[int] | None = None
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known_task(cls, v: str) -> str:
        from tasks import is_task

        if not is_task(v):
            raise ValueError(f"unknown task {v!r} (expected a registered task or a reasoning-gym dataset name)")
        return v

    @field_validator("levels")
    @classmethod
    def nonempty_levels(cls, v):
        if v is not None and len(v) == 0:
            raise ValueError("empty list (expected at least one difficulty level, or leave it out)")
        return v


class GenerationConfig(Strict):
    backend: Literal["vllm", "cb", "hf", "auto"] = "auto"
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    n: int = Field(8, ge=1, le=MAX_SAMPLES)
    batch_size: int = Field(64, ge=1)
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    # weights on both backends; auto = the checkpoint's own dtype (not vLLM's auto, which is bf16 on CPU)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class TracesConfig(Strict):
    generation: GenerationConfig = GenerationConfig(temperature=1.0, top_p=1.0, n=8)
    shards: int = Field(4, ge=1)
    max_per_problem: int = Field(4, ge=1)


class EvalConfig(Strict):
    n: int = Field(64, ge=1, le=MAX_SAMPLES)
    ks: list[int] | None = None
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    backend: Literal["vllm", "cb", "hf", "auto"] = "auto"
    batch_size: int = Field(64, ge=1)
    # resamples for the 95% CIs and the verdicts; 0 = no CI and no verdict (the report says so)
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the checkpoint's own dtype
    include_teacher: bool = True
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    perplexity_subset: int = Field(200, ge=0)  # (problem, sample) pairs scored by the Perplexity stage; 0 = skip
    entropy_temperature: float = Field(0.6, gt=0)  # temperature of the sampling distribution whose entropy is reported
    # a sharpening baseline at no training cost: the base sampled at each of these temperatures too, an
    # extra model row "base-T<t>" on the same problems (the report sets the arms' pass@1 against the best)
    sharpened_temperatures: list[float] = Field(default_factory=list)
    # an adaptive sample budget (pipeline/stages/adaptive.py): more samples only for the problems that decide
    # the pass@k_max verdicts, until each verdict's 95% CI is at most this wide or max_n (default 8 n) is reached
    target_ci_width: float | None = Field(None, gt=0, lt=2)
    max_n: int | None = Field(None, ge=1, le=16 * MAX_SAMPLES)

    @field_validator("sharpened_temperatures")
    @classmethod
    def positive_distinct(cls, v):
        for t in v:
            if t <= 0:
                raise ValueError(f"{t} is not a sampling temperature (expected each > 0)")
        if len(set(v)) != len(v):
            raise ValueError(f"{v} lists a temperature twice (expected distinct temperatures)")
        return v

    @field_validator("bootstrap")
    @classmethod
    def enough_resamples(cls, v):
        if 0 < v < MIN_BOOTSTRAP:
            raise ValueError(f"{v} resamples are too few for a 95% CI (expected 0 for no CI, or at least {MIN_BOOTSTRAP})")
        return v

    @model_validator(mode="after")
    def ks_within_n(self):
        for k in self.ks or []:
            if k < 1 or k > self.n:
                raise ValueError(f"k={k} is outside 1..n={self.n} (every k must satisfy 1 <= k <= eval.n)")
        return self

    @model_validator(mode="after")
    def greedy_one_sample(self):
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature 0 is greedy decoding: its n={self.n} samples per problem are one sample "
                             f"repeated, so pass@k would be flat in k; expected temperature > 0, or n: 1")
        return self

    @model_validator(mode="after")
    def max_n_above_n(self):
        if self.max_n is not None and self.max_n < self.n:
            raise ValueError(f"max_n={self.max_n} is below n={self.n} (expected max_n >= n: the adaptive budget only adds samples)")
        return self

    def sharpened_models(self) -> dict[str, float]:
        """{model name: temperature} of the base's sharpened rows (sharpened_temperatures)."""
        return {f"base-T{t:g}": t for t in self.sharpened_temperatures}

    def k_list(self) -> list[int]:
        """The ks to report: as configured, else 1, 2, 4, ... up to n (n itself included)."""
        if self.ks:
            return sorted(set(self.ks))
        ks, k = [], 1
        while k < self.n:
            ks.append(k)
            k *= 2
        return ks + [self.n]

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            backend=self.backend, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
            n=self.n, batch_size=self.batch_size, gpu_memory_utilization=self.gpu_memory_utilization, dtype=self.dtype,
        )


class HealthConfig(Strict):
    """When a trained arm counts as having learned (pipeline.analysis.health): the 95% CI of its training
    metric's gain (last 20% of logged steps minus first 10%) lies above zero, and the gain is at least
    min_gain. Otherwise the report marks every verdict about the arm inconclusive."""

    min_gain: float = Field(0.05, ge=0)


class TrackingConfig(Strict):
    uri: str | None = None  # default sqlite:///<output_dir>/mlflow.db; MLFLOW_TRACKING_URI overrides
    experiment: str | None = None  # default: the experiment name
    log_model_max_mb: float = Field(50, ge=0)  # models up to this size are logged as artifacts, else referenced
    push_to_hub: str | None = None  # a hub user or organisation: each trained arm is pushed to <it>/<experiment>-<arm> (private)

    def resolved_uri(self, output_dir: str) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.uri or f"sqlite:///{Path(output_dir).resolve()}/mlflow.db"


class ComputeConfig(Strict):
    """Where heavy stages run. Nothing here changes results, so it is not part of any stage hash."""

    launcher: Literal["python", "accelerate"] = "python"  # accelerate: `accelerate launch` for training
    num_processes: int = Field(1, ge=1)  # accelerate processes (GPUs) per training stage
    # an accelerate config file (configs/accelerate/{ddp,fsdp,zero2,zero3}.yaml); without one, more than
    # one process means plain data parallel (DDP; gloo on CPU)
    accelerate_config: str | None = None
    gpus_per_stage: int = Field(0, ge=0)  # Luigi resource "gpu" each heavy stage claims ([resources] gpu=N)
    # CUDA_VISIBLE_DEVICES of each arm's Train stage, e.g. {sft: "0", rl: "1"}, so both train at once
    devices: dict[str, str] = Field(default_factory=dict)
    eval_devices: str | None = None
    threads: int | None = Field(None, ge=1)  # OMP/torch threads per stage process (CPU runs)
    # on a machine without GPUs, stage processes are forked from one process of the invocation that has
    # imported torch, transformers and TRL once (7-16 s a stage otherwise); false: each starts as `python -m`
    fork_stages: bool = True
    # vLLM parallelism for the sampling stages (teacher traces, evaluations, the RL prompt filter):
    # each engine spans vllm_tensor_parallel_size GPUs, and vllm_data_parallel_size engines (one process
    # each, on their own GPUs) sample disjoint shards at once; a shard's samples do not depend on which
    # engine drew them (on the HF backend they are identical; vLLM is seeded per request on GPU)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_data_parallel_size: int = Field(1, ge=1)
    # GRPO with rl.extra {use_vllm: true, vllm_mode: server}: TrainRL starts `vllm serve` (TRL's
    # `trl vllm-serve` command) on these GPUs, e.g. "2,3", waits for it and stops it when training ends;
    # the trainer itself runs on compute.devices.rl. The server uses vllm_tensor_parallel_size.
    rl_server_devices: str | None = None

    @model_validator(mode="after")
    def _processes_need_accelerate(self):
        if self.num_processes > 1 and self.launcher == "python":
            raise ValueError(f"num_processes: {self.num_processes} has no effect with launcher: python (one process "
                             f"trains); expected launcher: accelerate, or num_processes: 1")
        return self

    @field_validator("accelerate_config")
    @classmethod
    def _accelerate_config_exists(cls, v):
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file {v!r} not found (expected an accelerate config, e.g. configs/accelerate/ddp.yaml)")
        return v
    # Trainer checkpoints every this many optimizer steps (0 = none): a killed training stage resumes
    # from the newest, so a kill costs at most this many steps. Resuming gives the same model.
    checkpoint_steps: int = Field(25, ge=0)
    # problems per evaluation shard: finished shards survive a kill, so it costs at most one shard
    eval_shard_problems: int = Field(32, ge=1)
