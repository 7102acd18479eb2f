"""Atomic outputs: a killed writer never leaves a directory that looks complete."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.core.io import atomic_dir, is_complete


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
