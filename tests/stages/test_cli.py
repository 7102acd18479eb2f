"""pipeline.run's researcher commands: --dry-run (validates, plans, writes nothing), --force STAGE
(reruns it and what depends on it), --clean (lists, then with --yes removes, stage directories the
config no longer refers to) and --list-tasks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import luigi
import pytest
import yaml

from pipeline import plan
from pipeline.dag import Problems, Report
from pipeline.run import main


def make_config(tmp_path, toyworld, **over) -> str:
    data = {"name": "cli", "base_model": str(toyworld / "base"), "teacher_model": str(toyworld / "teacher"),
            "tasks": [{"name": "toy_arith", "train_size": 6, "test_size": 4, "levels": [1]}],
            "rl": {"num_generations": 2, "per_device_train_batch_size": 2}, "output_dir": str(tmp_path / "runs")}
    data.update(over)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def build_problems(config: str) -> Problems:
    t = Problems(config, {})
    assert luigi.build([t], local_scheduler=True, workers=1, log_level="WARNING")
    return t


def test_dry_run_plans_every_stage_and_writes_nothing(tmp_path, toyworld, capsys):
    config = make_config(tmp_path, toyworld)
    assert main(["--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run  Problems" in out and "would run  Train-rl" in out and "would run  Report" in out
    assert not [line for line in out.splitlines() if line.startswith("  cached")]
    assert not (tmp_path / "runs").exists()  # no run directory, no MLflow store


def test_dry_run_shows_cached_stages_with_their_wall_time(tmp_path, toyworld, capsys):
    config = make_config(tmp_path, toyworld)
    t = build_problems(config)
    secs = json.loads((t.out_dir / "stage.json").read_text())["seconds"]
    before = sorted(p.name for p in (tmp_path / "runs").rglob("*"))
    assert main(["--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"cached     Problems                 {t.out_dir} (took {secs:.1f} s)" in out
    assert "would run  Train-sft" in out
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == before
    # a forced stage is planned to run again, with what depends on it
    assert main(["--config", config, "--dry-run", "--force", "problems"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("  cached")]


def test_dry_run_exits_non_zero_on_a_config_error(tmp_path, toyworld, capsys):
    config = make_config(tmp_path, toyworld)
    assert main(["--config", config, "--dry-run", "--set", "rl.loss_type=ppo"]) == 2
    assert "rl.loss_type" in capsys.readouterr().err
    assert main(["--config", config, "--dry-run", "--force", "nope"]) == 2
    assert "--force: unknown stage(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_force_reruns_the_stage_and_everything_downstream_only(tmp_path, toyworld):
    config = make_config(tmp_path, toyworld)
    roots = [Report(config, {})]
    names = {plan.name_of(t) for t in plan.forced(roots, ["rl"])}
    assert names == {"rl", "eval-rl", "perplexity", "report"}  # not sft, not the base or teacher evaluations
    assert {plan.name_of(t) for t in plan.forced(roots, ["Train-sft"])} == {"sft", "eval-sft", "perplexity", "report"}
    assert len(plan.forced(roots, ["problems"])) == len(plan.dag(roots))  # everything reads the problems


def test_force_sets_the_output_aside_and_luigi_reruns_it(tmp_path, toyworld):
    config = make_config(tmp_path, toyworld)
    t = build_problems(config)
    first = json.loads((t.out_dir / "stage.json").read_text())["run_id"]
    aside = plan.set_aside(plan.forced([t], ["problems"]))
    assert aside == [t.out_dir.with_name(t.out_dir.name + ".forced")] and not t.complete()
    build_problems(config)
    assert json.loads((t.out_dir / "stage.json").read_text())["run_id"] != first
    plan.drop(aside)
    assert not aside[0].exists()


@pytest.mark.slow
def test_force_report_on_a_finished_study_reruns_the_report(smoke, tmp_path):
    out = tmp_path / "runs"  # a copy: the shared smoke study stays as other tests read it
    shutil.copytree(smoke[0], out)
    cfg_args = ["--config", "configs/smoke.yaml", "--set", f"output_dir={out}"]
    report = Path(out) / "smoke" / "report"
    first = json.loads((report / "stage.json").read_text())["run_id"]
    assert main([*cfg_args, "--force", "report"]) == 0
    assert json.loads((report / "stage.json").read_text())["run_id"] != first
    assert not report.with_name("report.forced").exists()


def test_clean_lists_then_removes_only_what_the_config_does_not_use(tmp_path, toyworld, capsys):
    config = make_config(tmp_path, toyworld)
    t = build_problems(config)
    run_dir = t.out_dir.parent
    old = [run_dir / "rl-0123456789", run_dir / "rl-0123456789.ckpt", run_dir / "problems-aaaaaaaaaa"]
    for d in old:
        d.mkdir()
    (run_dir / "logs").mkdir(exist_ok=True)
    assert main(["--config", config, "--clean"]) == 0
    out = capsys.readouterr().out
    assert all(str(d) in out for d in old) and str(t.out_dir) + " " not in out
    assert all(d.exists() for d in old)  # listed, not removed
    assert main(["--config", config, "--clean", "--yes"]) == 0
    assert not any(d.exists() for d in old)
    assert t.complete() and (run_dir / "logs").is_dir()
    assert main(["--config", config, "--clean"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_list_tasks_names_every_task_and_its_options(capsys):
    from tasks import task_names

    assert main(["--list-tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split(":", 1)[0] for line in lines if ":" in line}
    assert set(task_names()) <= listed
    by = {line.split(":", 1)[0]: line for line in lines}
    assert "max_value=30" in by["toy_arith"] and "train_file" in by["math"]
    assert "reward" in by["knights_knaves"]
