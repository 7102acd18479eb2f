"""Stage processes forked from one warm process, on machines without GPUs.

A stage is `python -m MODULE ARGS` in a process of its own. On the toy world most of such a
process's time is spent importing torch and transformers (about 7-10 s of a 10 s evaluation of the
smoke study, measured with py-spy), so an invocation starts one server that imports them once and
then forks a child per stage: the child is a process of its own as before (own pid, own output
pipe, own exit status, killed with the invocation's process group), with the stage's environment,
working directory and arguments, running the module as `__main__` exactly as `python -m` does.

Only on a machine without GPUs: a process that has imported CUDA libraries is not safe to fork, and
on GPU the imports are a small share of a stage. The server never runs a torch operation (so no
OpenMP pool exists to be copied into a child) and exits with the invocation (its parent).

    with serving(["pipeline.stages.evaluate", "transformers:AutoTokenizer"]):   # sets DVR_FORKSERVER
        proc = spawn(module, args, env)   # a Popen-like handle, or None: then start the process as usual
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ENV = "DVR_FORKSERVER"  # the socket of this invocation's server; unset: stages start as `python -m`
_MAX = 1 << 20


def gpu_machine() -> bool:
    """Whether this machine has an NVIDIA device, without loading CUDA (which would make forking unsafe)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


@contextmanager
def serving(preload: list[str], log: Path | None = None):
    """Start a server importing `preload` (module names, or `module:attr` for a lazy attribute such as
    transformers' classes), export its socket as DVR_FORKSERVER for the stages this process (and the
    Luigi worker processes it forks) start, and stop it when the block ends."""
    sock_dir = tempfile.mkdtemp(prefix="dvr-fork-")
    path = os.path.join(sock_dir, "s")
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.core.forkserver", path, ",".join(preload)],
                            stdout=out, stderr=subprocess.STDOUT)
    before = os.environ.get(ENV)
    try:
        deadline = time.time() + 60  # the socket listens at once; the imports follow between requests
        while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if os.path.exists(path):
            os.environ[ENV] = path
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
        from pipeline.core.procs import stop  # procs imports this module

        stop(proc, timeout=10)
        if log:
            out.close()
        for p in (path, sock_dir):
            try:
                os.unlink(p) if p == path else os.rmdir(p)
            except OSError:
                pass


class Forked:
    """The part of subprocess.Popen that run_stage_process uses, for a child of the fork server:
    `stdout` (its output and errors), `pid`, `poll()`, `wait(timeout)`, `terminate()`, `kill()`."""

    def __init__(self, conn: socket.socket, pid: int, stdout):
        self.conn, self.pid, self.stdout, self.returncode = conn, pid, stdout, None

    def poll(self):
        if self.returncode is None and select.select([self.conn], [], [], 0)[0]:
            self._read()
        return self.returncode

    def wait(self, timeout: float | None = None):
        if self.returncode is None:
            if not select.select([self.conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            self._read()
        return self.returncode

    def _read(self):
        msg = self.conn.recv(_MAX)
        # the server gone without a word (killed with the invocation): the child went with it
        self.returncode = json.loads(msg)["status"] if msg else -signal.SIGKILL
        self.conn.close()

    def send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def spawn(module: str, args: list[str], env: dict[str, str]) -> Forked | None:
    """`python -m module args` with `env`, forked from this invocation's server; None where there is
    no server (or it does not answer), and the caller starts the process itself."""
    path = os.environ.get(ENV)
    if not path:
        return None
    r, w = os.pipe()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        req = json.dumps(dict(module=module, args=args, env=env, cwd=os.getcwd())).encode()
        socket.send_fds(conn, [req], [w])
        os.close(w)
        w = -1
        conn.settimeout(600)  # the server forks between two imports; no answer: start the process as usual
        reply = conn.recv(_MAX)
        conn.settimeout(None)
        pid = json.loads(reply)["pid"]
    except (OSError, ValueError, KeyError):
        conn.close()
        os.close(r)
        if w >= 0:
            os.close(w)
        return None
    return Forked(conn, pid, open(r, "rb"))


def _child(req: dict, out: int) -> None:
    """In the forked child: become `python -m module args` and never return."""
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        for s in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        sys.path[0] = req["cwd"]  # as `python -m` started there (the server's own entry is its start directory)
        if os.environ.get("PYTHONUNBUFFERED"):  # as near as an open stream gets: flushed at every line
            sys.stdout.reconfigure(line_buffering=True)
            sys.stderr.reconfigure(line_buffering=True)
        if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        import runpy
        import warnings

        # the module was imported by the server; `python -m` would import it fresh: the same code
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
        sys.argv = [req["module"], *req["args"]]
        code = 0
        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else (print(e.code, file=sys.stderr), 1)[1])
        except BaseException:  # noqa: BLE001 - printed as `python -m` prints it
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str, preload: list[str]) -> None:
    """Listen at `path` at once; import `preload` one by one while no stage is asking (a stage asking
    early gets what is imported so far and imports the rest itself); fork a child per request; send
    each its pid, then its exit status. Ends with its parent (the invocation), killing what it forked."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the invocation, which stops this
    parent = os.getppid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(64)
    todo = list(preload)
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        if select.select([srv], [], [], 0 if todo else 0.2)[0]:
            _fork(srv, children)
        elif todo:
            mod, _, attr = todo.pop(0).partition(":")
            m = importlib.import_module(mod)
            if attr:
                getattr(m, attr)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps(dict(status=os.waitstatus_to_exitcode(status))).encode())
                except OSError:
                    pass
                conn.close()
    for pid in children:  # the invocation is gone: so are its stages
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _fork(srv: socket.socket, children: dict) -> None:
    conn, _ = srv.accept()
    try:
        msg, fds, _, _ = socket.recv_fds(conn, _MAX, 1)
        req = json.loads(msg)
    except (OSError, ValueError):
        conn.close()
        return
    if not fds:
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        srv.close()
        for c in children.values():
            c.close()
        conn.close()
        _child(req, fds[0])
    os.close(fds[0])
    try:
        conn.send(json.dumps(dict(pid=pid)).encode())
    except OSError:  # the caller gave up waiting and starts the stage itself: never run it twice
        os.kill(pid, signal.SIGKILL)
    children[pid] = conn


if __name__ == "__main__":
    serve(sys.argv[1], [x for x in sys.argv[2].split(",") if x])
