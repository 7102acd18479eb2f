"""The run wrapper: overrides and sweeps are validated up front and named apart."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.run import experiments, parse_assignments


def test_sweep_makes_one_valid_named_experiment_per_value():
    runs = experiments("configs/smoke.yaml", parse_assignments(["rl.beta=0.04"], "--set"),
                       parse_assignments(["seed=0,1", "rl.loss_type=grpo,dapo"], "--sweep"))
    assert len(runs) == 4
    names = [r["name"] for r in runs]
    assert names[0] == "smoke__seed-0__rl.loss_type-grpo" and len(set(names)) == 4
    cfgs = [load_config("configs/smoke.yaml", r) for r in runs]
    assert {(c.seed, c.rl.loss_type, c.rl.beta) for c in cfgs} == {
        (0, "grpo", 0.04), (0, "dapo", 0.04), (1, "grpo", 0.04), (1, "dapo", 0.04)}


def test_bad_override_is_one_line_error_before_anything_runs():
    with pytest.raises(ConfigError, match=r"rl.loss_type: Input should be"):
        experiments("configs/smoke.yaml", {}, parse_assignments(["rl.loss_type=ppo"], "--sweep"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_assignments(["seed"], "--set")
