"""Mistakes caught when the config loads, before the first stage (docs/bad-input.md, "Caught at load"):
each is one line naming the field or file and what was expected. Every one of them used to pass
validation and fail later (in the Problems stage, when training or evaluation started) or not at all."""
import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.config.sweep import expand, load_sweep
from pipeline.run import parse_assignments, plan

ROOT = Path(__file__).resolve().parents[2]


def smoke_with(tmp_path, text: str | None = None, **changes) -> Path:
    """configs/smoke.yaml with top-level changes (a dict value replaces a section's keys one by one)."""
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data.update(output_dir=str(tmp_path / "runs"), base_model=str(ROOT / "toyworld" / "base"),
                teacher_model=str(ROOT / "toyworld" / "teacher"))
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    p = tmp_path / "c.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return p


def refused(path, match, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ---- names and directories --------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("name", ".."), ("name", "."), ("study", "..")])
def test_dot_names_are_refused(tmp_path, field, value):
    refused(smoke_with(tmp_path, **{field: value}), f"{field}: '{value}' is not a directory name of its own")


def test_a_sweep_study_named_dotdot_is_refused():
    with pytest.raises(ConfigError, match=r"study: '\.\.' is not a directory name"):
        plan("configs/smoke.yaml", {}, parse_assignments(["seed=0,1"], "--sweep"), study="..")


# ---- tasks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [[0], [-3, 99]])
def test_toy_arith_levels_out_of_range(tmp_path, levels):
    refused(smoke_with(tmp_path, tasks=[{"name": "toy_arith", "levels": levels}]), "tasks.0.levels: ")


def test_toy_arith_refuses_an_unknown_option(tmp_path):
    msg = refused(smoke_with(tmp_path, tasks=[{"name": "toy_arith", "options": {"max_valu": 50}}]), "tasks.0.options: ")
    assert "'max_valu'" in msg and "max_value" in msg


def test_math_without_files_is_refused(tmp_path):
    msg = refused(smoke_with(tmp_path, tasks=[{"name": "math", "train_size": 0, "test_size": 5}]), "tasks.0.options: ")
    assert "test_file" in msg


def test_a_test_size_beyond_the_files_rows_is_refused(tmp_path):
    f = ROOT / "data" / "benchmarks" / "gsm8k.test.jsonl"
    rows = sum(1 for line in f.read_text().splitlines() if line.strip())
    spec = {"name": "math", "train_size": 0, "test_size": 5000, "options": {"test_file": str(f)}}
    msg = refused(smoke_with(tmp_path, tasks=[spec], rl={"reward": "verify"}), "tasks.0.test_size: 5000 asked for")
    assert f"has {rows} problems" in msg
    load_config(smoke_with(tmp_path, tasks=[{**spec, "test_size": rows}]))  # exactly the rows: fine


# ---- arms' extra against TRL's own config classes -------------------------------------------------
@pytest.mark.parametrize("section, extra, match", [
    ("rl", {"lr_scheduler_type": "cosin"}, "rl.extra.lr_scheduler_type: 'cosin' is not one of trl.GRPOConfig's values"),
    ("rl", {"no_such_field": 1}, "rl.extra.no_such_field: unknown key (expected a field of trl.GRPOConfig)"),
    ("rl", {"num_iterations": "two"}, "rl.extra.num_iterations: expected int"),
    ("sft", {"packing_strategy": 3, "optim": "adamw_tourch"}, "sft.extra.packing_strategy: expected"),
    ("sft", {"optim": "adamw_tourch"}, "sft.extra.optim: 'adamw_tourch' is not one of trl.SFTConfig's values"),
])
def test_arm_extra_is_checked_against_trl_at_load(tmp_path, section, extra, match):
    refused(smoke_with(tmp_path, **{section: {"extra": extra}}), match)


def test_good_extras_load(tmp_path):
    cfg = load_config(smoke_with(tmp_path, rl={"extra": {"lr_scheduler_type": "cosine", "num_iterations": 2,
                                                         "gradient_checkpointing": False, "max_grad_norm": 1}}))
    assert cfg.rl.extra["lr_scheduler_type"] == "cosine"


# ---- models ----------------------------------------------------------------------------------------
def test_a_typod_local_path_is_not_taken_for_a_hub_id():
    msg = refused("configs/smoke.yaml", "toyworld/bse", {"base_model": "toyworld/bse"})
    assert "toyworld/{base,teacher}" in msg


def test_eval_max_tokens_beyond_the_models_context(tmp_path):
    ctx = json.loads((ROOT / "toyworld" / "base" / "config.json").read_text())["max_position_embeddings"]
    refused(smoke_with(tmp_path, eval={"max_tokens": ctx + 1}), f"eval.max_tokens: {ctx + 1} tokens exceed base_model")
    refused(smoke_with(tmp_path, traces={"generation": {"max_tokens": 4 * ctx}}),
            "traces.generation.max_tokens: ")


# ---- bounds and combinations -----------------------------------------------------------------------
@pytest.mark.parametrize("section, field, value", [
    ("eval", "n", 10**12), ("eval", "bootstrap", 10**9), ("rl", "max_steps", 10**18)])
def test_numbers_have_upper_bounds(tmp_path, section, field, value):
    refused(smoke_with(tmp_path, **{section: {field: value}}), f"{section}.{field}: Input should be less than or equal")


def test_num_processes_without_accelerate_is_refused(tmp_path):
    refused(smoke_with(tmp_path, compute={"num_processes": 8}), "compute: num_processes: 8 has no effect with launcher: python")


def test_greedy_evaluation_with_several_samples_is_refused(tmp_path):
    refused(smoke_with(tmp_path, eval={"temperature": 0}), "eval: temperature 0 is greedy decoding")
    load_config(smoke_with(tmp_path, eval={"temperature": 0, "n": 1, "bootstrap": 200}))


def test_a_config_with_no_arm_is_refused(tmp_path):
    refused(smoke_with(tmp_path, rl={"enabled": False}, teacher_model=None), "no arm is enabled")


# ---- YAML and the command line ----------------------------------------------------------------------
def test_a_duplicate_key_is_refused(tmp_path):
    text = (ROOT / "configs" / "smoke.yaml").read_text() + "seed: 1\n"
    refused(smoke_with(tmp_path, text=text), "seed: the key appears twice in one mapping")


def test_a_duplicate_key_in_a_sweep_preset_is_refused(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("config: configs/smoke.yaml\nsweep:\n  seed: [0, 1]\n  seed: [2, 3]\ntables: [algorithms]\n")
    with pytest.raises(ConfigError, match="s.yaml:4: seed: the key appears twice"):
        load_sweep(p)


def test_scientific_notation_is_a_number(tmp_path):
    assert load_config(smoke_with(tmp_path, text=(ROOT / "configs" / "smoke.yaml").read_text()
                                  .replace("eval: {n: 8,", "eval: {n: 1e3,"))).eval.n == 1000
    assert parse_assignments(["eval.n=1e3"], "--set") == {"eval.n": [1000.0]}


def test_the_same_key_swept_twice_is_refused():
    with pytest.raises(ConfigError, match="--sweep seed: swept twice"):
        parse_assignments(["seed=0,1", "seed=2,3"], "--sweep")


@pytest.mark.parametrize("key", ["name", "study", "output_dir"])
def test_sweeping_a_name_or_the_output_dir_is_refused(key):
    with pytest.raises(ConfigError, match=f"sweep: {key} cannot be swept"):
        plan("configs/smoke.yaml", {}, parse_assignments([f"{key}=a,b"], "--sweep"))


def test_sweeping_a_field_of_a_disabled_arm_is_refused():
    with pytest.raises(ConfigError, match="sweep: distill.beta: the distill arm is not enabled"):
        plan("configs/smoke.yaml", {}, parse_assignments(["distill.beta=0.5,1.0"], "--sweep"))
    _, sw = plan("configs/smoke.yaml", {}, parse_assignments(["distill.enabled=true,false"], "--sweep"))
    assert len(sw.members) == 2


def test_a_key_set_by_two_axes_is_refused():
    with pytest.raises(ConfigError, match="seed is set by two axes"):
        expand("configs/smoke.yaml", "s", {}, {"seed": [0, 1], "variant": {"a": {"seed": 2}, "b": {"rl.beta": 0.1}}})


def test_tables_as_a_string_is_named_as_such(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("config: configs/smoke.yaml\nsweep: {seed: [0, 1]}\ntables: sharpening\n")
    with pytest.raises(ConfigError, match=r"tables: expected a list of table names, e.g. \[sharpening\]"):
        load_sweep(p)


def test_a_typod_sweep_key_names_it(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("config: configs/smoke.yaml\nsweeps: {seed: [0, 1]}\ntables: [algorithms]\n")
    with pytest.raises(ConfigError, match=r"s.yaml: sweeps: unknown key"):
        plan(str(p), {}, {})


def test_a_bad_set_value_is_one_line():
    with pytest.raises(ConfigError, match=r"--set eval.ks='\[1,2': not a valid YAML value"):
        parse_assignments(["eval.ks=[1,2"], "--set")


def test_sweep_values_may_contain_commas_inside_brackets():
    _, sw = plan("configs/smoke.yaml", {}, parse_assignments(["tasks.0.levels=[1,2],[3,4]"], "--sweep"))
    assert [m.values["tasks.0.levels"] for m in sw.members] == [[1, 2], [3, 4]]
    assert [load_config("configs/smoke.yaml", m.overrides).tasks[0].levels for m in sw.members] == [[1, 2], [3, 4]]


def test_a_missing_sweep_preset_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: sweep preset not found"):
        load_sweep(tmp_path / "nope.yaml")
