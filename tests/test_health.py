"""Training health on real log histories: the default study's GRPO run (learned), the first toy
world's GRPO run (did not: 0.03 -> 0.055 in 200 steps), and a short SFT run (learned)."""
from pathlib import Path

import pytest

from pipeline.health import check_arm, describe, plot_arm, read_history

H = Path(__file__).resolve().parent / "fixtures" / "log_histories"


def test_a_grpo_run_that_learned():
    h = check_arm(read_history(H / "rl_learning.json"), "rl")
    assert h["metric"] == "accuracy" and h["learned"] is True and h["reason"] is None
    assert h["ci_low"] > 0 and h["last"] >= 1.5 * h["first"] and h["last"] >= h["first"] + 0.15  # issue 8's bar
    assert describe("rl", h).startswith(f"training accuracy {h['first']:.3f} → {h['last']:.3f}")


def test_a_grpo_run_that_did_not_learn():
    h = check_arm(read_history(H / "rl_not_learning.json"), "rl")
    assert h["learned"] is False
    assert h["first"] == pytest.approx(0.0305, abs=1e-3) and h["last"] == pytest.approx(0.0555, abs=1e-3)
    # detectable (the CI is above zero) but negligible: below health.min_gain, so not a run that learned
    assert h["ci_low"] > 0 and "below health.min_gain=0.05" in h["reason"]
    assert check_arm(read_history(H / "rl_not_learning.json"), "rl", min_gain=0.0)["learned"] is True


def test_sft_uses_token_accuracy_and_too_short_histories_are_not_health():
    h = check_arm(read_history(H / "sft_learning.json"), "sft")
    assert h["metric"] == "mean_token_accuracy" and h["learned"] is True
    short = read_history(H / "rl_learning.json")[:2]
    assert check_arm(short, "rl")["learned"] is False and "only 2 logged points" in check_arm(short, "rl")["reason"]
    assert check_arm([{"loss": 1.0, "step": 1}], "rl")["reason"] == "no accuracy/reward in the log history"


def test_curves_are_drawn(tmp_path):
    png = plot_arm(read_history(H / "rl_learning.json"), "rl", tmp_path / "rl.png", "rl")
    assert png.stat().st_size > 10_000
    assert plot_arm([{"step": 1}], "sft", tmp_path / "none.png", "x") is None
