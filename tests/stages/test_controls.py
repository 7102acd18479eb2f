"""Integration: the control arms (rl_random, rl_format), the sharpened base and the adaptive sample
budget through the smoke DAG with real Luigi, TRL and MLflow, and the report's sections about them."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run_smoke

pytestmark = pytest.mark.slow  # a whole smoke DAG with two more RL arms (the fast tier keeps test_dag's)


@pytest.fixture(scope="module")
def study(tmp_path_factory, toyworld):
    out = tmp_path_factory.mktemp("controls")
    run_smoke(out, "--set", "rl_random.enabled=true", "--set", "rl_format.enabled=true",
              "--set", "eval.sharpened_temperatures=[0.3]", "--set", "eval.target_ci_width=0.2", "--set", "eval.max_n=16")
    return out / "smoke"


def test_control_arms_train_on_rl_prompts_with_their_rewards(study):
    prompts = next(study.glob("rlprompts-*"))
    rates = pd.read_csv(prompts / "base-train" / "per_problem.csv", dtype={"problem_id": str}).set_index("problem_id")
    kept = [json.loads(line)["id"] for line in (prompts / "train.jsonl").read_text().splitlines()]
    expected = float((rates.loc[kept, "correct"] / rates.loc[kept, "n"]).mean())
    log = next((study / "logs").glob("rl_random-*.log")).read_text()
    assert f"probability {expected:.4f} (the base's mean pass rate)" in log
    for arm, curve in (("rl_random", "rewards/random/mean"), ("rl_format", "rewards/format/mean")):
        model = next(study.glob(f"{arm}-*")) / "model"
        history = json.loads((model / "log_history.json").read_text())
        assert any(curve in row for row in history) and any("accuracy" in row for row in history)
        assert json.loads((model / "train_metrics.json").read_text())["num_problems"] == len(kept)


def test_sharpened_base_is_the_base_at_its_own_temperature(study):
    d = next(study.glob("eval-base-T0.3-*"))
    summary = json.loads((d / "summary.json").read_text())
    assert summary["model"] == "base-T0.3" and summary["generation"]["temperature"] == 0.3
    base = json.loads((next(p for p in study.glob("eval-base-*") if "-T" not in p.name) / "summary.json").read_text())
    assert base["generation"]["temperature"] == 0.6 and summary["model_path"] == base["model_path"]


def test_report_nets_controls_and_sharpening(study):
    rep = study / "report"
    md = (rep / "report.md").read_text()
    data = json.loads((rep / "sharpening.json").read_text())
    nets = {(g["arm"], g["kind"], g["k"]): g for g in data["net_gains"]}
    pp = pd.read_csv(rep / "per_problem.csv")
    means = {m: float((g["correct"] / g["n"]).mean()) for m, g in pp[pp["model"].isin(["rl_random", "rl_format"])].groupby("model")}
    g = nets[("rl", "controls", 1)]  # the best is the control with the higher pass@1; the interval is simultaneous
    assert g["best_value"] == pytest.approx(max(means.values())) and means[g["best"]] == pytest.approx(max(means.values()))
    assert g["member_level"] == pytest.approx(0.975) and g["ci_low"] <= g["diff"] <= g["ci_high"]
    assert nets[("rl", "sharpened base", 1)]["best"] == "base-T0.3"
    assert not any(a in ("rl_random", "rl_format") for a, _, _ in nets)  # a control is not netted itself
    assert "### Gains net of the controls and of sharpening" in md and "control of rl: not required to learn" in md
    per_problem = pd.read_csv(rep / "per_problem.csv")
    assert set(per_problem["model"]) == {"base", "teacher", "sft", "rl", "rl_format", "rl_random", "base-T0.3"}


def test_adaptive_samples_are_those_a_uniform_evaluation_draws(study, tmp_path):
    d = next(study.glob("adaptive-*"))
    budget = json.loads((d / "budget.json").read_text())
    counts = pd.read_csv(d / "per_problem_adaptive.csv", dtype={"problem_id": str})
    assert counts["n"].between(8, 16).all() and budget["max_n"] == 16 and len(budget["rounds"]) >= 2
    added = [json.loads(line) for line in (d / "samples_adaptive.jsonl").read_text().splitlines()]
    assert added and all(8 <= s["sample_index"] < 16 for s in added)
    # the base evaluated uniformly at n = 16 draws the same samples 8..15 (cb: a sample is (seed, problem, index))
    base_eval = next(p for p in study.glob("eval-base-*") if "-T" not in p.name)
    out = tmp_path / "uniform"
    subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate", "--config", str(ROOT / "configs/smoke.yaml"),
                    "--model", str(ROOT / "toyworld/base"), "--name", "base", "--problems", str(base_eval / "problems.jsonl"),
                    "--n", "16", "--seed", "0", "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    uniform = {(r["problem_id"], r["sample_index"]): r["completion"]
               for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    base_added = [s for s in added if s["model"] == "base"]
    assert base_added and all(uniform[(s["problem_id"], s["sample_index"])] == s["completion"] for s in base_added)
    section = (study / "report" / "report.md").read_text().split("## Adaptive sample budget")[1]
    assert f"with {budget['samples']:,} samples" in section and "difference [96% CI], adaptive" in section
    assert all(f"{w:.3f}" in section for w in budget["rounds"][-1]["widths"].values())
    assert (budget["uniform_n_same_width"] is None) == (budget["uniform_n_reason"] is not None)
