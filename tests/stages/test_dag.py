"""Integration: the whole DAG on the toy world (configs/smoke.yaml) with real Luigi scheduling,
real TRL trainers and a real MLflow sqlite store; then an unchanged rerun is a no-op, and a
change to the RL settings reruns only RL, its evaluation, perplexity and the report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


from conftest import run_smoke as run  # the `smoke` fixture (conftest.py) is this module's study



def test_report_files_and_verdicts(smoke):
    out, _ = smoke
    rep = out / "smoke" / "report"
    pp = pd.read_csv(rep / "per_problem.csv")
    pk = pd.read_csv(rep / "passk.csv")
    assert list(pp.columns) == ["model", "problem_id", "n", "correct"]
    assert list(pk.columns) == ["model", "k", "pass_at_k", "ci_low", "ci_high"]
    assert set(pk["model"]) == {"base", "teacher", "sft", "rl"}
    assert sorted(pk["k"].unique()) == [1, 2, 4, 8]
    assert pp.groupby("model").size().nunique() == 1  # every model saw the same problems
    assert (rep / "passk.png").stat().st_size > 10_000
    md = (rep / "report.md").read_text()
    verdicts = {v["name"]: v for v in json.loads((rep / "verdicts.json").read_text())}
    health = json.loads((rep / "health.json").read_text())
    assert set(verdicts) == {"rl_vs_base_pass1", "base_vs_rl_kmax", "sft_vs_base_kmax"}
    assert set(health) == {"sft", "rl"} and (rep / "training_rl.png").is_file()
    for v in verdicts.values():  # the words follow the numbers and the arms' health (write_report's own test pins signs)
        assert f"**{v['comparison']}** = {v['diff']:+.3f}" in md
        sick = [a for a in ("sft", "rl") if a in v["comparison"] and not health[a]["learned"]]
        assert v["verdict"].startswith("inconclusive") == bool(sick)
    # a 3-step smoke RL run logs too few points to judge: the report says so instead of stating findings
    assert not health["rl"]["learned"] and not health["rl"]["judged"]
    assert "**Warning: the rl run was not judged**" in md and "| nan |" not in md
    assert verdicts["rl_vs_base_pass1"]["verdict"].startswith("inconclusive: the rl run was not judged (rl: not judged")
    # the sharpening section on the default arms: crossovers, the guessing floor, support transitions, the log-ratio
    sharp = json.loads((rep / "sharpening.json").read_text())
    assert set(sharp["crossover"]) == {"sft", "rl"} and set(sharp["guesser"]) == {"toy_arith"}
    assert {r["arm"] for r in sharp["support"]} == {"sft", "rl"} and {k["model"] for k in sharp["log_ratio"]} == {"sft", "rl"}
    assert all(sum(r[c] for c in ("preserved", "expanded", "shrunk", "out_of_support")) == r["problems"] for r in sharp["support"])
    assert "## Sharpening or new capability?" in md and (rep / "support_transitions.png").is_file()
    # the verifier runs in a stage process, not in the Luigi worker
    assert list((out / "smoke" / "logs").glob("filtered-*.log"))


@pytest.mark.slow  # the fast tier keeps one smoke DAG: test_report_files_and_verdicts
def test_mlflow_runs_metrics_and_lineage(smoke):
    out, _ = smoke
    c = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id], max_results=200)
    parent = [r for r in runs if r.data.tags.get("dvr.parent") == "true"]
    assert len(parent) == 1
    pid = parent[0].info.run_id
    children = {r.info.run_name.rsplit("-", 1)[0]: r for r in runs
                if pid in (r.data.tags.get("mlflow.parentRunId"), r.data.tags.get("dvr.parent_run_id"))}
    assert {"problems", "traces", "filtered", "rlprompts", "sft", "rl", "eval-base", "eval-teacher", "eval-sft",
            "eval-rl", "report"} <= set(children)
    # RL trained on the problems the base solves sometimes, and says how many
    assert children["rl"].data.tags["dvr.problems_run_id"] == children["rlprompts"].info.run_id
    # the filter keeps exactly the training problems the base solved sometimes (0 < correct < n), in file order
    (stage,) = (out / "smoke").glob("rlprompts-*")
    pp = pd.read_csv(stage / "base-train" / "per_problem.csv", dtype={"problem_id": str})
    assert set(pp["n"]) == {4}  # configs/smoke.yaml: rl.filter_samples
    sometimes = set(pp.loc[(pp["correct"] > 0) & (pp["correct"] < pp["n"]), "problem_id"])
    (problems,) = (out / "smoke").glob("problems-*")
    train = [json.loads(line)["id"] for line in (problems / "train.jsonl").read_text().splitlines()]
    kept = [json.loads(line)["id"] for line in (stage / "train.jsonl").read_text().splitlines()]
    assert sorted(pp["problem_id"]) == sorted(train)  # the base sampled every training problem, once
    assert kept == [i for i in train if i in sometimes] and 0 < len(kept) < len(train)
    assert children["rlprompts"].data.metrics["kept_problems"] == len(kept)
    # pass@k curves: per model on its eval run, and all of them on the parent (step = k)
    steps = [m.step for m in c.get_metric_history(children["eval-rl"].info.run_id, "pass_at_k")]
    assert sorted(steps) == [1, 2, 4, 8]
    for m in ("base", "sft", "rl", "teacher"):
        assert sorted(x.step for x in c.get_metric_history(pid, f"pass_at_k/{m}")) == [1, 2, 4, 8]
        # each model's evaluation is a top-level run with pass_at_k/<task> at step = k, so the chart view
        # draws base, teacher and the arms on one chart per task as it opens
        ev = children[f"eval-{m}"]
        assert "mlflow.parentRunId" not in ev.data.tags and ev.data.tags["dvr.parent_run_id"] == pid
        curve = c.get_metric_history(ev.info.run_id, "pass_at_k/toy_arith")
        assert sorted(x.step for x in curve) == [1, 2, 4, 8]
        # real times, not the epoch
        assert all(x.timestamp >= ev.info.start_time > 0 for x in curve)
    assert "mlflow.parentRunId" in children["sft"].data.tags  # the other stages fold under the parent
    # training curves from TRL land in the stage's child run
    assert "train_loss" in children["sft"].data.metrics or "loss" in children["sft"].data.metrics
    assert any(k.startswith("reward") for k in children["rl"].data.metrics)
    # lineage
    sft_tags = children["sft"].data.tags
    assert sft_tags["dvr.base_model"].endswith("toyworld/base")
    assert sft_tags["dvr.teacher_model"].endswith("toyworld/teacher")
    assert sft_tags["dvr.filtered_run_id"] == children["filtered"].info.run_id
    assert sft_tags["dvr.traces_run_id"] == children["traces"].info.run_id
    assert children["eval-rl"].data.tags["dvr.model_run_id"] == children["rl"].info.run_id
    # datasets: problems, raw and filtered traces
    names = {d.dataset.name for r in runs for d in (r.inputs.dataset_inputs if r.inputs else [])}
    assert {"problems-train", "problems-test", "teacher-traces", "filtered-traces"} <= names


@pytest.mark.slow  # the fast tier keeps one smoke DAG: test_report_files_and_verdicts
def test_unchanged_rerun_is_a_noop_and_rl_change_reruns_only_rl(smoke):
    out, _ = smoke
    before = {p.name for p in (out / "smoke").iterdir()}
    assert "nothing to do" in run(out)
    assert {p.name for p in (out / "smoke").iterdir()} == before
    run(out, "--set", "rl.learning_rate=0.0002")
    new = {p.name for p in (out / "smoke").iterdir()} - before
    # only RL, its evaluation and what reads every evaluation (perplexity; the report is rewritten in place)
    assert sorted(n.split("-")[0] + ("-" + n.split("-")[1] if n.startswith("eval") else "") for n in new) == [
        "eval-rl", "perplexity", "rl"]
    # a field only the perplexity stage reads resamples nothing
    before = {p.name for p in (out / "smoke").iterdir()}
    run(out, "--set", "rl.learning_rate=0.0002", "--set", "eval.perplexity_subset=12")
    assert [n.split("-")[0] for n in {p.name for p in (out / "smoke").iterdir()} - before] == ["perplexity"]


@pytest.mark.slow  # an evaluation-only study beside the smoke one: one evaluation, perplexity and a report
def test_the_rl_model_as_an_outside_model_equals_the_rl_arm(smoke, tmp_path):
    """The smoke study's RL model, copied to a directory and named as an outside model of the base in an
    evaluation-only study (configs/smoke-outside.yaml as a member of the smoke study, so its problems and base
    evaluation are the smoke study's): per-problem counts identical to eval-rl's, and verdicts, crossover and
    support transitions equal to the RL arm's. Its training is not judged (trained elsewhere), which leaves its
    verdicts conclusive; the RL arm's 3-step run is not judged either, which makes the arm's inconclusive."""
    import shutil

    from pipeline.analysis.verdicts import verdict_words

    out, _ = smoke
    study = out / "smoke"
    run(out)  # the default study's report again, whichever of this module's reruns wrote it last (only the report reruns)
    arm_models = json.loads((study / "report" / "models.json").read_text())
    copy = tmp_path / "published-rl"
    shutil.copytree(arm_models["rl"]["model_path"], copy)
    before = {p.name for p in study.iterdir()}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    res = subprocess.run([sys.executable, "-m", "pipeline.run", "--config", "configs/smoke-outside.yaml", "--workers", "2",
                          "--set", f"output_dir={out}", "--set", "study=smoke", "--set", "outside.0.name=rl-copy",
                          "--set", f"outside.0.ref={copy}", "--set", "outside.0.label=the smoke RL model, copied"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    new = sorted(n.split("-")[0] + ("-" + n.split("-")[1] if n.startswith("eval-") else "")
                 for n in {p.name for p in study.iterdir()} - before)
    assert new == ["eval-rl", "members", "perplexity"]  # eval-rl-copy-<key>: nothing trained, the base not re-evaluated

    def counts(d):
        return pd.read_csv(d / "per_problem.csv", dtype={"problem_id": str})[["problem_id", "n", "correct"]]

    ev_rl = Path(arm_models["rl"]["eval_dir"])
    (ev_copy,) = study.glob("eval-rl-copy-*")
    pd.testing.assert_frame_equal(counts(ev_copy), counts(ev_rl))

    arm_rep, row_rep = study / "report", study / "members" / "smoke-outside" / "report"
    arm = {v["name"]: v for v in json.loads((arm_rep / "verdicts.json").read_text())}
    row = {v["name"]: v for v in json.loads((row_rep / "verdicts.json").read_text())}
    assert set(row) == {"rl-copy_vs_base_pass1", "base_vs_rl-copy_kmax"}
    for mine, theirs in (("rl-copy_vs_base_pass1", "rl_vs_base_pass1"), ("base_vs_rl-copy_kmax", "base_vs_rl_kmax")):
        a, r = arm[theirs], row[mine]
        assert [r[k] for k in ("diff", "ci_low", "ci_high", "problems", "mdd")] == \
            [a[k] for k in ("diff", "ci_low", "ci_high", "problems", "mdd")]
        assert a["verdict"].startswith("inconclusive: the rl run was not judged")
        first, second = a["comparison"].replace("rl", "rl-copy").split(" − ")
        assert r["comparison"] == f"{first} − {second}" and r["conclusive"]
        names = ("rl-copy", "base") if mine.startswith("rl-copy") else ("base", "rl-copy")
        assert r["verdict"] == verdict_words(*names, a["diff"], a["ci_low"], a["ci_high"], a["mdd"], None)

    sharp_arm, sharp_row = (json.loads((d / "sharpening.json").read_text()) for d in (arm_rep, row_rep))
    assert sharp_row["crossover"]["rl-copy"] == sharp_arm["crossover"]["rl"]
    strip = [{k: v for k, v in s.items() if k != "arm"} for s in sharp_arm["support"] if s["arm"] == "rl"]
    assert [{k: v for k, v in s.items() if k != "arm"} for s in sharp_row["support"]] == strip
    ppl_arm, ppl_row = (json.loads((d / "perplexity.json").read_text()) for d in (arm_rep, row_rep))
    assert ppl_row["ppl_under_base"]["rl-copy"]["median"] == pytest.approx(ppl_arm["ppl_under_base"]["rl"]["median"], rel=1e-4)
    (kl_arm,) = [k for k in sharp_arm["log_ratio"] if k["model"] == "rl"]
    (kl_row,) = [k for k in sharp_row["log_ratio"] if k["model"] == "rl-copy"]
    assert kl_row["log_ratio_per_token"] == pytest.approx(kl_arm["log_ratio_per_token"], rel=1e-4)
    md = (row_rep / "report.md").read_text()
    assert "| rl-copy | n/a | n/a | n/a | trained elsewhere (the smoke RL model, copied) | not judged: trained elsewhere |" in md
    assert "This does not make the verdicts about it inconclusive" in md
    assert "Problems lost by rl-copy" in md and "Problems gained by rl-copy" in md
    models = json.loads((row_rep / "models.json").read_text())
    assert models["rl-copy"]["from"] == "base" and models["rl-copy"]["ref"] == str(copy)


@pytest.mark.slow  # one evaluation and 4 SFT steps started as `python -m`
@pytest.mark.parametrize("stage, files", [("eval-base", ["samples.jsonl", "per_problem.csv"]),
                                          ("sft", ["model.safetensors"])])
def test_a_forked_stage_equals_the_same_stage_started_as_python_m(smoke, tmp_path, stage, files):
    """On a machine without GPUs the study's stages fork from the invocation's warm server
    (compute.fork_stages): the command each one's log records, started as `python -m` in a fresh
    process, gives byte-identical samples, counts and weights."""
    import shlex

    run = smoke[0] / "smoke"
    log = next((run / "logs").glob(f"{stage}-*.log")).read_text()
    assert "forked from this invocation's stage server" in log
    cmd = shlex.split(next(x for x in log.splitlines() if x.startswith("$ "))[2:])
    assert cmd[:2] == [sys.executable, "-m"]
    final = next(d for d in run.iterdir() if d.name.startswith(f"{stage}-") and d.suffix == "" and "." not in d.name)
    for flag, value in (("--config", str(final / "config.yaml")), ("--out", str(tmp_path / "out")),
                        ("--work", str(tmp_path / "work")), ("--checkpoints", str(tmp_path / "ckpt"))):
        if flag in cmd:
            cmd[cmd.index(flag) + 1] = value
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for name in files:
        mine, theirs = next((tmp_path / "out").rglob(name)), next(final.rglob(name))
        assert mine.read_bytes() == theirs.read_bytes(), name
