"""A sweep is one study: real Luigi scheduling, real TRL trainers and a real MLflow store on the smoke
preset. Shared stages run once (counted by their directories), every arm (on-policy distillation
included) is evaluated and judged, the study writes its tables, and MLflow holds one experiment
with one parent run per member carrying the swept values."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def run(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    return subprocess.run([sys.executable, "-m", "pipeline.run", "--workers", "2", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def study(tmp_path_factory, toyworld):
    d = tmp_path_factory.mktemp("sweep")
    preset = {
        "study": "algos", "config": "configs/smoke.yaml",
        "set": {"output_dir": str(d / "runs"), "eval.perplexity_subset": 0, "rl.snapshots": 1,
                "distill.enabled": True, "distill.max_steps": 4, "distill.per_device_train_batch_size": 4,
                "distill.max_completion_length": 160, "distill.logging_steps": 1,
                "distill.extra": {"gradient_checkpointing": False}},
        "sweep": {"variant": {"grpo": {"rl.loss_type": "grpo"},
                              "rloo": {"rl.algorithm": "rloo", "sft.max_traces": 8}}},
        "tables": ["algorithms", "training_length", "sft_data_size"],
    }
    path = d / "algos.yaml"
    path.write_text(yaml.safe_dump(preset))
    res = run("--config", str(path))
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    return d / "runs", path, res.stdout


def test_shared_stages_run_once(study):
    runs, _, _ = study
    dirs = [p.name.rsplit("-", 1)[0] for p in (runs / "algos").iterdir() if p.is_dir() and "-" in p.name
            and not p.name.startswith("eval-rl-step")] + \
           ["eval-rl-step" for p in (runs / "algos").glob("eval-rl-step*")]
    count = pd.Series(dirs).value_counts().to_dict()
    # shared by both members: once each
    for stage in ("problems", "traces", "filtered", "rlprompts", "distill", "eval-base", "eval-teacher", "eval-distill"):
        assert count.get(stage) == 1, (stage, count)
    # what the members change: one each (SFT differs through sft.max_traces)
    for stage in ("rl", "eval-rl", "eval-rl-step", "sft", "eval-sft"):
        assert count.get(stage) == 2, (stage, count)
    assert sorted(p.name for p in (runs / "algos" / "members").iterdir()) == ["variant-grpo", "variant-rloo"]


def test_the_distillation_arm_is_in_every_table_and_verdict(study):
    runs, _, _ = study
    rep = runs / "algos" / "members" / "variant-grpo" / "report"
    assert set(pd.read_csv(rep / "passk.csv")["model"]) == {"base", "teacher", "sft", "rl", "distill"}
    assert {v["name"] for v in json.loads((rep / "verdicts.json").read_text())} == {
        "rl_vs_base_pass1", "base_vs_rl_kmax", "sft_vs_base_kmax", "distill_vs_base_kmax", "distill_vs_sft_kmax"}
    assert "distill" in json.loads((rep / "coverage.json").read_text())["vs_base"]
    health = json.loads((rep / "health.json").read_text())
    assert set(health) == {"sft", "rl", "distill"} and health["distill"]["metric"] == "accuracy"
    assert (rep / "training_distill.png").is_file() and "| distill |" in (rep / "report.md").read_text()


def test_the_study_writes_its_tables(study):
    runs, _, _ = study
    rep = runs / "algos" / "report"
    algos = pd.read_csv(rep / "algorithms.csv")
    assert list(algos["variant"]) == ["grpo", "rloo"] and set(algos["seeds"]) == {1}
    members = pd.read_csv(rep / "members.csv").set_index("member")
    # dSE = base pass@k_max - RL pass@1, as in the paper
    for r in algos.itertuples():
        m = members.loc[f"variant-{r.variant}"]
        assert r.dse == pytest.approx(m["base_pass_at_kmax"] - m["rl_pass_at_1"])
    tl = pd.read_csv(rep / "training_length.csv")
    assert sorted(set(tl["step"])) == [2, 3] and set(tl["k"]) == {1, 8}  # smoke: 3 RL steps, a snapshot at 2
    size = pd.read_csv(rep / "sft_data_size.csv")
    assert sorted(size["traces"]) == [8, members.loc["variant-grpo", "sft_num_examples"]]
    for f in ("report.md", "training_length.png", "sft_data_size.png"):
        assert (rep / f).is_file()


def test_one_mlflow_experiment_with_a_parent_run_per_member(study):
    runs, _, _ = study
    c = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    assert [e.name for e in c.search_experiments() if e.name != "Default"] == ["algos"]
    exp = c.get_experiment_by_name("algos").experiment_id
    parents = c.search_runs([exp], "tags.`dvr.parent` = 'true'")
    assert sorted(r.info.run_name for r in parents) == ["variant-grpo", "variant-rloo"]
    for r in parents:
        assert r.data.params["sweep.variant"] == r.info.run_name.removeprefix("variant-")
        assert {"summary/rl_pass_at_1", "summary/rl_pass_at_8", "summary/distill_pass_at_8",
                "summary/verdict_distill_vs_sft_kmax"} <= set(r.data.metrics)
        assert r.info.status == "FINISHED"
    tables = c.search_runs([exp], "tags.`dvr.study_report` = 'true'")
    assert len(tables) == 1
    assert "study_report/algorithms.csv" in [f.path for f in c.list_artifacts(tables[0].info.run_id, "study_report")]


def test_an_unchanged_rerun_of_the_sweep_runs_nothing(study):
    _, path, _ = study
    res = run("--config", str(path))
    assert res.returncode == 0 and "nothing to do: study algos is up to date" in res.stdout, res.stdout[-2000:]
