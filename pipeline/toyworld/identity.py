"""The toy world's identity: what makes the shipped checkpoints stale.

bootstrap_hash = sha256 of the bootstrap config (JSON) and of `code_identity` of the code that builds
the world. What counts: every top-level definition (function, class, assignment, any other statement)
of every module of this package and of tasks/toy_arith.py and tasks/base.py (the problem generator
and the train/test split), as its syntax tree without docstrings and without import statements.
What does not: file paths, how the definitions are split across files and in what order, imports,
comments, docstrings, this module's own definitions (NOT_HASHED: the hash does not shape the
checkpoints), and code outside these files (the evaluator, pipeline.config, the libraries, whose
versions the manifest records). So moving a function between files keeps the checkpoints; changing
what it does marks them stale.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core.identity import code_identity
from pipeline.toyworld.config import BootstrapConfig

REPO = Path(__file__).resolve().parents[2]
HASHED_SOURCES = ("pipeline/toyworld", "tasks/toy_arith.py", "tasks/base.py")
NOT_HASHED = ("REPO", "HASHED_SOURCES", "NOT_HASHED", "hashed_files", "bootstrap_hash")


def hashed_files(repo: Path) -> list[Path]:
    """The files of HASHED_SOURCES under `repo` (a directory counts by all its .py files)."""
    return [f for rel in HASHED_SOURCES
            for f in (sorted((repo / rel).rglob("*.py")) if (repo / rel).is_dir() else [repo / rel])]


def bootstrap_hash(cfg: BootstrapConfig) -> str:
    """sha256 over the bootstrap config and the code that turns it into checkpoints."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    h.update(code_identity(hashed_files(REPO), skip=NOT_HASHED).encode())
    return h.hexdigest()
