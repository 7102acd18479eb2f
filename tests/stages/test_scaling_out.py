"""Several machines simulated on one host, with the commands docs/scaling-out.md gives (read from it):
a real luigid, two workers in two separate checkouts sharing one output_dir, a real MLflow tracking
server; a worker killed mid-stage and the server killed mid-run; SFT and GRPO under `accelerate
launch` as two "nodes"; luigid's own page of the finished study. Every address is 127.0.0.1 with a
free port, every wait is bounded, and every process started here is stopped (its whole group)."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scaling-out.md"
BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "LUIGI_CONFIG_PATH")}
ENV["PYTHONPATH"] = str(ROOT)  # this checkout's code (a worker's own checkout overrides it)
# bounded MLflow requests: a refused connection fails in seconds, not after MLflow's minutes of retries
ENV.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
           MLFLOW_HTTP_REQUEST_TIMEOUT="30", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
STAGES = ["Evaluate-base", "Evaluate-rl", "Evaluate-sft", "Evaluate-teacher", "FilterRLProblems", "FilterTraces",
          "GenerateTeacherTraces", "Perplexity", "Problems", "Report", "Train-rl", "Train-sft"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc_command(marker: str, subs: dict[str, str]) -> tuple[list[str], dict]:
    """The command line of docs/scaling-out.md that contains `marker`, with `subs` applied: its argv
    and its environment (leading VAR=value words)."""
    (line,) = [x.strip() for x in DOC.read_text().splitlines() if marker in x and not x.strip().startswith("#")]
    for a, b in {".venv/bin/": f"{BIN}/", **subs}.items():
        line = line.replace(a, b)
    words, env = shlex.split(line), dict(ENV)
    while "=" in words[0] and not words[0].startswith("/"):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return words, env


def start(cmd, env, cwd, log: Path, procs: list) -> subprocess.Popen:
    f = open(log, "ab")
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    f.close()
    procs.append(p)
    return p


def stop(p: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        except ProcessLookupError:
            pass


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s{' (the process exited)' if proc and proc.poll() is not None else ''}\n{tail}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def start_luigid(d: Path, procs: list) -> str:
    """luigid in the foreground: the documented command without --background and --pidfile."""
    port = free_port()
    cmd, env = doc_command("bin/luigid ", {"runs/luigid": str(d / "luigid"), "8082": str(port),
                                           "configs/luigid.cfg": str(ROOT / "configs" / "luigid.cfg")})
    i = cmd.index("--pidfile")
    cmd = [w for w in cmd[:i] + cmd[i + 2:] if w != "--background"]
    (d / "luigid").mkdir(parents=True, exist_ok=True)
    p = start(cmd, env, d, d / "luigid" / "foreground.log", procs)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(url + "/api/task_list"), 120, "luigid answering", p, d / "luigid" / "foreground.log")
    return url


def start_mlflow(d: Path, procs: list, port: int | None = None) -> tuple[str, subprocess.Popen]:
    port = port or free_port()
    cmd, env = doc_command("bin/mlflow server", {"runs/mlflow-server": str(d / "mlflow-server"), "5000": str(port)})
    (d / "mlflow-server").mkdir(parents=True, exist_ok=True)
    log = d / "mlflow-server" / "server.log"
    p = start(cmd, env, d, log, procs)
    uri = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(uri + "/health"), 180, "the MLflow server answering", p, log)
    return uri, p


def checkout(d: Path) -> Path:
    """A machine's own working directory: a copy of the code, the configs and the toy world."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipeline", "tasks", "configs", "toyworld"):
        shutil.copytree(ROOT / name, d / name, ignore=ignore)
    return d


def start_worker(machine: Path, scheduler: str, tracking: str, shared: Path, procs: list, log: Path):
    cmd, env = doc_command("-m pipeline.run --config configs/smoke.yaml --scheduler-url", {
        "http://127.0.0.1:8082": scheduler, "http://127.0.0.1:5000": tracking, "/shared/runs": str(shared)})
    env["PYTHONPATH"] = str(machine)  # this machine's checkout, for its stage processes too
    return start(cmd, env, machine, log, procs)


def attempts(run: Path) -> dict[str, list[int]]:
    """stage log -> the pids of the Luigi workers that started it (one header line per attempt)."""
    out = {}
    for f in sorted((run / "logs").glob("*.log")):
        out[f.stem] = [int(x.split(" attempt by pid ")[1].split()[0]) for x in f.read_text(errors="replace").splitlines()
                       if x.startswith("==== ") and " attempt by pid " in x]
    return out


def same_report(ref: Path, got: Path) -> None:
    for f in ("per_problem.csv", "verdicts.json"):
        assert (got / "report" / f).read_bytes() == (ref / "report" / f).read_bytes(), f


def stage_runs(uri: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("smoke")
    return c, c.search_runs([exp.experiment_id], max_results=500)


# ---------------------------------------------------------------------------------------------------------


def test_the_documented_luigid_command_starts_as_an_ordinary_user(tmp_path):
    """--state-path in a user's folder (Luigi's default is under /var/lib), --background with a pid file."""
    port = free_port()
    cmd, env = doc_command("bin/luigid ", {"runs/luigid": str(tmp_path / "luigid"), "8082": str(port),
                                           "configs/luigid.cfg": str(ROOT / "configs" / "luigid.cfg")})
    assert "--state-path" in cmd and "--background" in cmd and env["LUIGI_CONFIG_PATH"].endswith("configs/luigid.cfg")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    pidfile = tmp_path / "luigid" / "luigid.pid"
    try:
        wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), 60, "luigid's pid file")
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/api/task_list"), 60, "luigid answering",
                 log=tmp_path / "luigid" / "luigi-server.log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/visualiser/index.html", timeout=10) as r:
            assert b"Luigi Task Status" in r.read()
    finally:
        pid = int(pidfile.read_text().strip()) if pidfile.is_file() and pidfile.read_text().strip() else None
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                     60, "luigid stopping")
    assert (tmp_path / "luigid" / "state.pickle").is_file()  # its state went where it was told, on shutdown
    assert (tmp_path / "luigid" / "luigi-server.log").is_file()


def test_a_tracking_server_that_does_not_answer_stops_the_run_before_any_stage(tmp_path, capsys, toyworld, monkeypatch):
    from pipeline.run import main

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rc = main(["--config", "configs/smoke.yaml", "--set", f"output_dir={tmp_path}", "--set", f"tracking.uri={uri}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: tracking.uri: the MLflow tracking server {uri} does not answer (")
    assert not (tmp_path / "smoke").exists()  # no stage started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, toyworld):
    """One luigid, one MLflow server, two workers (machine-a, machine-b) sharing `shared/`; the
    servers stay up for the module's tests."""
    d = tmp_path_factory.mktemp("cluster")
    procs: list = []
    try:
        scheduler = start_luigid(d, procs)
        tracking, _ = start_mlflow(d, procs)
        shared = d / "shared"
        machines = [checkout(d / f"machine-{m}") for m in "ab"]
        workers = [start_worker(m, scheduler, tracking, shared, procs, d / f"worker-{m.name}.log") for m in machines]
        rcs = [w.wait(timeout=1800) for w in workers]
        logs = [(d / f"worker-{m.name}.log").read_text(errors="replace") for m in machines]
        yield SimpleNamespace(d=d, scheduler=scheduler, tracking=tracking, shared=shared, workers=workers, rcs=rcs,
                              logs=logs)
    finally:
        for p in reversed(procs):
            stop(p)


@pytest.mark.slow  # a whole smoke study on two workers
def test_two_workers_run_every_stage_once_and_match_one_invocation(cluster, smoke):
    assert cluster.rcs == [0, 0], [x[-3000:] for x in cluster.logs]
    run = cluster.shared / "smoke"
    done = sorted(p for p in run.iterdir() if (p / "_SUCCESS").is_file())
    assert len(done) == len(STAGES)
    # one attempt per stage, and both workers ran stages
    tries = attempts(run)
    assert tries and all(len(v) == 1 for v in tries.values()), tries
    pids = {w.pid for w in cluster.workers}
    # one MLflow run per stage, FINISHED, owned by one of the two workers; each stage record names its run
    c, runs = stage_runs(cluster.tracking)
    by_key = {}
    for r in runs:
        if "dvr.hash" in r.data.tags:
            by_key.setdefault(r.data.tags["dvr.hash"], []).append(r)
    assert all(len(v) == 1 and v[0].info.status == "FINISHED" for v in by_key.values()), by_key
    owners = {int(r.data.tags["dvr.owner"].split(":")[1]) for v in by_key.values() for r in v}
    assert owners == pids, (owners, pids)  # both workers ran stages, no one else did
    for p in done:
        info = json.loads((p / "stage.json").read_text())
        assert [r.info.run_id for r in by_key[info["key"]]] == [info["run_id"]], p.name
    # the report equals a single invocation's (the smoke study of conftest.py) byte for byte
    same_report(smoke[0] / "smoke", run)


@pytest.mark.slow  # the same study
def test_the_mlflow_server_holds_the_runs_lineage_metrics_and_artifacts(cluster):
    c, runs = stage_runs(cluster.tracking)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("dvr.parent") == "true"]
    children = {r.info.run_name.rsplit("-", 1)[0]: r for r in runs
                if parent.info.run_id in (r.data.tags.get("mlflow.parentRunId"), r.data.tags.get("dvr.parent_run_id"))}
    assert {"problems", "traces", "filtered", "rlprompts", "sft", "rl", "eval-base", "eval-teacher", "eval-sft",
            "eval-rl", "perplexity", "report"} <= set(children)
    assert children["sft"].data.tags["dvr.filtered_run_id"] == children["filtered"].info.run_id
    assert children["rl"].data.tags["dvr.problems_run_id"] == children["rlprompts"].info.run_id
    assert children["eval-rl"].data.tags["dvr.model_run_id"] == children["rl"].info.run_id
    assert sorted(m.step for m in c.get_metric_history(children["eval-rl"].info.run_id, "pass_at_k")) == [1, 2, 4, 8]
    assert any(k.startswith("reward") for k in children["rl"].data.metrics)  # TRL's curves, from the stage process
    # artifacts went through the server into its own store, not into the study's folder
    assert [a.path for a in c.list_artifacts(children["sft"].info.run_id, "model")]
    stored = list((cluster.d / "mlflow-server" / "artifacts").rglob("model.safetensors"))
    assert len(stored) >= 2 and not (cluster.shared / "mlartifacts").exists()
    assert not (cluster.shared / "mlflow.db").exists()


@pytest.mark.slow  # the same study
def test_luigids_page_shows_every_node_by_stage_and_done(cluster):
    if not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium package for the headless screenshot (apt-get install -y chromium)")
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    query = urllib.parse.quote(json.dumps({"status": "DONE"}))
    with urllib.request.urlopen(f"{cluster.scheduler}/api/task_list?data={query}", timeout=30) as r:
        tasks = json.loads(r.read())["response"]
    (report,) = [t for t, v in tasks.items() if v["name"] == "Report"]
    out = cluster.d / "graph.png"
    res = subprocess.run(["bash", "scripts/luigid_screenshot.sh", cluster.scheduler, report, str(out)], cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    html = out.with_suffix(".html").read_text()
    # the rendered graph: one node per stage, named by what it is, each DONE
    nodes = [(re.search(r'data-task-status="(\w+)"', a).group(1), name)
             for a, name in re.findall(r'(<a [^>]*graph-node-a[^>]*>)\s*<text[^>]*>([^<]+)</text>', html)]
    assert sorted(name for _, name in nodes) == STAGES, nodes
    assert {status for status, _ in nodes} == {"DONE"}
    # the screenshot: twelve done (green, #00DD00) circles plus the legend's; of the other colours
    # only the legend's one each
    px = np.asarray(Image.open(out).convert("RGB")).astype(int)

    def blobs(rgb):
        mask = (np.abs(px - np.array(rgb)).sum(-1) < 40)
        labels, n = ndimage.label(mask)
        return sum(1 for i in range(1, n + 1) if (labels == i).sum() >= 30)

    assert blobs((0x00, 0xDD, 0x00)) == len(STAGES) + 1
    assert blobs((0xEE, 0xBB, 0x00)) == 1 and blobs((0xDD, 0x00, 0x00)) == 1 and blobs((0x00, 0x44, 0xDD)) == 1


@pytest.mark.slow  # a smoke study killed twice and resumed
def test_a_lost_worker_and_a_lost_tracking_server(tmp_path, smoke, toyworld):
    """SIGKILL one of two workers (its whole process group) mid-training; the other finishes what it
    can and leaves; a rerun worker is started and the MLflow server is killed under it (the run ends
    naming the URI); with the server back on its store, a last rerun finishes the study: the single
    invocation's numbers and weights, no half-written stage taken as done, no run left RUNNING."""
    procs: list = []
    try:
        scheduler = start_luigid(tmp_path, procs)
        tracking, server = start_mlflow(tmp_path, procs)
        shared = tmp_path / "shared"
        run = shared / "smoke"
        machines = [checkout(tmp_path / f"machine-{m}") for m in "ab"]
        workers = {}
        for m in machines:
            workers[m.name] = start_worker(m, scheduler, tracking, shared, procs, tmp_path / f"{m.name}.log")

        def training():  # a training stage past its first checkpoint, and the worker running it
            for ck in run.glob("*.ckpt/checkpoint-*/trainer_state.json"):
                stage = ck.parent.parent.name.removesuffix(".ckpt")
                if not (run / stage / "_SUCCESS").exists():
                    pid = attempts(run).get(stage, [None])[-1]
                    name = next((n for n, w in workers.items() if w.pid == pid), None)
                    if name:
                        return stage, name
            return None

        stage, victim = wait_for(training, 900, "a training checkpoint")
        os.killpg(workers[victim].pid, signal.SIGKILL)  # the lost machine: the worker and its stage process
        workers[victim].wait(timeout=30)
        survivor = next(w for n, w in workers.items() if n != victim)
        assert survivor.wait(timeout=900) == 1  # it leaves once luigid drops the lost worker: the study is incomplete
        assert not (run / stage / "_SUCCESS").exists() and not (run / stage).exists()  # nothing half-written taken as done
        out = (tmp_path / f"{[n for n in workers if n != victim][0]}.log").read_text(errors="replace")
        assert "incomplete: smoke (rerun to resume)" in out

        # a rerun worker; the tracking server goes away while it runs a stage
        rerun = start_worker(machines[0], scheduler, tracking, shared, procs, tmp_path / "rerun.log")
        wait_for(lambda: any(rerun.pid in v for v in attempts(run).values()), 600, "the rerun starting a stage",
                 rerun, tmp_path / "rerun.log")
        stop(server, signal.SIGKILL)
        assert rerun.wait(timeout=900) == 1
        err = (tmp_path / "rerun.log").read_text(errors="replace")
        assert f"error: the MLflow tracking server {tracking} does not answer" in err, err[-3000:]
        assert not (run / "report" / "_SUCCESS").exists()

        # the server back on the same store and port; a last rerun finishes the study
        start_mlflow(tmp_path, procs, port=int(tracking.rsplit(":", 1)[1]))
        last = start_worker(machines[1], scheduler, tracking, shared, procs, tmp_path / "last.log")
        assert last.wait(timeout=1800) == 0, (tmp_path / "last.log").read_text(errors="replace")[-4000:]
    finally:
        for p in reversed(procs):
            stop(p)
    same_report(smoke[0] / "smoke", run)
    for f in sorted((smoke[0] / "smoke").glob("*/model/model.safetensors")):  # the killed training resumed to the same weights
        assert (run / f.relative_to(smoke[0] / "smoke")).read_bytes() == f.read_bytes(), f
    logs = {n: (run / "logs" / f"{n}.log").read_text() for n in attempts(run)}
    assert len(attempts(run)[stage]) >= 2 and "resuming from" in logs[stage]
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or p.suffix in (".shards", ".ckpt")]
    from mlflow.tracking import MlflowClient

    # the store, read directly now that the server is gone: nothing left RUNNING, the lost ones KILLED
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow-server/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id], max_results=500)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert any(r.info.status == "KILLED" and r.info.run_name.startswith(stage) for r in runs)


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, toyworld):
    """Training inputs as the DAG makes them: correct worked traces (SFT) and problems (GRPO)."""
    from pipeline.config import load_config
    from pipeline.sampling.backends import load_tokenizer
    from tasks import build_tasks, problems_for
    from tasks.toy_arith import chain_steps, completion_text, parse_chain, plain_step

    d = tmp_path_factory.mktemp("nodes")
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data["compute"] = {"launcher": "accelerate", "num_processes": 2, "threads": 1, "checkpoint_steps": 0}
    data["sft"].update(max_steps=2, per_device_train_batch_size=4)
    data["rl"].update(max_steps=2)
    for k in ("base_model", "teacher_model"):
        data[k] = str(ROOT / data[k])
    (d / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(d / "config.yaml")
    tok = load_tokenizer(cfg.base_model)
    task = build_tasks(cfg.tasks)["toy_arith"]
    probs = problems_for(cfg.tasks, "train")[:16]
    rows = []
    for p in probs:
        terms, ops = parse_chain(p.question)
        lines = [plain_step(a, op, b) for a, op, b, _ in chain_steps(terms, ops)]
        rows.append({"prompt": task.prompt(p, tok), "completion": completion_text(lines, p.answer)})
    (d / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "problems.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    return d, cfg


def train_two_ways(d: Path, cfg, arm: str, flag: str, data: str) -> tuple[Path, Path]:
    """The arm under the DAG's one-node, two-process launch, then as two one-process "nodes"."""
    from pipeline.core.procs import stage_command

    args = ["--config", str(d / "config.yaml"), flag, str(d / data)]
    one = subprocess.run(stage_command(cfg, "pipeline.arms", [f"pipeline.arms.{arm}", *args, "--out", str(d / f"{arm}-one")],
                                       train=True), cwd=d, env=ENV, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    port, procs = free_port(), []
    try:
        for rank in (0, 1):
            cmd, env = doc_command("-m accelerate.commands.launch --multi_gpu --num_machines 2", {
                "--machine_rank 0": f"--machine_rank {rank}", "29500": str(port), "pipeline.arms.sft": f"pipeline.arms.{arm}",
                "--config config.yaml --traces filtered.jsonl": " ".join(args), "--out model": f"--out {d / f'{arm}-two'}"})
            start(cmd, env, d, d / f"{arm}-node{rank}.log", procs)
        rcs = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert rcs == [0, 0], [(d / f"{arm}-node{r}.log").read_text()[-3000:] for r in (0, 1)]
    return d / f"{arm}-one", d / f"{arm}-two"


@pytest.mark.slow  # four training launches
@pytest.mark.parametrize("arm,flag,data", [("sft", "--traces", "filtered.jsonl"), ("rl", "--problems", "problems.jsonl")])
def test_two_nodes_train_the_same_weights_as_one_node(two_nodes, arm, flag, data):
    d, cfg = two_nodes
    one, two = train_two_ways(d, cfg, arm, flag, data)
    for log in (d / f"{arm}-node0.log", d / f"{arm}-node1.log"):  # each "node" ran one process of a world of two
        assert log.read_text().count('{"train_loss"') == 1
    m1, m2 = (json.loads((x / "train_metrics.json").read_text()) for x in (one, two))
    assert m1["global_step"] == m2["global_step"] == 2
    assert (two / "model.safetensors").read_bytes() == (one / "model.safetensors").read_bytes()
