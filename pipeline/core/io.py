"""The one place for file mechanics: atomic directories and files (`atomic_dir`, `atomic_file`,
`write_atomic`), exclusive locks (`lock`, `stage_lock`), JSONL and problem files (`read_jsonl`,
`read_problems`)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from tasks.base import Problem

DONE_MARKER = "_SUCCESS"


class UnsafePath(ValueError):
    """A delete or replace outside the directory it is confined to, or of a directory this tool did
    not write: refused, one line."""


def confined(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """`path`, after checking that it lies strictly inside `root` (by name: `..` cannot climb out; a
    symlink the user made inside root is theirs). root None: no confinement."""
    path = Path(path)
    if root is not None:
        p, r = os.path.abspath(path), os.path.abspath(root)
        if p == r or not p.startswith(r.rstrip(os.sep) + os.sep):
            raise UnsafePath(f"{path}: outside {root} (refusing to write or remove it; expected a path inside "
                             f"output_dir)")
    return path


def remove_tree(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """shutil.rmtree, if present, of a path inside `root` (confined)."""
    shutil.rmtree(confined(path, root), ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Write a directory under a temporary name, then rename it into place with a _SUCCESS marker.

    A killed writer leaves only `<name>.tmp-<pid>`, which never looks complete and is cleared by
    the next attempt. An existing `final` is replaced only if this tool wrote it (it has the marker),
    and with `root` only inside root (UnsafePath otherwise, before anything is touched)."""
    final = confined(final, root)
    if final.exists() and not is_complete(final):
        raise UnsafePath(f"{final}: exists and was not written by this tool (no {DONE_MARKER}); refusing to replace "
                         f"it (expected a new output directory, or move that one away)")
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
def lock(path: str | os.PathLike, wait: bool = True, shared: bool = False) -> Iterator[IO[str]]:
    """An exclusive (or, with shared=True, a shared) flock on `path` (created with its folder), released
    by the kernel if the holder dies; yields the open file (mode a+). wait=False raises BlockingIOError
    at once if it is held.
    The file is never removed: removing one while held would let a third process lock a different
    file of the same name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        yield f


@contextmanager
def stage_lock(run_dir: str | os.PathLike, name: str) -> Iterator[None]:
    """An exclusive, blocking lock for one stage directory: <run_dir>/.locks/<name>.lock."""
    with lock(Path(run_dir) / ".locks" / f"{name}.lock"):
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


@contextmanager
def atomic_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (`.<name>.tmp-<pid>`) to write; it is renamed onto
    `path` when the block ends and removed if it raises: the file is whole or absent. A killed
    writer's temporary is cleared by the next write. With `root`, `path` must lie inside it."""
    path = confined(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if not pid_alive(stale.name.rsplit("-", 1)[-1]):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes, root: str | os.PathLike | None = None) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically (atomic_file)."""
    with atomic_file(path, root) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """write_jsonl, atomically (atomic_file)."""
    with atomic_file(path) as tmp:
        return write_jsonl(tmp, rows)


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


def read_problems(path: str | os.PathLike) -> list[Problem]:
    """The problems of a JSONL file of Problem.to_dict() rows (a Problems stage's train.jsonl or
    test.jsonl): one-line errors for a missing or empty file, bad JSON, or a row that is no Problem."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no problems (expected at least one JSONL row)")
    out = []
    for i, row in enumerate(rows, 1):
        try:
            out.append(Problem.from_dict(row))
        except TypeError as e:
            raise ValueError(f"{path}:{i}: not a Problem record ({e})") from None
    return out
