"""Training health on real log histories: the default study's GRPO run (learned), the first toy
world's GRPO run (did not: 0.03 -> 0.055 in 200 steps), and a short SFT run (learned); flat,
falling and too-short runs; the probe set of curriculum and one-shot runs; a curriculum's reach."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.analysis.health import autocorrelation, check_arm, check_probe, describe, plot_arm, read_history

H = Path(__file__).resolve().parents[1] / "fixtures" / "log_histories"


def test_a_grpo_run_that_learned():
    h = check_arm(read_history(H / "rl_learning.json"), "rl")
    assert h["metric"] == "accuracy" and h["learned"] is True and h["reason"] is None
    assert h["ci_low"] > 0 and h["last"] >= 1.5 * h["first"] and h["last"] >= h["first"] + 0.15  # issue 8's bar
    assert describe("rl", h).startswith(f"training accuracy {h['first']:.3f} → {h['last']:.3f}")


def test_a_grpo_run_that_did_not_learn():
    """The first toy world's GRPO run: accuracy 0.03 -> 0.055 over 100 logged points. Its own residuals show
    almost no autocorrelation, so the gate sees that small rise (lower bound above 0), and the run fails on
    health.min_gain: +0.025 is half the 0.05 a run must gain. The windows are checked by hand."""
    hist = read_history(H / "rl_not_learning.json")
    acc = np.array([r["accuracy"] for r in hist if "accuracy" in r and "train_runtime" not in r])
    assert len(acc) == 100
    first, last = acc[:10].mean(), acc[-20:].mean()  # the first 10% and the last 20% of the points
    h = check_arm(hist, "rl")
    assert h["judged"] is True and h["learned"] is False
    assert h["first"] == pytest.approx(first) and h["last"] == pytest.approx(last) and h["diff"] < 0.05
    assert h["reason"] == f"the gain {last - first:+.3f} is below health.min_gain=0.05"
    # the run's own lag-1 autocorrelation of residuals around a line, by hand, before the bias correction
    t = np.arange(100)
    e = acc - np.polyval(np.polyfit(t, acc, 1), t)
    r = (e[1:] * e[:-1]).sum() / (e ** 2).sum()
    assert autocorrelation(acc) == pytest.approx(max(0.0, r + (1 + 4 * r) / 100))
    lenient = check_arm(hist, "rl", min_gain=0.0)
    assert lenient["ci_low"] > 0 and lenient["learned"] is True  # a real, small rise: min_gain is what rejects it


def test_sft_uses_token_accuracy_and_too_short_histories_are_not_judged():
    h = check_arm(read_history(H / "sft_learning.json"), "sft")
    assert h["metric"] == "mean_token_accuracy" and h["learned"] is True and h["judged"] is True
    short = read_history(H / "rl_learning.json")[:5]
    h = check_arm(short, "rl")
    assert h["judged"] is False and h["learned"] is False and "not judged: only 5 logged points" in h["reason"]
    assert describe("rl", h).startswith("rl: not judged: only 5 logged points")
    assert check_arm([{"loss": 1.0, "step": 1}], "rl")["reason"] == "not judged: no accuracy/reward in the log history"


def _history(values):
    return [{"step": 5 * (i + 1), "accuracy": v} for i, v in enumerate(values)]


def test_health_flat_and_falling_runs_did_not_learn():
    rng = np.random.default_rng(1)
    flat = check_arm(_history(0.4 + 0.03 * rng.standard_normal(30)), "rl")
    assert flat["judged"] is True and flat["learned"] is False and "lower bound is at or below 0" in flat["reason"]
    falling = check_arm(_history(np.linspace(0.6, 0.2, 30) + 0.03 * rng.standard_normal(30)), "rl")
    assert falling["judged"] is True and falling["learned"] is False and falling["diff"] < -0.2
    assert falling["reason"].startswith("the metric fell (-0.")
    rising = check_arm(_history(np.linspace(0.2, 0.6, 30) + 0.03 * rng.standard_normal(30)), "rl")
    assert rising["learned"] is True and rising["first_steps"] == [5, 15] and rising["last_steps"] == [125, 150]


def test_health_reads_a_probe():
    start, end = [1, 0, 2, 1, 0, 3, 1, 0, 2, 1], [3, 2, 4, 2, 1, 4, 3, 1, 4, 2]
    h = check_probe({"samples": 4, "problems": [str(i) for i in range(10)], "start": start, "end": end})
    assert h["source"] == "probe.json" and h["judged"] is True and h["learned"] is True
    assert h["first"] == pytest.approx(0.275) and h["last"] == pytest.approx(0.65) and h["ci_low"] > 0
    same = check_probe({"samples": 4, "start": start, "end": start})
    assert same["learned"] is False and same["diff"] == 0
    few = check_probe({"samples": 4, "start": start[:3], "end": end[:3]})
    assert few["judged"] is False and "only 3 probe problems" in few["reason"]


def test_a_metric_at_its_floor_or_ceiling_is_not_judged():
    """All zeros (the Logic-RL run on SmolLM2: 32 probe problems x 4 samples, none right at the start or
    the end) give a zero-width interval, certain where nothing was measured: not judged, with the reason."""
    floor = check_probe({"samples": 4, "start": [0] * 32, "end": [0] * 32})
    assert floor["judged"] is False and floor["learned"] is False and "its floor" in floor["reason"]
    assert "ci_low" not in floor and describe("rl", floor).startswith("rl: not judged: the probe accuracy is 0")
    ceiling = check_probe({"samples": 4, "start": [4] * 10, "end": [4] * 10})
    assert ceiling["judged"] is False and "its ceiling" in ceiling["reason"]
    flat = check_arm(_history([0.0] * 15), "rl")
    assert flat["judged"] is False and "accuracy is 0 at every one of the 15 logged points" in flat["reason"]
    assert check_probe({"samples": 4, "start": [0] * 31 + [1], "end": [0] * 32})["judged"] is True


def test_curves_are_drawn(tmp_path):
    png = plot_arm(read_history(H / "rl_learning.json"), "rl", tmp_path / "rl.png", "rl")
    assert png.stat().st_size > 10_000
    assert plot_arm([{"step": 1}], "sft", tmp_path / "none.png", "x") is None


@pytest.mark.parametrize("variant", ["curriculum", "one_shot"])
def test_health_of_curriculum_and_one_shot_runs_reads_the_probe(variant, tmp_path, toyworld, one_torch_thread):
    """Both change what the log's windows hold (easy then hard prompts; one memorised problem), so
    train_rl scores a fixed probe set at the start and the end, and the report's health reads it."""
    import csv
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import RLConfig, TaskSpec
    from pipeline.analysis.probe import PROBE_SAMPLES, score
    from pipeline.stages.report import training_health
    from pipeline.arms.rl import train_rl
    from tasks import build_tasks, get_task

    spec = TaskSpec(name="toy_arith", train_size=12, test_size=2, levels=[1, 2])
    probs = get_task("toy_arith").problems("train", 12, seed=0, levels=[1, 2])
    d = tmp_path / "rlprompts"
    (d / "base-train").mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    with open(d / "base-train" / "per_problem.csv", "w") as f:  # one-shot's pick: the only 2-of-4 problem
        csv.writer(f).writerows([["model", "problem_id", "n", "correct"]] +
                                [["base", p.id, 4, 2 if i == 3 else 0] for i, p in enumerate(probs)])
    variant_fields = dict(curriculum=True) if variant == "curriculum" else dict(one_shot=True, pass_rate_filter=True)
    cfg = RLConfig(num_generations=4, per_device_train_batch_size=8, max_steps=2, max_completion_length=24,
                   logging_steps=1, extra={"gradient_checkpointing": False, "disable_tqdm": True}, **variant_fields)
    out = tmp_path / "model"
    # as in the DAG: checkpoints elsewhere, so the model directory does not exist until the model is saved
    train_rl(str(toyworld / "base"), str(d / "train.jsonl"), [spec], cfg, str(out), seed=0,
             checkpoints=str(tmp_path / "ckpt"), save_steps=100)
    probe = json.loads((out / "probe.json").read_text())
    expected = 11 if variant == "one_shot" else 12  # every distinct problem but the one-shot one
    assert len(probe["problems"]) == len(set(probe["problems"])) == expected
    assert (probes_one_shot := probs[3].id in probe["problems"]) is (variant != "one_shot"), probes_one_shot
    assert len(probe["start"]) == len(probe["end"]) == expected and probe["samples"] == PROBE_SAMPLES
    assert all(0 <= c <= PROBE_SAMPLES for c in probe["start"] + probe["end"])
    if variant == "curriculum":  # the start is the base's own score on the probe, before the first step
        by_id = {p.id: p for p in probs}
        base = AutoModelForCausalLM.from_pretrained(toyworld / "base")
        assert score(base, AutoTokenizer.from_pretrained(toyworld / "base"), build_tasks([spec]),
                     [by_id[i] for i in probe["problems"]], samples=PROBE_SAMPLES, temperature=cfg.temperature,
                     top_p=cfg.top_p, max_tokens=cfg.max_completion_length, seed=0) == probe["start"]
    h = training_health({"rl": out / "log_history.json"}, tmp_path, seed=0, min_gain=0.05)["rl"]
    assert h["source"] == "probe.json" and h["metric"] == "probe accuracy" and h["points"] == expected
    assert h["judged"] is True and h["first"] == pytest.approx(sum(probe["start"]) / (PROBE_SAMPLES * expected))


def test_health_a_curriculum_must_reach_every_level_it_names():
    from pipeline.config import ConfigError, load_config

    cfg = load_config("configs/knights-knaves.yaml")  # the preset: 30 steps x 2 prompts reach both levels
    assert cfg.rl.curriculum and cfg.rl.max_steps * cfg.rl.prompts_per_step() >= cfg.tasks[0].train_size
    tasks = "[{name: knights_knaves, train_size: 64, levels: [2, 3], options: {reward: logic_rl}}]"
    with pytest.raises(ConfigError, match=r"rl.curriculum: rl.max_steps=16 x 2 prompts per step = 32 prompts never "
                                          r"reach level 3 .*expected rl.max_steps >= 17"):
        load_config("configs/knights-knaves.yaml", {"tasks": yaml.safe_load(tasks), "rl.max_steps": 16})
    assert load_config("configs/knights-knaves.yaml", {"tasks": yaml.safe_load(tasks), "rl.max_steps": 17})


def test_the_probe_bound_is_labelled_at_its_level():
    """The probe's paired bound runs at PROBE_LEVEL (0.965), and its words and the report's table say so."""
    from pipeline.analysis.health import PROBE_LEVEL, check_probe
    from pipeline.stages.report import health_markdown

    h = check_probe({"samples": 4, "start": [1, 2, 0, 3] * 8, "end": [1, 2, 0, 3] * 8})
    assert h["level"] == PROBE_LEVEL == 0.965 and not h["learned"] and "one-sided 96.5% lower bound" in h["reason"]
    assert "(96.5%)" in "\n".join(health_markdown({"rl": h}))
