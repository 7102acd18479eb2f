"""Small file helpers: atomic output directories and JSONL."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
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
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
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


def pid_alive(pid: str) -> bool:
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


class Terminated(BaseException):
    """SIGTERM, raised as an exception so that `finally` blocks and run bookkeeping still happen."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (only possible in the main thread; elsewhere a no-op)."""
    def handler(signum, frame):
        raise Terminated(f"received signal {signum} (SIGTERM)")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stage_lock(run_dir: str | os.PathLike, name: str) -> Iterator[None]:
    """An exclusive, blocking file lock for one stage directory (released by the kernel if the
    holder dies). Lock files stay in <run_dir>/.locks: removing one while held would let a third
    process lock a different file of the same name."""
    path = Path(run_dir) / ".locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / DONE_MARKER).is_file()


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """write_jsonl under a temporary name, renamed into place: the file is whole or absent."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    n = write_jsonl(tmp, rows)
    os.replace(tmp, path)
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found (expected a JSONL file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); expected UTF-8 "
                         f"JSONL") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not valid JSON ({e.msg})") from None
    return rows
