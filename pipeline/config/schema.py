"""Experiment config: YAML presets in configs/, validated on load (open-r1-style dataclass recipes).

Every error is one line naming the file, the field and what was expected, and nothing runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIN_BOOTSTRAP = 100
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A bad config: the message is one line, `file: field: what was expected`."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_model_ref(ref: str) -> str:
    """A model is a local directory or a hub id (org/name). A path that looks local must exist and
    hold a loadable model (`check_model_dir`)."""
    from pipeline.stages.convert import gguf_path, is_gguf

    if is_gguf(ref):  # a GGUF file (a path or package:<pkg>/<file>), converted by the ConvertModel stage
        gguf_path(ref)
        return ref
    if Path(ref).expanduser().exists():
        check_model_dir(Path(ref).expanduser())
        return ref
    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") != 1 or not HUB_ID.match(ref)
    if looks_local:
        raise ValueError(f"local model path {ref!r} does not exist (expected a model directory or a hub id org/name)")
    return ref


def check_model_dir(d: Path) -> None:
    """Cheap checks that a local model directory will load, so a broken one fails at config time
    rather than deep inside a stage: a directory with a config.json that is a JSON object naming its
    model_type, and weights, each safetensors file whole (its header parses and the file is as long
    as the header says)."""
    if not d.is_dir():
        raise ValueError(f"{d} is not a directory (expected a model directory with config.json and weights)")
    cfg = d / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{d}: no config.json (expected a Hugging Face model directory: config.json, weights, tokenizer)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg}: not valid JSON ({getattr(e, 'msg', e.__class__.__name__)})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{cfg}: no model_type (expected a transformers model config)")
    weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("pytorch_model*.bin")) + sorted(d.glob("*.gguf"))
    if not weights:
        raise ValueError(f"{d}: no weights (expected *.safetensors, pytorch_model*.bin or *.gguf)")
    for w in (w for w in weights if w.suffix == ".safetensors"):
        _check_safetensors(w)


def _check_safetensors(path: Path) -> None:
    """The safetensors layout: 8-byte little-endian header length, a JSON header whose data_offsets
    say how many bytes of tensors follow. A truncated copy is shorter than that."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes; expected an 8-byte header "
                             f"length and a JSON header)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header (not JSON)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated ({size} bytes; its header says {8 + n + end})")


def tokenizer_mismatch(a: str, b: str) -> str | None:
    """Why two local model directories do not share a tokenizer (vocab_size, or the vocabulary in
    tokenizer.json), or None. Hub ids and GGUF files are not read here (TRL checks vocab_size when
    it loads them)."""
    da, db = Path(a).expanduser(), Path(b).expanduser()
    if not (da.is_dir() and db.is_dir()):
        return None
    va, vb = (json.loads((d / "config.json").read_text()).get("vocab_size") for d in (da, db))
    if va != vb:
        return f"vocab_size {va} vs {vb}"
    ta, tb = da / "tokenizer.json", db / "tokenizer.json"
    if ta.is_file() and tb.is_file():
        if json.loads(ta.read_text()).get("model") != json.loads(tb.read_text()).get("model"):
            return f"{ta} and {tb} have different vocabularies"
    return None


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
    n: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    # weights on both backends; auto = the checkpoint's own dtype (not vLLM's auto, which is bf16 on CPU)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class TracesConfig(Strict):
    generation: GenerationConfig = GenerationConfig(temperature=1.0, top_p=1.0, n=8)
    shards: int = Field(4, ge=1)
    max_per_problem: int = Field(4, ge=1)


class SFTConfig(Strict):
    enabled: bool = True  # the arm runs when there is a teacher; false leaves it out of the study
    learning_rate: float = Field(5e-4, gt=0)
    num_train_epochs: float = Field(2.0, gt=0)
    max_steps: int = -1  # > 0: this many optimizer steps, overriding num_train_epochs (TRL's field)
    per_device_train_batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler_type: str = "cosine"
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    # the SFT data-size axis: train on a seeded subset of this many verified traces (null: all of them)
    max_traces: int | None = Field(None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.SFTConfig as is")


class RLConfig(Strict):
    # grpo: trl.GRPOTrainer with `loss_type`; rloo: trl.RLOOTrainer (leave-one-out baseline; loss_type,
    # top_entropy_quantile and entropy_coef are GRPOTrainer's and do not apply)
    algorithm: Literal["grpo", "rloo"] = "grpo"
    # who samples the rollouts: the project's engine (pipeline/sampling/engine.py) or TRL's own path
    # (transformers generate, or vLLM through rl.extra); benchmarks/RESULTS.md has the step times
    rollouts: Literal["cb", "trl"] = "cb"
    enabled: bool = True  # false leaves the RL arm out of the study (e.g. an SFT data-size sweep)
    num_generations: int = Field(8, ge=2)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    beta: float = Field(0.0, ge=0)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = None
    # trl.GRPOConfig's advantage scaling: by the group's reward std (GRPO), the batch's, or none (Dr. GRPO)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    # DAPO's overlong filtering: completions cut off at max_completion_length get no loss (TRL's name)
    mask_truncated_completions: bool = False
    # DAPO's soft overlong punishment (trl.rewards.get_soft_overlong_punishment, L_cache): a reward from 0
    # down to -1 over the last soft_punish_cache tokens before max_completion_length; 0 leaves it out
    soft_punish_cache: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # share of max_steps with a linear warm-up
    lr_scheduler_type: str = "linear"  # TRL's default
    max_steps: int = Field(100, ge=1)
    per_device_train_batch_size: int = Field(32, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(256, ge=1)
    # keep the training problems the base solves sometimes (0 < p < 1 over filter_samples rollouts at
    # the rollout temperature), as SimpleRL-Zoo and DAPO's dynamic sampling do: a group whose
    # rollouts all fail (or all pass) has zero advantage and teaches GRPO nothing
    pass_rate_filter: bool = False
    filter_samples: int = Field(8, ge=2)
    curriculum: bool = False  # train in order of difficulty level (no shuffling), as in Logic-RL
    top_entropy_quantile: float = Field(1.0, gt=0, le=1)  # 0.2: the policy gradient on the top-20% entropy tokens only
    entropy_coef: float = Field(0.0, ge=0)  # an entropy bonus in the GRPO loss
    # one-shot RLVR: one training problem, repeated to fill every batch. It is the problem with the
    # highest variance of the base's pass rate p(1-p) in the RL prompt filter (needs pass_rate_filter)
    one_shot: bool = False
    # models saved at i/(snapshots+1) of max_steps, i = 1..snapshots, each evaluated like the final one
    # (the training-length table: 2 gives 1/3, 2/3 and the end)
    snapshots: int = Field(0, ge=0)
    reward: Literal["verify", "logic_rl"] = "verify"
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.GRPOConfig (or RLOOConfig) as is")

    @model_validator(mode="after")
    def grpo_only_fields(self):
        if self.algorithm == "rloo":
            if self.top_entropy_quantile < 1 or self.entropy_coef > 0:
                raise ValueError("top_entropy_quantile and entropy_coef are GRPO options (trl.GRPOConfig); "
                                 "expected algorithm: grpo, or leave them at 1.0 and 0.0 for rloo")
        if self.one_shot and not self.pass_rate_filter:
            raise ValueError("one_shot picks its problem from the base's pass rates; expected pass_rate_filter: true")
        if self.snapshots >= self.max_steps:
            raise ValueError(f"snapshots={self.snapshots} needs max_steps > snapshots (got max_steps={self.max_steps})")
        return self

    @model_validator(mode="after")
    def batch_divisible(self):
        if (self.per_device_train_batch_size * self.gradient_accumulation_steps) % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size*gradient_accumulation_steps="
                f"{self.per_device_train_batch_size * self.gradient_accumulation_steps} must be a multiple of "
                f"num_generations={self.num_generations}"
            )
        return self

    def prompts_per_step(self, num_processes: int = 1) -> float:
        """Distinct prompts per optimizer step, as TRL 1.16 walks them: per_device_train_batch_size x
        gradient_accumulation_steps x processes rollouts, num_generations per prompt, each generation
        batch reused num_iterations times (rl.extra)."""
        rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes
        return rollouts / self.num_generations / self.extra.get("num_iterations", 1)


def curriculum_error(level_counts: dict, max_steps: int, prompts_per_step: float) -> str | None:
    """rl.curriculum walks the problems sorted by level: the error when max_steps x prompts_per_step
    prompts never reach the hardest level ({level: problems}); None when they do."""
    levels = sorted(lv for lv in level_counts if lv is not None)
    before = sum(level_counts[lv] for lv in levels[:-1])
    if len(levels) < 2 or max_steps * prompts_per_step > before:
        return None
    return (f"rl.curriculum: rl.max_steps={max_steps} x {prompts_per_step:g} prompts per step = "
            f"{int(max_steps * prompts_per_step)} prompts never reach level {levels[-1]} (levels {levels} hold "
            f"{[level_counts[lv] for lv in levels]} problems, the last starting at prompt {before + 1}); expected "
            f"rl.max_steps >= {math.floor(before / prompts_per_step) + 1}, or fewer problems per level")


class DistillConfig(Strict):
    """The on-policy distillation arm (trl.DistillationTrainer): the student (the base) samples
    completions of the training prompts and is trained toward the teacher's next-token distribution
    on them. Needs a teacher with the student's tokenizer."""

    enabled: bool = False
    beta: float = Field(1.0, ge=0, le=1)  # TRL's generalized JSD: 0 forward KL, 1 reverse KL, 0.5 JSD
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: str = "linear"
    max_steps: int = Field(100, ge=1)
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_completion_length: int = Field(256, ge=1)
    logging_steps: int = Field(5, ge=1)
    bf16: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to trl.DistillationConfig as is")


class EvalConfig(Strict):
    n: int = Field(64, ge=1)
    ks: list[int] | None = None
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    backend: Literal["vllm", "cb", "hf", "auto"] = "auto"
    batch_size: int = Field(64, ge=1)
    # resamples for the 95% CIs and the verdicts; 0 = no CI and no verdict (the report says so)
    bootstrap: int = Field(1000, ge=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the checkpoint's own dtype
    include_teacher: bool = True
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    perplexity_subset: int = Field(200, ge=0)  # (problem, sample) pairs scored by the Perplexity stage; 0 = skip
    entropy_temperature: float = Field(0.6, gt=0)  # temperature of the sampling distribution whose entropy is reported

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
    sft_devices: str | None = None  # CUDA_VISIBLE_DEVICES for TrainSFT, e.g. "0"
    rl_devices: str | None = None  # ... for TrainRL, e.g. "1", so both train at once
    eval_devices: str | None = None
    threads: int | None = Field(None, ge=1)  # OMP/torch threads per stage process (CPU runs)
    # vLLM parallelism for the sampling stages (teacher traces, evaluations, the RL prompt filter):
    # each engine spans vllm_tensor_parallel_size GPUs, and vllm_data_parallel_size engines (one process
    # each, on their own GPUs) sample disjoint shards at once; a shard's samples do not depend on which
    # engine drew them (on the HF backend they are identical; vLLM is seeded per request on GPU)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_data_parallel_size: int = Field(1, ge=1)
    # GRPO with rl.extra {use_vllm: true, vllm_mode: server}: TrainRL starts `vllm serve` (TRL's
    # `trl vllm-serve` command) on these GPUs, e.g. "2,3", waits for it and stops it when training ends;
    # the trainer itself runs on rl_devices. The server uses vllm_tensor_parallel_size.
    rl_server_devices: str | None = None

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


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[\w.-]+$")
    # a sweep member's study: members share runs/<study>/ (and so every stage they have in common) and
    # one MLflow experiment; set by pipeline.run's sweep expansion. None: the study is `name` itself
    study: str | None = Field(None, pattern=r"^[\w.-]+$")
    seed: int = 0
    base_model: str
    teacher_model: str | None = None
    tasks: list[TaskSpec] = Field(min_length=1)
    traces: TracesConfig = TracesConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    health: HealthConfig = HealthConfig()
    tracking: TrackingConfig = TrackingConfig()
    compute: ComputeConfig = ComputeConfig()
    output_dir: str = "runs"

    @field_validator("tasks")
    @classmethod
    def _distinct_labels(cls, v):
        seen: dict[str, int] = {}
        for i, t in enumerate(v):
            label = t.label or t.name
            if label in seen:
                raise ValueError(f"tasks[{seen[label]}] and tasks[{i}] are both {label!r} (give each spec a distinct "
                                 f"`label`, e.g. gsm8k and math500)")
            seen[label] = i
        return v

    _check_base = field_validator("base_model")(classmethod(lambda cls, v: check_model_ref(v)))

    @field_validator("teacher_model")
    @classmethod
    def _check_teacher(cls, v):
        return None if v is None else check_model_ref(v)

    def section_hash(self, *sections: str, extra: Any = None, length: int = 10) -> str:
        """Hash of the named parts of the config (dotted paths, e.g. "traces.generation") plus
        `extra` (e.g. upstream stage keys): a stage's identity derives from what it reads."""
        data = {s: self.identity_of(s) for s in sorted(sections)}
        data["__extra__"] = extra
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]

    def identity_of(self, dotted: str) -> Any:
        """What a config part contributes to a stage hash: its value, except that a model counts by
        its content (or hub revision) and tasks by their specs plus their code's version."""
        from pipeline.core.identity import model_fingerprint, task_version

        value = self.get(dotted)
        if dotted in ("base_model", "teacher_model"):
            return model_fingerprint(value)
        if dotted == "tasks":
            from tasks import build_tasks

            return {"specs": _dump(value), "versions": {k: task_version(t) for k, t in build_tasks(value).items()}}
        return _dump(value)

    def get(self, dotted: str) -> Any:
        cur: Any = self
        for part in dotted.split("."):
            cur = getattr(cur, part)
        return cur

    @model_validator(mode="after")
    def _curriculum_reaches_every_level(self):
        # assumes each task's train_size splits evenly over its levels (tasks.base.Task.problems) and that
        # all of them reach RL; with rl.pass_rate_filter the count is known only at training (pipeline/arms/rl.py)
        rl = self.rl
        if rl.enabled and rl.curriculum and not rl.one_shot and not rl.pass_rate_filter and all(
                t.levels for t in self.tasks if t.train_size):
            counts: dict[int, int] = {}
            for t in (t for t in self.tasks if t.train_size):
                for i, lv in enumerate(t.levels):
                    counts[lv] = counts.get(lv, 0) + t.train_size // len(t.levels) + (i < t.train_size % len(t.levels))
            err = curriculum_error(counts, rl.max_steps, rl.prompts_per_step(self.compute.num_processes))
            if err:
                raise ValueError(err)
        return self

    @model_validator(mode="after")
    def _distill_needs_teacher(self):
        if self.distill.enabled:
            if self.teacher_model is None:
                raise ValueError("distill.enabled needs a teacher_model (its token distribution is the target)")
            why = tokenizer_mismatch(self.base_model, self.teacher_model)
            if why:
                raise ValueError(f"distill.enabled: the base and the teacher do not share a tokenizer ({why}); "
                                 f"on-policy distillation compares next-token distributions over one vocabulary")
        return self

    @property
    def run_dir(self) -> Path:
        """Where the study's stages live: runs/<study>/<stage>-<hash>/, shared by a sweep's members."""
        return Path(self.output_dir) / (self.study or self.name)

    @property
    def member_dir(self) -> Path:
        """This experiment's own outputs (its report): the study directory itself, or for a sweep
        member runs/<study>/members/<name>/."""
        return self.run_dir if self.study is None else self.run_dir / "members" / self.name

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: one per study, so a sweep's members sit side by side in one table."""
        return self.tracking.experiment or self.study or self.name


def _dump(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, list):
        return [_dump(x) for x in v]
    return v


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see configs/tiny.yaml for the known keys)"
    elif e["type"] == "missing":
        msg = "required field is missing"
    else:
        msg = e["msg"].removeprefix("Value error, ")
        if "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate a YAML preset. `overrides` maps dotted keys to values (e.g. {"rl.beta": 0.04})."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found (expected a YAML file, e.g. configs/tiny.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_config(data, str(p))


def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
