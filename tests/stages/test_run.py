"""The run wrapper: overrides and sweeps are validated up front; a sweep is one study."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.run import parse_assignments, plan
from pipeline.config.sweep import expand


def test_sweep_makes_one_valid_named_member_per_combination():
    _, sweep = plan("configs/smoke.yaml", parse_assignments(["rl.beta=0.04"], "--set"),
                    parse_assignments(["seed=0,1", "rl.loss_type=grpo,dapo"], "--sweep"))
    assert sweep.study == "smoke-sweep" and len(sweep.members) == 4
    names = [m.name for m in sweep.members]
    assert names[0] == "seed-0__rl.loss_type-grpo" and len(set(names)) == 4
    cfgs = [load_config("configs/smoke.yaml", m.overrides) for m in sweep.members]
    assert {(c.seed, c.rl.loss_type, c.rl.beta) for c in cfgs} == {
        (0, "grpo", 0.04), (0, "dapo", 0.04), (1, "grpo", 0.04), (1, "dapo", 0.04)}
    # one study: every member's stages live in runs/<study>/, each report in its own member directory
    assert {str(c.run_dir) for c in cfgs} == {"runs/smoke-sweep"}
    assert len({c.member_dir for c in cfgs}) == 4 and {c.experiment_name for c in cfgs} == {"smoke-sweep"}


def test_named_points_set_several_fields_at_once():
    sweep = expand("configs/smoke.yaml", "algos", {}, {
        "variant": {"grpo": {"rl.loss_type": "grpo"}, "rloo": {"rl.algorithm": "rloo", "rl.beta": 0.0}},
        "seed": [0, 1]}, ["algorithms"])
    assert [m.name for m in sweep.members] == ["variant-grpo__seed-0", "variant-grpo__seed-1",
                                               "variant-rloo__seed-0", "variant-rloo__seed-1"]
    c = load_config("configs/smoke.yaml", sweep.members[2].overrides)
    assert (c.rl.algorithm, c.seed, c.study, c.name) == ("rloo", 0, "algos", "variant-rloo__seed-0")


def test_bad_override_is_one_line_error_before_anything_runs():
    with pytest.raises(ConfigError, match=r"member rl.loss_type-ppo: .*rl.loss_type: Input should be"):
        plan("configs/smoke.yaml", {}, parse_assignments(["rl.loss_type=ppo"], "--sweep"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_assignments(["seed"], "--set")
    with pytest.raises(ConfigError, match=r"tables: unknown table 'nope'"):
        expand("configs/smoke.yaml", "s", {}, {"seed": [0]}, ["nope"])


def test_a_sweep_preset_loads_and_validates_every_member():
    import glob

    from pipeline.config.sweep import load_sweep

    presets = sorted(glob.glob("configs/sweeps/*.yaml"))
    assert presets
    for p in presets:
        sweep = load_sweep(p)
        assert sweep.tables and len(sweep.members) >= 2
