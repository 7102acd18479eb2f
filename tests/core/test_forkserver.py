"""The fork server (pipeline/core/forkserver.py): a stage forked from it behaves as `python -m` started
by the caller: its arguments, environment, working directory, output, exit status and signals; a
server that is gone or never started leaves the caller to start the process itself; the server and
what it forked end with the invocation."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.core import forkserver

MODULE = textwrap.dedent("""
    import os, sys, time
    print("argv", sys.argv[1:], "name", __name__, flush=True)
    print("env", os.environ.get("DVR_TEST_VALUE"), "cwd", os.getcwd(), flush=True)
    print("parent", os.getppid(), flush=True)
    if "sleep" in sys.argv:
        time.sleep(60)
    if "fail" in sys.argv:
        raise ValueError("a stage's error")
    sys.exit(int(sys.argv[1]))
""")


@pytest.fixture
def server(tmp_path, monkeypatch):
    (tmp_path / "fs_probe.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    with forkserver.serving(["json"]):
        yield tmp_path


def test_a_forked_stage_gets_its_arguments_environment_directory_and_exit_status(server):
    proc = forkserver.spawn("fs_probe", ["3", "x y"], {**os.environ, "DVR_TEST_VALUE": "v1"})
    assert isinstance(proc, forkserver.Forked)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=30) == 3
    assert "argv ['3', 'x y'] name __main__" in out
    assert f"env v1 cwd {server}" in out
    parent = int(out.split("parent ")[1].split()[0])
    assert parent not in (os.getpid(), 1)  # a child of the server, not of the caller


def test_an_error_prints_its_traceback_and_exits_1(server):
    proc = forkserver.spawn("fs_probe", ["0", "fail"], dict(os.environ))
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=30) == 1
    assert "ValueError: a stage's error" in out and "Traceback" in out


def test_terminate_stops_a_forked_stage_with_sigterm(server):
    proc = forkserver.spawn("fs_probe", ["0", "sleep"], dict(os.environ))
    proc.stdout.readline()
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_without_a_server_the_caller_starts_the_process_itself(tmp_path, monkeypatch):
    monkeypatch.delenv(forkserver.ENV, raising=False)
    assert forkserver.spawn("json", [], dict(os.environ)) is None
    monkeypatch.setenv(forkserver.ENV, str(tmp_path / "gone"))  # a server that is not there any more
    assert forkserver.spawn("json", [], dict(os.environ)) is None


def test_the_server_and_its_stages_end_with_the_invocation(tmp_path):
    """An invocation killed alone (SIGKILL, no process group): its server stops, and kills what it forked."""
    (tmp_path / "fs_probe.py").write_text(MODULE)
    script = textwrap.dedent("""
        import os, sys, time
        from pipeline.core import forkserver
        with forkserver.serving([]):
            p = forkserver.spawn("fs_probe", ["0", "sleep"], dict(os.environ))
            print(p.pid, flush=True)
            time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(forkserver.Path(__file__).resolve().parents[2]), str(tmp_path)])}
    inv = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env)
    child = int(inv.stdout.readline())
    server = int(open(f"/proc/{child}/stat").read().split(") ")[1].split()[1])  # the child's parent
    inv.kill()
    inv.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in (server, child)):
        time.sleep(0.2)
    assert not _alive(server) and not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().split(") ")[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
