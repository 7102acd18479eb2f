"""Experiment config: YAML presets in configs/, validated on load (open-r1-style dataclass recipes).

Every error is one line naming the file, the field and what was expected, and nothing runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config.models import check_model_ref

MIN_BOOTSTRAP = 100


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
    n: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    # weights on both backends; auto = the checkpoint's own dtype (not vLLM's auto, which is bf16 on CPU)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class TracesConfig(Strict):
    generation: GenerationConfig = GenerationConfig(temperature=1.0, top_p=1.0, n=8)
    shards: int = Field(4, ge=1)
    max_per_problem: int = Field(4, ge=1)


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
    # a sharpening baseline at no training cost: the base sampled at each of these temperatures too, an
    # extra model row "base-T<t>" on the same problems (the report sets the arms' pass@1 against the best)
    sharpened_temperatures: list[float] = Field(default_factory=list)
    # an adaptive sample budget (pipeline/stages/adaptive.py): more samples only for the problems that decide
    # the pass@k_max verdicts, until each verdict's 95% CI is at most this wide or max_n (default 8 n) is reached
    target_ci_width: float | None = Field(None, gt=0, lt=2)
    max_n: int | None = Field(None, ge=1)

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


class _Head(Strict):
    """ExperimentConfig's fields before the arms' sections (each registered arm's `config`, under its
    name: pipeline.arms), in the order of a config dump."""

    name: str = Field(pattern=r"^[\w.-]+$")
    # a sweep member's study: members share runs/<study>/ (and so every stage they have in common) and
    # one MLflow experiment; set by pipeline.run's sweep expansion. None: the study is `name` itself
    study: str | None = Field(None, pattern=r"^[\w.-]+$")
    seed: int = 0
    base_model: str
    teacher_model: str | None = None
    tasks: list[TaskSpec] = Field(min_length=1)
    traces: TracesConfig = TracesConfig()


class _Tail(Strict):
    """ExperimentConfig's fields after the arms' sections."""

    eval: EvalConfig = EvalConfig()
    health: HealthConfig = HealthConfig()
    tracking: TrackingConfig = TrackingConfig()
    compute: ComputeConfig = ComputeConfig()
    output_dir: str = "runs"


class _Experiment(Strict):
    """The methods and checks of ExperimentConfig; its fields are _Head's, one section per registered
    arm, then _Tail's (`experiment_config`)."""

    @field_validator("tasks", check_fields=False)
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

    _check_base = field_validator("base_model", check_fields=False)(classmethod(lambda cls, v: check_model_ref(v)))

    @field_validator("teacher_model", check_fields=False)
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
    def _arm_checks(self):
        from pipeline.arms import arms

        unknown = sorted(set(self.compute.devices) - set(arms()))
        if unknown:
            raise ValueError(f"compute.devices: unknown arm(s) {unknown} (expected arm names: {sorted(arms())})")
        for arm in arms().values():
            if arm.check is not None:
                arm.check(self)
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


_MODELS: dict[tuple, type] = {}


def experiment_config() -> type[_Experiment]:
    """ExperimentConfig for the arms registered now (pipeline.arms.arms(): pipeline/arms/ and DVR_ARMS_PATH):
    _Head's fields, a section `<arm>: <arm.config>` per arm (its defaults when left out), _Tail's fields."""
    from pydantic import create_model

    from pipeline.arms import arms

    registered = arms()
    key = tuple((name, arm.config) for name, arm in registered.items())
    if key not in _MODELS:
        clash = sorted(set(registered) & (set(_Head.model_fields) | set(_Tail.model_fields)))
        if clash:
            raise ConfigError(f"arm(s) {clash}: name taken by a config field (expected another arm name)")
        fields = {n: (f.annotation, f) for n, f in _Head.model_fields.items()}
        fields.update({name: (arm.config, Field(default_factory=arm.config)) for name, arm in registered.items()})
        fields.update({n: (f.annotation, f) for n, f in _Tail.model_fields.items()})
        _MODELS[key] = create_model("ExperimentConfig", __base__=_Experiment, __module__=__name__, **fields)
    return _MODELS[key]


def __getattr__(name: str):
    if name == "ExperimentConfig":  # built on first use: the arms' modules import this one
        return experiment_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def parse_config(data: dict[str, Any], source: str = "<config>") -> _Experiment:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        return experiment_config().model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> _Experiment:
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
    """data[a][b]... = value for the key "a.b...": a part that is a number indexes a list
    ("tasks.0.test_size"), any other part a mapping (made when missing)."""
    parts = key.split(".")
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ConfigError(f"{key}: {'.'.join(parts[:i]) or 'the config'} is a list of {len(cur)}; expected an "
                                  f"index 0..{len(cur) - 1}, got {part!r}")
            part = int(part)
        elif not isinstance(cur, dict):
            raise ConfigError(f"{key}: {'.'.join(parts[:i])} is {cur!r}, not a section (expected a mapping or a list)")
        if last:
            cur[part] = value
        else:
            cur = cur.setdefault(part, {}) if isinstance(cur, dict) else cur[part]
