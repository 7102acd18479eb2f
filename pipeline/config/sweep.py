"""Sweeps: one study, many members.

A sweep preset (configs/sweeps/*.yaml) names a base experiment, the overrides every member shares,
the axes it sweeps and the tables its report writes:

    study: algorithms
    config: configs/tiny.yaml
    set: {rl.max_steps: 120}
    sweep:
      variant:                      # named points: each sets several fields
        grpo: {rl.loss_type: grpo}
        rloo: {rl.algorithm: rloo}
      seed: [0, 1, 2]               # plain values of one field
    tables: [algorithms]

The members are the cross product of the axes. They share runs/<study>/, where a stage lives under
its key (a hash of what it reads), so a stage that several members have in common (problems, teacher
traces, the filter, the base and teacher evaluations, SFT when its inputs are equal) exists and runs
once. Each member's report is runs/<study>/members/<member>/report/; the study's own report, with the
tables, is runs/<study>/report/. In MLflow the study is one experiment with one parent run per member.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_config
from pipeline.config.values import read_yaml

TABLES = ("algorithms", "training_length", "sft_data_size", "sharpening")
KEYS = {"study", "config", "set", "sweep", "tables", "notes"}
NOT_SWEPT = ("name", "study", "output_dir")  # a member's name and the study's are set by the sweep; one output_dir


@dataclass
class Member:
    name: str  # e.g. variant-grpo__seed-1
    values: dict[str, Any]  # axis -> the point's name or value, e.g. {"variant": "grpo", "seed": 1}
    overrides: dict[str, Any]  # dotted config keys -> values, study and name included


@dataclass
class Sweep:
    study: str
    config: str
    members: list[Member]
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the algorithms table (what each variant includes)

    def spec(self) -> dict:
        """Plain data for a Luigi parameter."""
        return {"study": self.study, "config": self.config, "tables": list(self.tables), "notes": list(self.notes),
                "members": [{"name": m.name, "values": m.values, "overrides": m.overrides} for m in self.members]}

    @classmethod
    def from_spec(cls, d) -> "Sweep":
        return cls(d["study"], d["config"], [Member(m["name"], dict(m["values"]), dict(m["overrides"]))
                                             for m in d["members"]], list(d["tables"]), list(d.get("notes", [])))


def is_sweep_file(path: str | Path) -> bool:
    """A sweep preset names its base experiment under `config:`, which no experiment config has (so a
    preset whose `sweep:` is misspelt is still read as a preset, and its unknown key named)."""
    try:
        data = read_yaml(path)
    except (OSError, ConfigError):
        return False
    return isinstance(data, dict) and ("sweep" in data or "config" in data) and "base_model" not in data


def _value_name(v: Any) -> str:
    """A value as part of a member's name (a directory name): `[1, 2]` -> `1_2`."""
    return re.sub(r"[^\w.-]+", "_", str(v).replace(" ", "")).strip("_") or "_"


def expand(config: str, study: str, sets: dict[str, Any], axes: dict[str, Any], tables: list[str] | None = None,
           source: str = "--sweep") -> Sweep:
    """The members of a sweep: the cross product of `axes` (axis -> list of values of that dotted
    key, or a mapping point name -> {dotted key: value}) on top of `sets`. Every member's config is
    validated before anything runs."""
    if not isinstance(tables or [], list):
        raise ConfigError(f"{source}: tables: expected a list of table names, e.g. [{tables}] (got {tables!r})")
    for t in tables or []:
        if t not in TABLES:
            raise ConfigError(f"{source}: tables: unknown table {t!r} (expected some of {list(TABLES)})")
    points = []
    for axis, vals in axes.items():
        if isinstance(vals, dict):  # named points
            bad = [k for k, v in vals.items() if not isinstance(v, dict)]
            if bad or not vals:
                raise ConfigError(f"{source}: sweep.{axis}: expected a list of values or a mapping of point names to "
                                  f"{{dotted.key: value}} overrides")
            points.append([(axis, name, dict(ov)) for name, ov in vals.items()])
        elif isinstance(vals, list) and vals:
            points.append([(axis, v, {axis: v}) for v in vals])
        else:
            raise ConfigError(f"{source}: sweep.{axis}: expected a non-empty list of values or a mapping of named points")
    setters: dict[str, str] = {}
    for axis in points:
        for key in {k for _, _, ov in axis for k in ov}:
            if key in NOT_SWEPT:
                raise ConfigError(f"{source}: sweep: {key} cannot be swept (the sweep names its members and study, and "
                                  f"a study has one output_dir); expected another key (--study names a --sweep's study)")
            if key in setters and setters[key] != axis[0][0]:
                raise ConfigError(f"{source}: sweep: {key} is set by two axes ({setters[key]} and {axis[0][0]}); expected "
                                  f"each key swept by one axis")
            setters[key] = axis[0][0]
    members, seen, k_max, out_dirs = [], set(), {}, {}
    for combo in itertools.product(*points):
        values = {axis: v for axis, v, _ in combo}
        name = "__".join(f"{axis}-{_value_name(v)}" for axis, v, _ in combo) or study
        if name in seen:
            raise ConfigError(f"{source}: sweep: two members are both named {name!r} (give the points distinct names)")
        seen.add(name)
        ov = dict(sets)
        for _, _, o in combo:
            ov.update(o)
        ov.update(study=study, name=name)
        try:
            cfg = load_config(config, ov)
        except ConfigError as e:
            raise ConfigError(f"{source}: member {name}: {e}") from None
        _check_arms_swept(cfg, setters, name, source)
        out_dirs.setdefault(cfg.output_dir, name)
        if len(out_dirs) > 1:  # the study's report and lock live in one runs/<study>/
            raise ConfigError(f"{source}: sweep: members differ in output_dir (" + ", ".join(
                f"{m}: {d}" for d, m in out_dirs.items()) + "); expected one output_dir for the whole study")
        ev = cfg.eval
        k_max.setdefault(max(ev.ks or [ev.n]), name)
        if len(k_max) > 1:  # the study's tables have one pass@k_max column
            raise ConfigError(f"{source}: sweep: members differ in the largest k (eval.n / eval.ks): "
                              + ", ".join(f"{m}: {k}" for k, m in k_max.items()) + " (sweep eval.n in separate studies)")
        members.append(Member(name, values, ov))
    return Sweep(study, config, members, list(tables or []))


def _check_arms_swept(cfg, keys: dict[str, str], member: str, source: str) -> None:
    """A swept key in the section of an arm that no enabled arm reads makes members that differ in
    nothing they compute: refused (sweeping the arm's `enabled` itself is fine)."""
    from pipeline.arms import arms, enabled_arms

    used = {a for a in enabled_arms(cfg)} | {r for a in enabled_arms(cfg) for r in arms()[a].reads}
    for key in keys:
        section, _, field_ = key.partition(".")
        if section in arms() and section not in used and field_ != "enabled":
            raise ConfigError(f"{source}: sweep: {key}: the {section} arm is not enabled in member {member}, so the "
                              f"value changes nothing it computes; expected {section}.enabled: true, or another key")


def load_sweep(path: str | Path, sets: dict[str, Any] | None = None) -> Sweep:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: sweep preset not found (expected a YAML file, e.g. configs/sweeps/algorithms.yaml)")
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{p}: {unknown[0]}: unknown key (expected {sorted(KEYS)})")
    study = data.get("study") or p.stem
    for key in ("config", "sweep"):
        if key not in data:
            raise ConfigError(f"{p}: {key}: required key is missing (expected a sweep preset: config, sweep; "
                              f"optional {sorted(KEYS - {'config', 'sweep'})})")
    base = data["config"]
    if not Path(base).is_file():
        raise ConfigError(f"{p}: config: {base!r} not found (expected an experiment preset, e.g. configs/tiny.yaml)")
    if not isinstance(data.get("set") or {}, dict):
        raise ConfigError(f"{p}: set: expected a mapping of dotted keys to values")
    if not isinstance(data["sweep"], dict) or not data["sweep"]:
        raise ConfigError(f"{p}: sweep: expected a mapping of axes (dotted key or point-set name) to values")
    notes = data.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError(f"{p}: notes: expected a list of sentences (printed under the algorithms table)")
    sw = expand(base, study, {**(data.get("set") or {}), **(sets or {})}, data["sweep"], data.get("tables") or [],
                source=str(p))
    sw.notes = notes
    return sw
