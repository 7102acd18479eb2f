"""What a run would do, before it does it (pipeline.run's --dry-run, --force, --clean, --list-tasks).

- `dag(roots)`: every task of the Luigi DAG below the roots, upstream first, each once (by task id).
- `dry_run`: which stages are cached (Luigi's `complete()`, with the wall time their stage.json
  records) and which would run; it reads only, so no runs/ directory and no MLflow store appear.
- `forced`: the tasks a `--force STAGE` reruns: that stage and every task that depends on it, as
  Luigi would rerun them once their input changes; `set_aside` moves their outputs out of the way.
- `stale`: the stage directories of a study that the current config no longer refers to.
- `task_listing`: the registered tasks and their options.
"""
from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path

import luigi

from pipeline.stages.base import WORK_SUFFIXES, stage_info

ASIDE = ".forced"  # a forced stage's previous output, kept until the rerun completes
KEPT = {"logs", "members", "report", ".locks"}  # run-directory entries that are not stage directories


def dag(roots: list[luigi.Task]) -> list[luigi.Task]:
    """Every task below `roots` (included), upstream before downstream, each once."""
    seen: dict[str, luigi.Task] = {}

    def visit(t):
        if t.task_id in seen:
            return
        for d in luigi.task.flatten(t.requires()):
            visit(d)
        seen[t.task_id] = t

    for r in roots:
        visit(r)
    return list(seen.values())


def name_of(t: luigi.Task) -> str:
    """The name a user gives --force: the stage's run name (`rl`, `eval-base`, `report`)."""
    return getattr(t, "run_name", None) or t.get_task_family().lower()


def dry_run(roots: list[luigi.Task], redo: set[str] = frozenset()) -> tuple[list[str], int]:
    """Lines saying, stage by stage, cached (with its last wall time) or would run; and how many
    would run. `redo`: the task ids a --force reruns."""
    lines, todo = [], 0
    for t in dag(roots):
        out = Path(t.output().path)
        if t.task_id not in redo and t.complete():
            secs = stage_info(out).get("seconds")
            took = f" (took {_duration(secs)})" if isinstance(secs, (int, float)) else ""
            lines.append(f"  cached     {t.task_family:<24} {out}{took}")
        else:
            todo += 1
            lines.append(f"  would run  {t.task_family:<24} {out}")
    return lines, todo


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:.0f} s"


def forced(roots: list[luigi.Task], names: list[str]) -> list[luigi.Task]:
    """The named stages and every task downstream of them, upstream first. A name matches a
    stage's run name (`rl`, `eval-base`) or its Luigi family (`Train-rl`, `Evaluate-base`), in any case."""
    tasks = dag(roots)
    known = {n.lower() for t in tasks for n in (name_of(t), t.task_family)}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ValueError(f"--force: unknown stage(s) {unknown}; this config's stages: "
                         f"{sorted({name_of(t) for t in tasks})}")
    wanted = {n.lower() for n in names}
    hit: set[str] = set()
    for t in tasks:  # upstream first, so a dependency is decided before its dependents
        if {name_of(t).lower(), t.task_family.lower()} & wanted or any(
                d.task_id in hit for d in luigi.task.flatten(t.requires())):
            hit.add(t.task_id)
    return [t for t in tasks if t.task_id in hit]


def set_aside(tasks: list[luigi.Task]) -> list[Path]:
    """Move each complete task's output to `<dir>.forced` (replacing an older one), so Luigi sees it
    incomplete and reruns it; returns where they went (removed by `drop` once the rerun completes)."""
    moved = []
    for t in tasks:
        out = Path(t.output().path)
        if out.is_dir():
            aside = out.with_name(out.name + ASIDE)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(out, aside)
            moved.append(aside)
    return moved


def drop(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def stale(roots: list[luigi.Task], run_dirs: list[Path], members: set[str]) -> list[Path]:
    """Entries of the study directories that no task of the current DAG writes: stage directories of
    older configs, their resume points (.shards, .ckpt), forced outputs set aside, and the member
    directories of sweep members no longer in the study."""
    used = {Path(t.output().path).name for t in dag(roots)}
    out = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            continue
        for p in sorted(run_dir.iterdir()):
            base = p.name
            for suffix in (*WORK_SUFFIXES, ASIDE):
                base = base.removesuffix(suffix)
            if p.is_dir() and p.name not in KEPT and (base not in used or base != p.name and p.name.endswith(ASIDE)):
                out.append(p)
        m = run_dir / "members"
        if m.is_dir():
            out += [p for p in sorted(m.iterdir()) if p.is_dir() and p.name not in members]
    return out


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def task_listing() -> list[str]:
    """One line per task: its name, what it is and the options it takes (beside the spec's own fields)."""
    from tasks import REGISTRY, task_names
    from tasks.gym import ReasoningGymTask

    lines = []
    for name in task_names():
        factory = REGISTRY.get(name)
        if factory is None:
            lines.append(f"{name}: reasoning-gym dataset; options: {', '.join(ReasoningGymTask.OPTIONS)}")
            continue
        opts = getattr(factory, "OPTIONS", None)
        if opts is None:
            params = inspect.signature(factory).parameters.values()
            opts = [p.name + ("" if p.default is inspect.Parameter.empty else f"={p.default!r}")
                    for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        lines.append(f"{name}: {doc}{'; ' if doc else ''}options: {', '.join(opts) or 'none'}")
    return lines
