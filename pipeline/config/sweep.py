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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, load_config

TABLES = ("algorithms", "training_length", "sft_data_size", "sharpening")
KEYS = {"study", "config", "set", "sweep", "tables", "notes"}


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
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "sweep" in data and "config" in data


def _value_name(v: Any) -> str:
    return str(v).replace("/", "_").replace(" ", "")


def expand(config: str, study: str, sets: dict[str, Any], axes: dict[str, Any], tables: list[str] | None = None,
           source: str = "--sweep") -> Sweep:
    """The members of a sweep: the cross product of `axes` (axis -> list of values of that dotted
    key, or a mapping point name -> {dotted key: value}) on top of `sets`. Every member's config is
    validated before anything runs."""
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
    members, seen, k_max = [], set(), {}
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
            ev = load_config(config, ov).eval
        except ConfigError as e:
            raise ConfigError(f"{source}: member {name}: {e}") from None
        k_max.setdefault(max(ev.ks or [ev.n]), name)
        if len(k_max) > 1:  # the study's tables have one pass@k_max column
            raise ConfigError(f"{source}: sweep: members differ in the largest k (eval.n / eval.ks): "
                              + ", ".join(f"{m}: {k}" for k, m in k_max.items()) + " (sweep eval.n in separate studies)")
        members.append(Member(name, values, ov))
    return Sweep(study, config, members, list(tables or []))


def load_sweep(path: str | Path, sets: dict[str, Any] | None = None) -> Sweep:
    p = Path(path)
    data = yaml.safe_load(p.read_text())
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{p}: {unknown[0]}: unknown key (expected {sorted(KEYS)})")
    study = data.get("study") or p.stem
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
