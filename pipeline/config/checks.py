"""Checks across a loaded config that no single field can make, run by `parse_config` after the schema
accepts it, so that every mistake they catch is one line before the first stage rather than a failure
deep in one: the task specs (their options, levels and data sizes), the arms' `extra` against TRL's own
config classes, the sampling lengths against the models' contexts, that the study compares something,
and that its directories stay inside output_dir. Each raises ValueError("<field>: <what was expected>").
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
_TASKS: dict[tuple, Any] = {}  # configured task instances, by spec and data files' times: a loaded file is read once


def check_experiment(cfg) -> None:
    check_paths(cfg)
    check_tasks(cfg)
    check_compares_something(cfg)
    check_extras(cfg)
    check_contexts(cfg)


def check_paths(cfg) -> None:
    """The study's directories (runs/<study>/, a member's members/<name>/) lie inside output_dir, by
    their names alone (a symlink the user made inside output_dir is theirs to make)."""
    root = os.path.abspath(cfg.output_dir)
    for what, d in (("study" if cfg.study else "name", cfg.run_dir), ("name", cfg.member_dir)):
        path = os.path.abspath(d)
        if path == root or not path.startswith(root.rstrip(os.sep) + os.sep):
            raise ValueError(f"{what}: {d} is not inside output_dir {cfg.output_dir!r} (expected a plain name)")


def _task(spec):
    from tasks import get_task

    files = tuple(sorted((str(v), os.stat(v).st_mtime_ns) for v in spec.options.values()
                         if isinstance(v, str) and os.path.isfile(v)))
    key = (spec.name, json.dumps(spec.options, sort_keys=True, default=str), files)
    if key not in _TASKS:
        _TASKS[key] = get_task(spec.name, **dict(spec.options))
    return _TASKS[key]


def check_tasks(cfg) -> None:
    """Each task spec: its options make the task (an unknown option is refused by every family), and
    the task's own cheap checks pass (levels in range, a data source for each split asked for, enough
    problems in a local file: Task.check_spec)."""
    for i, spec in enumerate(cfg.tasks):
        try:
            task = _task(spec)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"tasks.{i}.options: {e}") from None
        try:
            task.check_spec({"train": spec.train_size, "test": spec.test_size}, spec.levels)
        except ValueError as e:
            raise ValueError(f"tasks.{i}.{e}") from None


def compares_something(cfg) -> bool:
    """Whether the study has a model to set against the base: an enabled arm or an outside model (an
    evaluation-only study of published checkpoints). The one predicate for "this study measures something"."""
    from pipeline.arms import enabled_arms

    return bool(enabled_arms(cfg)) or bool(cfg.outside)


def check_compares_something(cfg) -> None:
    if not compares_something(cfg):
        from pipeline.arms import arms

        why = ", ".join(f"{n}.enabled: {getattr(cfg, n).enabled}" for n in arms() if hasattr(getattr(cfg, n), "enabled"))
        raise ValueError(f"no arm is enabled ({why}; teacher_model: {cfg.teacher_model}, which sft and distill need), "
                         f"so the study would "
                         f"evaluate the base alone; expected at least one arm enabled, or an outside: model to evaluate")


def check_extras(cfg) -> None:
    """Each enabled arm's `extra` against the TRL config class its trainer builds (Arm.trl_config)."""
    from pipeline.arms import arms, enabled_arms
    from pipeline.config.trl_fields import extra_error

    for name in enabled_arms(cfg):
        arm = arms()[name]
        extra = getattr(getattr(cfg, name), "extra", None)
        if extra and arm.trl_config is not None:
            why = extra_error(name, arm.trl_config(cfg), extra)
            if why:
                raise ValueError(why)


def model_context(ref: str | None) -> tuple[int, str] | None:
    """(context length, the config key it came from) of a local model directory, or None (a hub id,
    a GGUF file, a config without one)."""
    if not ref or not (Path(ref).expanduser() / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(ref).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for d in (data, data.get("text_config") or {}):
        for k in CONTEXT_KEYS:
            if isinstance(d.get(k), int) and d[k] > 0:
                return d[k], k
    return None


def check_contexts(cfg) -> None:
    """eval.max_tokens within the context of every model evaluated (the base, and so its arms; the
    teacher when evaluated), and traces.generation.max_tokens within the teacher's, where the model's
    config is local. (With the prompt they may still not fit: the evaluator and the traces stage
    measure every prompt before sampling.)"""
    from pipeline.arms import arms, enabled_arms

    checks = [("eval.max_tokens", cfg.eval.max_tokens, "base_model")]
    if cfg.teacher_model and cfg.eval.include_teacher:
        checks.append(("eval.max_tokens", cfg.eval.max_tokens, "teacher_model"))
    if cfg.teacher_model and any(arms()[a].data == "traces" for a in enabled_arms(cfg)):
        checks.append(("traces.generation.max_tokens", cfg.traces.generation.max_tokens, "teacher_model"))
    for field, tokens, which in checks:
        ctx = model_context(getattr(cfg, which))
        if ctx and tokens > ctx[0]:
            raise ValueError(f"{field}: {tokens} tokens exceed {which} {getattr(cfg, which)}'s context of {ctx[0]} "
                             f"({ctx[1]}); expected at most {ctx[0]} minus the longest prompt")
