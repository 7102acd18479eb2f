"""`luigi --module pipeline.dag Report|Study ...` and `python -m pipeline.run` are one tool: the same exit
codes (0 done, 1 a stage failed, 2 bad input, 3 the study is busy; luigi.cfg's [retcode] for plain Luigi),
the same study lock and writable check before anything is scheduled, and the same failure summary."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.stages.session import study_lock

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}


def config(tmp_path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data.update({"output_dir": str(tmp_path / "runs"), **changes})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def luigi(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "luigi", "--module", "pipeline.dag", *args, "--local-scheduler"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_luigi_cfg_ships_retcodes():
    import configparser

    cp = configparser.ConfigParser()
    assert cp.read(ROOT / "luigi.cfg")
    assert {k: int(v) for k, v in cp["retcode"].items()} == {
        "already_running": 3, "missing_data": 1, "not_run": 1, "task_failed": 1, "scheduling_error": 2,
        "unhandled_exception": 2}


@pytest.mark.slow  # two short DAGs that stop at their first stage
def test_a_failing_stage_exits_1_through_either_entry_point(tmp_path, toyworld):
    """toy_arith with terms up to 2 has too few distinct problems for 64 training problems: the Problems
    stage (the root of the DAG) fails at run time, so each entry point stops there."""
    c = config(tmp_path, tasks=[{"name": "toy_arith", "train_size": 64, "test_size": 12, "levels": [1],
                                 "options": {"max_value": 2}}])
    for res in (run("--config", str(c), "--workers", "1"), luigi("Report", "--config", str(c))):
        assert res.returncode == 1, (res.stdout[-2000:], res.stderr[-3000:])
        failed = [line for line in res.stderr.splitlines() if line.startswith("FAILED smoke/problems-")]
        assert len(failed) == 1 and "distinct train problems" in failed[0], res.stderr[-3000:]


def test_plain_luigi_a_missing_sweep_preset_exits_2_with_one_line():
    res = luigi("Study", "--sweep", "configs/sweeps/nope.yaml")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: configs/sweeps/nope.yaml: sweep preset not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_plain_luigi_honours_the_study_lock(tmp_path, toyworld):
    c = config(tmp_path)
    with study_lock(load_config(c)):  # another invocation holds the study
        res = luigi("Report", "--config", str(c))
    assert res.returncode == 3, res.stderr[-2000:]
    assert "error: study 'smoke'" in res.stderr and "is already being run by pid" in res.stderr
    assert not list((tmp_path / "runs" / "smoke").glob("problems-*"))


def test_plain_luigi_checks_that_output_dir_is_writable(tmp_path, toyworld):
    res = luigi("Report", "--config", str(config(tmp_path, output_dir="/sys/distill-vs-rl-runs")))
    assert res.returncode == 2 and "error: output_dir: /sys/distill-vs-rl-runs is not writable" in res.stderr, \
        res.stderr[-2000:]
