"""The fields of TRL's config classes (trl.GRPOConfig, trl.SFTConfig, ... and transformers'
TrainingArguments below them), read from their source files without importing them: importing TRL
takes seconds to tens of seconds (torch), and a config loads in the scheduler, which must stay light.

`check_extra("rl", "trl.GRPOConfig", {...})` refuses a key the class does not have and a value its
annotation rules out (an enum such as SchedulerType or OptimizerNames, a Literal, a bool or a number),
so `rl.extra: {lr_scheduler_type: cosin}` is one line at load instead of a failure when training starts.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# names a package re-exports lazily (transformers' __init__ builds them at run time): where they live
REEXPORTS = {"transformers.TrainingArguments": "transformers.training_args"}
# trl's lazy top-level names: trl.<Class> lives in trl/trainer/<module>.py
TRL_MODULES = {"GRPOConfig": "grpo_config", "RLOOConfig": "rloo_config", "SFTConfig": "sft_config",
               "DistillationConfig": "distillation_config", "DPOConfig": "dpo_config"}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    annotation: str  # its source text, e.g. "SchedulerType | str"
    choices: tuple | None  # the values an enum or Literal in the annotation allows (None: any of its type)
    kinds: frozenset  # the plain types it names: {"int", "float", "bool", "str", "dict", "list", "None"}


def _module_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level spec does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[ast.Module, dict[str, str]] | None:
    """A module's tree and where each name it imports comes from ({name: "pkg.mod.Name"})."""
    path = _module_file(module)
    if path is None:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    imports = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            src = node.module or ""
            if node.level:
                parts = package.split(".")
                src = ".".join(parts[: len(parts) - node.level + 1] + ([src] if src else []))
            for a in node.names:
                imports[a.asname or a.name] = f"{src}.{a.name}"
    return tree, imports


def _find_class(qualname: str) -> tuple[ast.ClassDef, str] | None:
    """The class definition of "pkg.mod.Class" (following a module's imports and REEXPORTS)."""
    module, name = qualname.rsplit(".", 1)
    module = REEXPORTS.get(qualname, module)
    if module == "trl" and name in TRL_MODULES:
        module = f"trl.trainer.{TRL_MODULES[name]}"
    parsed = _parsed(module)
    if parsed is None:
        return None
    tree, imports = parsed
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, module
    return _find_class(imports[name]) if name in imports and imports[name] != qualname else None


def _enum_values(cls: ast.ClassDef) -> tuple:
    return tuple(n.value.value for n in cls.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant))


def _spec(node: ast.AnnAssign, module: str) -> FieldSpec:
    ann = node.annotation
    choices: list = []
    kinds: set[str] = set()
    open_ended = False
    _, imports = _parsed(module)
    for part in ast.walk(ann):
        if isinstance(part, ast.Subscript) and isinstance(part.value, ast.Name) and part.value.id == "Literal":
            elts = part.slice.elts if isinstance(part.slice, ast.Tuple) else [part.slice]
            choices += [e.value for e in elts if isinstance(e, ast.Constant)]
        elif isinstance(part, ast.Name) and part.id in ("int", "float", "bool", "str", "dict", "list", "None"):
            kinds.add(part.id)
        elif isinstance(part, ast.Constant) and part.value is None:
            kinds.add("None")
        elif isinstance(part, ast.Name) and part.id not in ("Literal", "Optional", "Union", "Any"):
            found = _find_class(imports.get(part.id, f"{module}.{part.id}"))
            if found and any(getattr(b, "id", "").endswith("Enum") for b in found[0].bases):
                choices += list(_enum_values(found[0]))
            elif part.id not in ("dict", "list", "tuple"):
                open_ended = True
        elif isinstance(part, ast.Name) and part.id == "Any":
            open_ended = True
    if choices and "str" in kinds:  # `SchedulerType | str`: the string must name a member
        kinds.discard("str")
    return FieldSpec(node.target.id, ast.unparse(ann), tuple(choices) if choices and not open_ended else None,
                     frozenset(kinds) if not open_ended else frozenset())


@lru_cache(maxsize=None)
def config_fields(qualname: str) -> dict[str, FieldSpec] | None:
    """Every dataclass field of the class and its bases (None if its source cannot be found)."""
    found = _find_class(qualname)
    if found is None:
        return None
    cls, module = found
    out: dict[str, FieldSpec] = {}
    _, imports = _parsed(module)
    for base in cls.bases:
        if isinstance(base, ast.Name):
            inherited = config_fields(imports.get(base.id, f"{module}.{base.id}"))
            out.update(inherited or {})
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = _spec(node, module)
    return out


def _type_ok(value, kinds: frozenset) -> bool:
    if not kinds:
        return True
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, dict):
        return "dict" in kinds
    if isinstance(value, list):
        return bool(kinds & {"list", "tuple"})
    return True


def extra_error(section: str, qualname: str, extra: dict) -> str | None:
    """Why `<section>.extra` would not make a `qualname` (an unknown key, a value outside its choices,
    a value of another type), or None."""
    fields = config_fields(qualname)
    if fields is None:  # TRL moved its files: the trainer's own check (pipeline.arms.common.build_args) still runs
        return None
    short = qualname.rsplit(".", 1)[-1]
    for key, value in extra.items():
        spec = fields.get(key)
        if spec is None:
            return f"{section}.extra.{key}: unknown key (expected a field of trl.{short})"
        if spec.choices is not None:
            if value not in spec.choices and not (spec.kinds and _type_ok(value, spec.kinds)):
                return (f"{section}.extra.{key}: {value!r} is not one of trl.{short}'s values "
                        f"(expected one of {list(spec.choices)})")
        elif spec.kinds and not _type_ok(value, spec.kinds):
            return f"{section}.extra.{key}: expected {spec.annotation} (trl.{short}), got {value!r}"
    return None
