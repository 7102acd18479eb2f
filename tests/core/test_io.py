"""Atomic outputs: a killed writer never leaves a directory or file that looks complete; locks;
problem files."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.core.io import atomic_dir, atomic_file, is_complete, lock, read_problems, write_atomic, write_jsonl
from tasks import get_task


def test_failed_writer_leaves_nothing(tmp_path):
    final = tmp_path / "stage-abc"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_only_an_incomplete_temp(tmp_path):
    final = tmp_path / "stage-abc"
    code = ("import time, sys; from pipeline.core.io import atomic_dir\n"
            f"with atomic_dir({str(final)!r}) as t:\n"
            "    (t / 'a').write_text('x'); print('ready', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not final.exists() and not is_complete(final)
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0].name and not is_complete(leftovers[0])
    with atomic_dir(final) as tmp:  # the rerun completes
        (tmp / "a").write_text("y")
    assert is_complete(final) and (final / "a").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["stage-abc"]  # the stale temp was cleared


def test_rewrite_replaces_whole_directory(tmp_path):
    final = tmp_path / "d"
    with atomic_dir(final) as t:
        (t / "old").write_text("1")
    with atomic_dir(final) as t:
        (t / "new").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["_SUCCESS", "new"]


def test_atomic_file_is_whole_or_absent_and_clears_a_killed_writers_temp(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".out.json.tmp-4194305").write_text("half")  # a killed writer's (no such pid)
    write_atomic(path, "{}")
    write_atomic(path, b"[1]")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and path.read_text() == "[1]"


def test_lock_is_exclusive_until_released(tmp_path):
    path = tmp_path / "locks" / "a.lock"
    with lock(path):
        with pytest.raises(BlockingIOError):  # a second open file of the same name: another process
            with lock(path, wait=False):
                pass
    with lock(path, wait=False) as f:
        f.write("held")
    assert path.read_text() == "held"  # the file stays: removing a held one would split the lock


def test_read_problems_round_trips_and_names_the_bad_line(tmp_path):
    probs = get_task("toy_arith").problems("test", 3, seed=0, levels=[1])
    write_jsonl(tmp_path / "test.jsonl", (p.to_dict() for p in probs))
    assert read_problems(tmp_path / "test.jsonl") == probs
    write_jsonl(tmp_path / "bad.jsonl", [probs[0].to_dict(), {"id": "x"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a Problem record \(.*missing"):
        read_problems(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no problems \(expected at least one JSONL row\)$"):
        read_problems(tmp_path / "empty.jsonl")


# ---- confinement: no delete or replace outside output_dir ------------------------------------------
def test_atomic_writes_refuse_a_path_outside_their_root(tmp_path):
    from pipeline.core.io import UnsafePath, atomic_dir, atomic_file, remove_tree

    root, outside = tmp_path / "runs", tmp_path / "project"
    (outside / "report").mkdir(parents=True)
    (outside / "report" / "mine.txt").write_text("the user's")
    for target in (root / ".." / "project" / "report", root, outside / "report"):
        with pytest.raises(UnsafePath, match="outside"):
            with atomic_dir(target, root=root):
                pass
        if target != root:  # (a file inside root itself is fine)
            with pytest.raises(UnsafePath, match="outside"):
                with atomic_file(target / "f.txt", root=root):
                    pass
        with pytest.raises(UnsafePath, match="outside"):
            remove_tree(target, root=root)
    assert (outside / "report" / "mine.txt").read_text() == "the user's"
    with atomic_dir(root / "study" / "stage-1", root=root) as tmp:  # inside: as before
        (tmp / "x").write_text("1")
    assert (root / "study" / "stage-1" / "x").read_text() == "1"


def test_atomic_dir_never_replaces_a_directory_it_did_not_write(tmp_path):
    from pipeline.core.io import UnsafePath, atomic_dir

    theirs = tmp_path / "report"
    theirs.mkdir()
    (theirs / "notes.md").write_text("keep me")
    with pytest.raises(UnsafePath, match="was not written by this tool"):
        with atomic_dir(theirs):
            pass
    assert (theirs / "notes.md").read_text() == "keep me" and not list(tmp_path.glob("report.tmp-*"))
    for i in range(2):  # one it wrote is replaced, as before
        with atomic_dir(tmp_path / "ours") as tmp:
            (tmp / "n").write_text(str(i))
    assert (tmp_path / "ours" / "n").read_text() == "1"
