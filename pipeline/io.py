"""Small file helpers: atomic output directories and JSONL."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

DONE_MARKER = "_SUCCESS"


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Write a directory under a temporary name, then rename it into place with a _SUCCESS marker.

    A killed writer leaves only `<name>.tmp-<pid>`, which never looks complete and is cleared by
    the next attempt."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # left by a killed writer; a live one's stays
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / DONE_MARKER).write_text("")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: str) -> bool:
    """Whether the process that named a temporary directory still runs (same machine)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / DONE_MARKER).is_file()


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found (expected a JSONL file)")
    rows = []
    with open(p) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{i}: not valid JSON ({e.msg})") from None
    return rows
