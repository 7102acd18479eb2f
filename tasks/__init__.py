"""Registry of verifiable tasks (lighteval-style): `get_task(name, **options)`.

Registered families are looked up first; any other name that reasoning-gym knows becomes a
reasoning-gym task. `verify(problem, completion)` dispatches on `problem.task`.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Callable

from tasks.base import Problem, Task

REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str):
    def deco(factory):
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


def _load_families(everything: bool = False) -> None:
    # importing the modules registers them; the families built on reasoning-gym (slow to import:
    # 0.7 s of an unchanged rerun's 2.6 s) only when a name is not found among the others
    import tasks.math  # noqa: F401
    import tasks.toy_arith  # noqa: F401

    if everything:
        import tasks.knights_knaves  # noqa: F401


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
