"""Registry of verifiable tasks (lighteval-style): `get_task(name, **options)`.

A family is a module of this folder that registers a factory with `@register("name")`; the folder
is scanned, so a new family is one new file. Registered families are looked up first; any other
name that reasoning-gym knows becomes a reasoning-gym task. `verify(problem, completion)`
dispatches on `problem.task`.
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tasks.base import Problem, Task

REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str):
    """Register a task factory under `name`; a second factory for one name is refused."""
    def deco(factory):
        old = REGISTRY.get(name)
        if old is not None and _origin(old) != _origin(factory):
            raise ValueError(f"tasks: task name {name!r} is registered twice: by {_origin(old)} and {_origin(factory)} "
                             f"(give one of them another name)")
        REGISTRY[name] = factory
        return factory

    return deco


def task_names() -> list[str]:
    from tasks.gym import gym_names

    _load_families(everything=True)
    return sorted(set(REGISTRY) | set(gym_names()))


def is_task(name: str) -> bool:
    """A registered task or a reasoning-gym dataset name (reasoning-gym, slow to import, is only
    loaded for a name that is not registered)."""
    _load_families()
    if name in REGISTRY:
        return True
    _load_families(everything=True)
    if name in REGISTRY:
        return True
    from tasks.gym import gym_names

    return name in gym_names()


def get_task(name: str, **options) -> Task:
    _load_families()
    if name not in REGISTRY:
        _load_families(everything=True)
    if name in REGISTRY:
        return REGISTRY[name](**options)
    from tasks.gym import ReasoningGymTask, gym_names

    if name in gym_names():
        return ReasoningGymTask(name, **options)
    raise KeyError(f"unknown task {name!r}; known: registered {sorted(REGISTRY)} or any reasoning-gym dataset")


@lru_cache(maxsize=None)
def _cached(name: str, frozen_options: tuple) -> Task:
    return get_task(name, **dict(frozen_options))


def task_for(problem: Problem, **options) -> Task:
    return _cached(problem.task, tuple(sorted(options.items())))


def verify(problem: Problem, completion: str) -> bool:
    return task_for(problem).verify(problem, completion)


SLOW_IMPORTS = ("reasoning_gym",)  # 0.7 s of an unchanged rerun's 2.6 s


def _origin(factory) -> str:
    return f"{factory.__module__}.{getattr(factory, '__qualname__', factory)}"


def _load_families(everything: bool = False) -> None:
    """Import this folder's modules (importing one registers its families); those that import
    reasoning-gym, directly or through another module here, only when `everything` (a name not
    found among the others)."""
    fast, slow = _family_modules(tuple(__path__))
    for module in fast + (slow if everything else ()):
        importlib.import_module(module)


@lru_cache(maxsize=None)
def _family_modules(folders: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The modules of the package folders, split by whether importing them imports reasoning-gym
    (read from their top-level import statements, without importing them)."""
    imports: dict[str, set[str]] = {}
    for folder in folders:
        for f in sorted(Path(folder).glob("*.py")):
            if f.stem != "__init__":
                imports[f"{__name__}.{f.stem}"] = _top_level_imports(f)

    def slow(module: str, seen: frozenset = frozenset()) -> bool:
        return any(m.split(".")[0] in SLOW_IMPORTS or (m in imports and m not in seen and slow(m, seen | {module}))
                   for m in imports[module])

    split = {m: slow(m) for m in imports}
    return tuple(m for m in imports if not split[m]), tuple(m for m in imports if split[m])


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


__all__ = ["Problem", "Task", "REGISTRY", "register", "get_task", "is_task", "task_names", "task_for", "verify", "build_tasks",
           "problems_for", "spec_label"]


def spec_label(spec) -> str:
    """A task spec's identity in a study: its `label`, else its task name. Two specs of one family
    (GSM8K and MATH-500, both `math`) differ by label."""
    return getattr(spec, "label", None) or spec.name


def build_tasks(specs) -> dict[str, Task]:
    """One configured Task instance per spec (objects with .name, .options and optionally
    .label), keyed by the spec's label: two specs of the same family stay two tasks."""
    out: dict[str, Task] = {}
    for s in specs:
        label = spec_label(s)
        if label in out:
            raise ValueError(f"tasks: two specs are labelled {label!r} (give each a distinct `label`, "
                             f"e.g. gsm8k and math500)")
        out[label] = get_task(s.name, **dict(s.options))
    return out


def problems_for(specs, split: str) -> list[Problem]:
    """The problems of `split` for every task spec (.train_size/.test_size/.levels/.seed), in order.

    A problem's `task` is its spec's label, and a labelled spec prefixes its problem ids with the
    label, so ids stay unique across specs (a duplicate is an error, never a silent merge)."""
    tasks = build_tasks(specs)
    out: list[Problem] = []
    seen: set[str] = set()
    for s in specs:
        label = spec_label(s)
        n = s.train_size if split == "train" else s.test_size
        if n == 0:  # an evaluation-only spec contributes no training problems
            continue
        for p in tasks[label].problems(split, n, seed=s.seed, levels=s.levels):
            if label != p.task:
                p = replace(p, id=f"{label}-{p.id}", task=label)
            if p.id in seen:
                raise ValueError(f"tasks: problem id {p.id!r} comes from two specs (give them distinct labels)")
            seen.add(p.id)
            out.append(p)
    return out
