"""Reliability on the smoke preset, with real Luigi, TRL, MLflow and SIGKILL:
- kills at five points (traces mid-shard, SFT mid-training, GRPO mid-step, evaluation mid-model,
  the report) each resume to the same per_problem.csv, passk.csv and weights as an uninterrupted run;
- two uninterrupted runs with one seed give identical numbers (teacher traces included);
- a kill while the MLflow store is being made never breaks it; a half-made store is made again;
- a second invocation of a running study exits naming the first; two writers of one stage make one;
- SIGTERM and a failing stage end their MLflow runs KILLED/FAILED with the reason, and the summary
  names the stage and its log.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}


def pipeline_cmd(out, *extra, workers=2):
    return [sys.executable, "-m", "pipeline.run", "--config", "configs/smoke.yaml", "--workers", str(workers),
            "--set", f"output_dir={out}", *extra]


def statuses(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def end_reasons(db: Path) -> dict[str, str]:
    """run name -> its dvr.end_reason tag"""
    with sqlite3.connect(db) as con:
        rows = con.execute("select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'dvr.end_reason'").fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, toyworld):
    out = tmp_path_factory.mktemp("chaos")
    res = subprocess.run([sys.executable, "scripts/chaos.py", "--config", "configs/smoke.yaml", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=1800)
    return out, res


@pytest.mark.slow  # whole smoke DAGs
def test_kills_at_five_points_resume_to_the_same_outputs(chaos):
    out, res = chaos
    assert res.returncode == 0, (res.stdout[-4000:], res.stderr[-4000:])
    result = json.loads((out / "chaos.json").read_text())
    assert result["problems"] == []
    assert sorted(k["point"] for k in result["kills"]) == sorted(["traces", "sft", "rl", "eval", "report"])
    assert all(k["killed"] for k in result["kills"]) and result["final"]["returncode"] == 0
    run = out / "chaos" / "smoke"
    logs = {p.name: p.read_text() for p in (run / "logs").glob("*.log")}
    # the killed training stages resumed from their Trainer checkpoints rather than restarting
    for arm in ("sft", "rl"):
        assert any(n.startswith(f"{arm}-") and "resuming from" in t for n, t in logs.items()), arm
    # no MLflow run is left RUNNING; the killed ones say why
    st = statuses(out / "chaos" / "mlflow.db")
    assert "RUNNING" not in st and st.get("KILLED", 0) >= 5, st
    assert all("killed" in r for r in end_reasons(out / "chaos" / "mlflow.db").values())


@pytest.mark.slow  # whole smoke DAGs
def test_same_seed_same_numbers_teacher_traces_included(chaos, smoke):
    """Two uninterrupted runs: the chaos script's reference (1 worker) and the shared smoke study
    (2 workers, conftest.py)."""
    ref = chaos[0] / "reference" / "smoke"
    got = smoke[0] / "smoke"
    compared = 0
    for f in sorted(ref.glob("eval-*/*.csv")) + sorted(ref.glob("traces-*/shard-*.jsonl")) + \
            sorted(ref.glob("*/model/model.safetensors")):
        other = got / f.relative_to(ref)
        assert other.read_bytes() == f.read_bytes(), f.relative_to(ref)
        compared += 1
    assert compared >= 4 * 3 + 2 + 2  # 4 evaluations x 3 csv files, 2 trace shards, 2 models


@pytest.mark.slow  # several processes killed mid-write
def test_a_kill_while_the_store_is_made_never_breaks_it(tmp_path):
    make = ("import sys; from pipeline.config import load_config; from pipeline.core import tracking; "
            "tracking.client(load_config('configs/smoke.yaml', {'output_dir': sys.argv[1]}))")
    p = subprocess.Popen([sys.executable, "-c", make, str(tmp_path)], cwd=ROOT, env=ENV)
    deadline = time.time() + 60
    while not list(tmp_path.glob("mlflow.db.tmp-*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    assert list(tmp_path.glob("mlflow.db.tmp-*")), "the store was not made under a temporary name"
    p.kill()  # SIGKILL mid-creation
    p.wait()
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-made under the real name
    subprocess.run([sys.executable, "-c", make, str(tmp_path)], cwd=ROOT, env=ENV, check=True)
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # a working store
    assert not list(tmp_path.glob("mlflow.db.tmp-*"))  # the killed creator's file is cleared


def half_made_store(db: Path, with_run: bool = False) -> None:
    """What a kill between MLflow's initial tables and its migrations left (the issue's
    "table evaluation_datasets already exists")."""
    import sqlalchemy
    from mlflow.store.db.utils import InitialBase

    eng = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(eng)
    with eng.begin() as c:
        c.execute(sqlalchemy.text("create table evaluation_datasets (dataset_id varchar(36) primary key)"))
        if with_run:
            c.execute(sqlalchemy.text("insert into runs (run_uuid, experiment_id) values ('r1', 0)"))


def test_a_half_made_store_is_made_again_and_one_with_runs_is_left_alone(tmp_path):
    from pipeline.core.tracking import ensure_sqlite_store

    db = tmp_path / "mlflow.db"
    half_made_store(db)
    with pytest.raises(Exception, match="already exists"):
        MlflowClient(f"sqlite:///{db}").search_experiments()
    ensure_sqlite_store(db)
    assert MlflowClient(f"sqlite:///{db}").search_experiments()
    assert len(list(tmp_path.glob("mlflow.db.broken-*"))) == 1  # kept aside, not deleted
    other = tmp_path / "o"
    other.mkdir()
    half_made_store(other / "mlflow.db", with_run=True)
    with pytest.raises(RuntimeError, match="holds runs, so it is left as it is"):
        ensure_sqlite_store(other / "mlflow.db")


def wait_for(pred, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # whole smoke DAGs
def test_a_second_invocation_of_a_running_study_exits_naming_it(tmp_path, toyworld):
    first = subprocess.Popen(pipeline_cmd(tmp_path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = tmp_path / "smoke" / ".study.lock"
        assert wait_for(lambda: lock.is_file() and lock.read_text().strip())
        second = subprocess.run(pipeline_cmd(tmp_path), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 3
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and f"already being run by pid {first.pid}" in err[0], err
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.slow  # whole smoke DAGs
def test_two_writers_of_one_stage_make_it_once(tmp_path, toyworld):
    """Two `luigi` invocations (no study lock) of the same Problems stage at once: one writes it,
    the other waits on the stage lock and finds it complete."""
    cmd = [sys.executable, "-m", "luigi", "--module", "pipeline.dag", "Problems", "--config", "configs/smoke.yaml",
           "--overrides", json.dumps({"output_dir": str(tmp_path)}), "--local-scheduler", "--no-lock"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read().decode()[-2000:]
    dirs = [d for d in (tmp_path / "smoke").iterdir() if d.name.startswith("problems")]
    assert len(dirs) == 1 and (dirs[0] / "_SUCCESS").exists() and (dirs[0] / "test.jsonl").stat().st_size > 0
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        runs = con.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'dvr.stage' and t.value = 'problems'").fetchall()
    assert runs == [("FINISHED",)]  # one stage run, not two


@pytest.mark.slow  # whole smoke DAGs
def test_sigterm_ends_the_stage_run_killed_and_leaves_no_temporaries(tmp_path, toyworld):
    p = subprocess.Popen(pipeline_cmd(tmp_path), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "smoke"
    assert wait_for(lambda: list(run.glob("sft-*.ckpt/checkpoint-*/trainer_state.json")))
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=120)
    time.sleep(1)
    st = statuses(tmp_path / "mlflow.db")
    assert st.get("KILLED", 0) >= 1, st
    reasons = end_reasons(tmp_path / "mlflow.db")
    assert any(name.startswith("sft-") and "SIGTERM" in why for name, why in reasons.items()), reasons
    assert not [d for d in run.iterdir() if ".tmp-" in d.name]
    assert list(run.glob("sft-*.ckpt/checkpoint-*"))  # what the next run resumes from is kept
    # (that a rerun then completes with no run RUNNING is the chaos test's)


@pytest.mark.slow  # whole smoke DAGs
def test_a_failing_stage_fails_alone_with_its_reason(tmp_path, tiny_model):
    """A teacher whose traces are all wrong (a random model): the filter stage fails with one line in
    the summary naming it and its log; the traces it read stay complete; its run is FAILED with the
    reason; the parent run says which stage failed."""
    res = subprocess.run(pipeline_cmd(tmp_path, "--set", f"teacher_model={tiny_model}", "--set", "rl.max_steps=1",
                                      "--set", "eval.perplexity_subset=0", "--set", "eval.include_teacher=false"),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 1
    failed = [x for x in res.stderr.splitlines() if x.startswith("FAILED ")]
    assert len(failed) == 1, res.stderr[-3000:]
    assert failed[0].startswith("FAILED smoke/filtered-") and "no teacher trace was verified correct" in failed[0]
    log = failed[0].rsplit("log: ", 1)[1]
    assert Path(log).is_file() and "filtered" in Path(log).name
    run = tmp_path / "smoke"
    assert [d for d in run.glob("traces-*") if (d / "_SUCCESS").exists()]  # earlier output intact
    assert not list(run.glob("filtered-*"))
    assert [d for d in run.glob("rl-*") if (d / "_SUCCESS").exists()]  # the RL branch did not depend on it
    reasons = end_reasons(tmp_path / "mlflow.db")
    assert "no teacher trace was verified correct" in next(v for k, v in reasons.items() if k.startswith("filtered-"))
    assert "filtered" in reasons["smoke"]  # the parent run
    assert "RUNNING" not in statuses(tmp_path / "mlflow.db")
