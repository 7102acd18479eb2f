"""Experiment config: YAML presets in configs/, validated on load (open-r1-style dataclass recipes).

Every error is one line naming the file, the field and what was expected, and nothing runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.config.checks import check_experiment
from pipeline.config.outside import OutsideModel, check_outside
from pipeline.core.models import check_model_ref
from pipeline.config.values import read_yaml
from pipeline.config.sections import (  # noqa: F401 (re-exported: `from pipeline.config.schema import Strict`)
    MAX_STEPS, MIN_BOOTSTRAP, ComputeConfig, ConfigError, EvalConfig, GenerationConfig, HealthConfig, Strict, TaskSpec,
    TracesConfig, TrackingConfig,
)


NAME = r"^[\w.-]+$"  # a directory name: letters, digits, _ . - (and not `.` or `..`: _Experiment._plain_names)


class _Head(Strict):
    """ExperimentConfig's fields before the arms' sections (each registered arm's `config`, under its
    name: pipeline.arms), in the order of a config dump."""

    name: str = Field(pattern=NAME)
    # a sweep member's study: members share runs/<study>/ (and so every stage they have in common) and
    # one MLflow experiment; set by pipeline.run's sweep expansion. None: the study is `name` itself
    study: str | None = Field(None, pattern=NAME)
    seed: int = 0
    base_model: str
    teacher_model: str | None = None
    # models evaluated but not trained here (published checkpoints), each compared with its `from` model
    outside: list[OutsideModel] = Field(default_factory=list)
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

    @field_validator("name", "study", check_fields=False)
    @classmethod
    def _plain_names(cls, v):
        if v in (".", ".."):  # the study's directory would be output_dir itself, or its parent
            raise ValueError(f"{v!r} is not a directory name of its own (expected a name such as my-study)")
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
        from pipeline.core.identity import task_version
        from pipeline.core.models import model_fingerprint

        value = self.get(dotted)
        if dotted in ("base_model", "teacher_model") or (dotted.startswith("outside.") and dotted.endswith(".ref")):
            return model_fingerprint(value)
        if dotted == "tasks":
            from tasks import build_tasks

            return {"specs": _dump(value), "versions": {k: task_version(t) for k, t in build_tasks(value).items()}}
        return _dump(value)

    def get(self, dotted: str) -> Any:
        """A config part by its dotted path; in a list, a part names an item by its `name` (outside.<name>.ref)."""
        cur: Any = self
        for part in dotted.split("."):
            if isinstance(cur, list):
                cur = next(x for x in cur if x.name == part) if not part.isdigit() else cur[int(part)]
            else:
                cur = getattr(cur, part)
        return cur

    def model_field(self, model: str) -> str | None:
        """The config field holding `model`'s reference: base_model, teacher_model, outside.<name>.ref; None
        for a trained arm."""
        fields = {"base": "base_model", "teacher": "teacher_model", **{o.name: f"outside.{o.name}.ref" for o in self.outside}}
        return fields.get(model)

    def with_refs(self, refs: dict[str, str]) -> "_Experiment":
        """A copy with model references replaced, {field (as model_field names it): reference}."""
        top = {k: v for k, v in refs.items() if "." not in k}
        inner = {k.split(".")[1]: v for k, v in refs.items() if k.startswith("outside.")}
        if inner:
            top["outside"] = [o.model_copy(update={"ref": inner[o.name]}) if o.name in inner else o for o in self.outside]
        return self.model_copy(update=top)

    _outside = model_validator(mode="after")(check_outside)  # names and `from` (pipeline/config/outside.py)

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
        cfg = experiment_config().model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None
    try:
        check_experiment(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> _Experiment:
    """Load and validate a YAML preset. `overrides` maps dotted keys to values (e.g. {"rl.beta": 0.04})."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found (expected a YAML file, e.g. configs/tiny.yaml)")
    data = read_yaml(p)
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
