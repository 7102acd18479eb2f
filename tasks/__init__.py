"""Registry of verifiable tasks (lighteval-style): `get_task(name, **options)`.

Registered families are looked up first; any other name that reasoning-gym knows becomes a
reasoning-gym task. `verify(problem, completion)` dispatches on `problem.task`.
"""
from __future__ import annotations

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

    _load_families()
    return sorted(set(REGISTRY) | set(gym_names()))


def get_task(name: str, **options) -> Task:
    _load_families()
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


def _load_families() -> None:
    # importing the modules registers them
    import tasks.knights_knaves  # noqa: F401
    import tasks.math  # noqa: F401
    import tasks.toy_arith  # noqa: F401


__all__ = ["Problem", "Task", "REGISTRY", "register", "get_task", "task_names", "task_for", "verify"]


def build_tasks(specs) -> dict[str, Task]:
    """One configured Task instance per spec (objects with .name and .options), keyed by task name."""
    return {s.name: get_task(s.name, **dict(s.options)) for s in specs}


def problems_for(specs, split: str) -> list[Problem]:
    """The problems of `split` for every task spec (.train_size/.test_size/.levels/.seed), in order."""
    tasks = build_tasks(specs)
    out: list[Problem] = []
    for s in specs:
        n = s.train_size if split == "train" else s.test_size
        out += tasks[s.name].problems(split, n, seed=s.seed, levels=s.levels)
    return out
