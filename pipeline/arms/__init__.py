"""The trained arms of a study, one file each, on one shape (as tasks/ has one file per family).

An arm is a training method that starts from the base. Each arm file declares its `ARM` (an `Arm`:
its config section's pydantic model, its input, its trainer module, its health metric and curves, its
colour, the verdicts it takes part in and the coverage it reports) and the trainer itself. Everything
else (ExperimentConfig's sections, compute.devices, plots, health, the report and the DAG) reads that
declaration from this registry; the DAG has one `Train(arm=...)` stage and one `Evaluate(model=...)`
for all of them, and the report compares every enabled arm with the base.

Arms are found by folder: every module in pipeline/arms/ that defines `ARM`, then every `*.py` in the
folders of the DVR_ARMS_PATH environment variable (os.pathsep-separated; stage subprocesses inherit
it). Two arms with one name are refused with a one-line error naming both files. A stage trains an arm
with `python -m pipeline.arms <module> ...` (pipeline/arms/__main__.py), which finds a module in those
folders too.

Adding an arm: one file defining `ARM = Arm(...)` and a `main()` run under `if __name__ == "__main__"`
(pipeline/arms/sft.py is the smallest), dropped into pipeline/arms/ or a DVR_ARMS_PATH folder.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

ENV = "DVR_ARMS_PATH"  # extra folders of arm files, os.pathsep-separated
NOT_ARMS = ("__init__", "__main__", "common")  # modules of pipeline/arms/ that are not arms


@dataclass(frozen=True)
class Arm:
    name: str  # the model's name in every table, plot and verdict; also its config section
    data: str  # its training input: "traces" (the filtered teacher traces) or "problems" (training prompts)
    title: str  # one line for the report
    config: type  # the pydantic model of its config section `<name>:` (ExperimentConfig reads it)
    module: str = ""  # `python -m pipeline.arms <module>` trains it (default: the module that declares ARM)
    # a config -> is the arm part of this study? (e.g. SFT needs a teacher)
    enabled: Callable = lambda cfg: True
    reads_teacher: bool = False  # loads the teacher model while training (its key then covers the teacher)
    # a config -> the config section whose pass_rate_filter settings pick its training problems (the
    # `<section>prompts` stage, pipeline/stages/rlprompts.py), or None for all the training problems
    prompt_filter: Callable = lambda cfg: None
    # a config -> None, or raises ValueError: checks across sections (e.g. a teacher), run when a config loads
    check: Callable | None = None
    # a config -> the TRL config class its trainer builds, with the section's `extra` on top (e.g.
    # "trl.GRPOConfig"): `extra` is checked against that class's fields when the config loads
    trl_config: Callable | None = None
    color: str | None = None  # its colour in every plot (None: one of plots' spare colours)
    # the study tables (pipeline/stages/study.py) that are about this arm: algorithms, sft_data_size
    study_tables: tuple[str, ...] = ()
    # the coverage list the report shows: problems it "gained" (solves, the base does not) or "lost"
    coverage: Literal["gained", "lost"] | None = None
    # health: the logged metric that says it learned (first found), and the curves drawn
    health_metrics: tuple[str, ...] = ("accuracy",)
    curves: tuple[str, ...] = ("accuracy", "loss", "learning_rate")
    # verdicts: (name, a, b, k_a, k_b) with k "max" for the study's k_max; a and b are model names
    verdicts: tuple[tuple[str, str, str, object, object], ...] = field(default_factory=tuple)
    # a control arm (e.g. RL with a random reward): the name of the arm it controls. The report sets that
    # arm's gains net of its best control, and a control's flat training curve makes no verdict inconclusive
    control_of: str | None = None
    # config sections besides its own that its trainer reads (e.g. a control reads the arm it controls):
    # they count in its training stage's identity
    reads: tuple[str, ...] = ()
    # a config -> the arm whose trained model this one starts from instead of the base (e.g. an SFT warm
    # start), or None: its training stage then follows that arm's and counts it in its identity
    starts_from: Callable = lambda cfg: None
    order: int = 100  # its place among the arms (config sections, tables, plots); then by folder and file name


class ArmError(ValueError):
    """A bad arm file or folder; the message is one line."""


_CACHE: dict[str, dict[str, Arm]] = {}


def arm_folders() -> list[Path]:
    """pipeline/arms/ itself, then the DVR_ARMS_PATH folders."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    for d in extra:
        if not d.is_dir():
            raise ArmError(f"{ENV}: {d} is not a directory (expected folders of arm files, separated by {os.pathsep!r})")
    return [Path(__file__).resolve().parent, *extra]


def add_arm_folders() -> None:
    """Make the DVR_ARMS_PATH folders importable (their files are top-level modules, by file name)."""
    for d in arm_folders()[1:]:
        if str(d) not in sys.path:
            sys.path.append(str(d))


def _modules() -> list[tuple[str, Path]]:
    own, *extra = arm_folders()
    found = [(f"pipeline.arms.{p.stem}", p) for p in sorted(own.glob("*.py")) if p.stem not in NOT_ARMS]
    return found + [(p.stem, p) for d in extra for p in sorted(d.glob("*.py")) if not p.stem.startswith("_")]


def arms() -> dict[str, Arm]:
    """Every arm found, by `order`, then pipeline/arms/ first and each folder by file name. Importing an arm's module is
    light: its trainer imports (torch, TRL) happen inside its functions, so the scheduler stays free of them."""
    key = os.environ.get(ENV, "")
    if key not in _CACHE:
        add_arm_folders()
        found: dict[str, Arm] = {}
        files: dict[str, Path] = {}
        for module, path in _modules():
            arm = getattr(importlib.import_module(module), "ARM", None)
            if not isinstance(arm, Arm):
                continue
            if arm.name in found:
                raise ArmError(f"arm {arm.name!r} is declared twice: {files[arm.name]} and {path} (expected one file per arm)")
            found[arm.name], files[arm.name] = replace(arm, module=arm.module or module), path
        _CACHE[key] = dict(sorted(found.items(), key=lambda kv: kv[1].order))  # stable: ties keep folder order
    return _CACHE[key]


def get_arm(name: str) -> Arm:
    try:
        return arms()[name]
    except KeyError:
        raise KeyError(f"unknown arm {name!r} (expected one of {sorted(arms())})") from None


def enabled_arms(cfg) -> list[str]:
    return [name for name, arm in arms().items() if arm.enabled(cfg)]


def is_arm(model: str) -> bool:
    return model in arms()


# The rows of a study: what the report and the analyses set against the base. An outside model (a published
# checkpoint, config `outside:`) is not an arm: it is evaluated, never trained here; but every table,
# analysis and verdict that has a row for an arm has one for it, so the code that loops over arms loops here.
def rows(cfg) -> list[str]:
    """Every enabled arm, then every outside model, by name."""
    return [*enabled_arms(cfg), *(o.name for o in cfg.outside)]


def is_outside(cfg, model: str) -> bool:
    return any(o.name == model for o in cfg.outside)


def row_verdicts(cfg) -> list[tuple[str, str, str, object, object]]:
    """(name, a, b, k_a, k_b) of every verdict (`Arm.verdicts`): each arm's own, then each outside model's
    against its `from` model, the RL arm's two: its pass@1 lead, and the from model's pass@k_max lead."""
    out = [v for arm in arms().values() for v in arm.verdicts]
    for o in cfg.outside:
        f = o.trained_from
        out += [(f"{o.name}_vs_{f}_pass1", o.name, f, 1, 1), (f"{f}_vs_{o.name}_kmax", f, o.name, "max", "max")]
    return out
