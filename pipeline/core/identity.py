"""What a stage's identity is made of beyond the text of its config: the version of the code that
makes problems and checks answers (the content of the models it reads is pipeline.core.models'
`model_fingerprint`).

A change to a task's answer checking must invalidate the evaluations that used it, so a task counts
by a fingerprint of its code and of the checker libraries it calls.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
from functools import lru_cache
from pathlib import Path

# libraries whose behaviour decides "is this answer correct"
CHECKER_PACKAGES = ("math-verify", "reasoning-gym", "sympy", "latex2sympy2_extended")


def code_fingerprint(source: str) -> str:
    """The module's AST without docstrings: edits to comments, docstrings or layout do not count;
    any change to what the code does does. A task's `check_spec` (the checks a config gets when it
    loads, tasks/base.py) decides no problem and no verdict, so it does not count either."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(getattr(node, "body", None), list):
            node.body = [n for n in node.body if not (isinstance(n, ast.FunctionDef) and n.name == "check_spec")]
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def definitions(source: str) -> list[tuple[str, str]]:
    """(name, AST dump) of each top-level statement of a module, with docstrings, import statements (at
    any depth) and classes' `check_spec` methods removed; the name is what the statement defines ("" for none)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # a task's check_spec shapes no problem (code_fingerprint)
            node.body = [n for n in node.body if not (isinstance(n, ast.FunctionDef) and n.name == "check_spec")] or [ast.Pass()]
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            if (field == "body" and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body = body[1:]
            body = [s for s in body if not isinstance(s, (ast.Import, ast.ImportFrom))]
            setattr(node, field, body or ([ast.Pass()] if field == "body" else []))
    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Pass):
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        name = getattr(stmt, "name", None) or ",".join(t.id for t in targets if isinstance(t, ast.Name))
        out.append((name, ast.dump(stmt, annotate_fields=False, include_attributes=False)))
    return out


def code_identity(files, skip: tuple[str, ...] = ()) -> str:
    """sha256 of the sorted (name, AST dump) definitions of all `files` except those named in `skip`:
    independent of the files' paths, of how the definitions are split across them and of their
    order, imports, comments and docstrings; any change to what a definition does changes it."""
    defs = sorted(d for f in files for d in definitions(Path(f).read_text()) if d[0] not in skip)
    return hashlib.sha256("\n".join(f"{n}\t{dump}" for n, dump in defs).encode()).hexdigest()


@lru_cache(maxsize=None)
def _module_fingerprint(module_file: str) -> str:
    return hashlib.sha256(code_fingerprint(Path(module_file).read_text()).encode()).hexdigest()


def task_version(task) -> str:
    """A fingerprint of what decides a task's problems and verdicts: the code of every module of
    the task's class hierarchy (tasks/*.py), the bounded checker, and the checker libraries' versions."""
    import tasks.bounded

    files = {inspect.getsourcefile(c) for c in type(task).__mro__ if c.__module__.startswith("tasks")}
    files.add(inspect.getsourcefile(tasks.bounded))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{Path(f).name}:{_module_fingerprint(f)}\n".encode())
    for pkg in CHECKER_PACKAGES:
        try:
            h.update(f"{pkg}=={importlib.metadata.version(pkg)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]
