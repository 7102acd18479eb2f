"""Config validation: every bad field gives one line naming the file, the field and what was expected."""
import copy
import re

import pytest
import yaml

from pipeline.config import ConfigError, load_config


def model_dir(path):
    """The least a model directory needs to pass the config check: config.json and whole weights."""
    import json

    import torch
    from safetensors.torch import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    return path


@pytest.fixture
def good(tmp_path):
    model_dir(tmp_path / "base")
    model_dir(tmp_path / "teacher")
    return {
        "name": "exp",
        "seed": 1,
        "base_model": str(tmp_path / "base"),
        "teacher_model": str(tmp_path / "teacher"),
        "tasks": [{"name": "chain_sum", "train_size": 10, "test_size": 5, "levels": [1, 2], "seed": 3}],
        "eval": {"n": 8, "ks": [1, 2, 8]},
        "rl": {"num_generations": 4, "per_device_train_batch_size": 8, "beta": 0.0, "loss_type": "grpo"},
    }


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_valid_config_loads_with_defaults(tmp_path, good):
    cfg = load_config(write(tmp_path, good))
    assert cfg.eval.k_list() == [1, 2, 8]
    assert cfg.rl.num_generations == 4 and cfg.eval.temperature == 0.6 and cfg.eval.top_p == 0.95
    assert cfg.tasks[0].levels == [1, 2]


def test_default_ks_are_powers_of_two_up_to_n(tmp_path, good):
    good["eval"] = {"n": 48}
    assert load_config(write(tmp_path, good)).eval.k_list() == [1, 2, 4, 8, 16, 32, 48]


def test_section_hash_tracks_only_its_sections(tmp_path, good):
    a = load_config(write(tmp_path, good))
    changed = copy.deepcopy(good)
    changed["rl"]["beta"] = 0.04
    b = load_config(write(tmp_path, changed))
    assert a.section_hash("rl") != b.section_hash("rl")
    assert a.section_hash("sft", "tasks", "base_model") == b.section_hash("sft", "tasks", "base_model")


@pytest.mark.parametrize(
    "mutate, field, expected",
    [
        (lambda d: d["rl"].update(bogus=1), "rl.bogus", "unknown key"),
        (lambda d: d.update(seed="abc"), "seed", "valid integer"),
        (lambda d: d["eval"].update(n=4, ks=[1, 8]), "eval", "k=8"),
        (lambda d: d.update(base_model="./no/such/model"), "base_model", "does not exist"),
        (lambda d: d["tasks"][0].update(name="no_such_task"), "tasks.0.name", "unknown task"),
        (lambda d: d["tasks"][0].update(test_size=0), "tasks.0.test_size", "greater than or equal to 1"),
        (lambda d: d.update(tasks=[]), "tasks", "at least 1"),
        (lambda d: d["eval"].update(backend="tgi"), "eval.backend", "'vllm', 'cb', 'hf' or 'auto'"),
        (lambda d: d["rl"].update(num_generations=3), "rl", "multiple of num_generations"),
        (lambda d: d.pop("base_model"), "base_model", "missing"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, good, mutate, field, expected):
    mutate(good)
    p = write(tmp_path, good)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: {field}:"), msg
    assert expected in msg, msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_hub_ids_pass_without_a_local_directory(tmp_path, good):
    good["teacher_model"] = "Qwen/Qwen2.5-7B-Instruct"
    assert load_config(write(tmp_path, good)).teacher_model == "Qwen/Qwen2.5-7B-Instruct"


def test_shipped_presets_are_valid():
    from pathlib import Path

    presets = sorted(Path("configs").glob("*.yaml"))
    assert presets, "configs/ has no presets"
    for p in presets:
        if p.name.startswith("toyworld"):
            continue  # the bootstrap recipe has its own schema
        load_config(p)


def test_an_override_can_index_a_list():
    from pipeline.config import ConfigError, load_config

    assert load_config("configs/tiny.yaml", {"tasks.0.test_size": 17}).tasks[0].test_size == 17
    for key, msg in (("tasks.3.test_size", "tasks is a list of 1; expected an index 0..0, got '3'"),
                     ("seed.x", "seed is 0, not a section")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config("configs/tiny.yaml", {key: 1})


def test_the_field_table_in_configuration_md_is_the_schemas():
    from pipeline.config.doc import DOC, field_table, render

    doc = DOC.read_text()
    assert render(doc) == doc, "docs/configuration.md's field table is out of date: run python -m pipeline.config.doc"
    assert "| `rl.loss_type` | 'grpo' \\| 'bnpo' \\| 'dr_grpo' \\| 'dapo' | `'dapo'` |" in field_table()
    assert "| `eval.n` |" in doc and "| `tasks[].test_size` | int | `100` |" in doc


def test_the_readme_example_is_a_sensible_real_model_study(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "my-study" in b]
    p = tmp_path / "my-study.yaml"
    p.write_text(block)
    cfg = load_config(str(p))
    # the toy world's defaults would cut the teacher's traces and RL's completions far below what
    # the evaluation allows, use DAPO's loss under the name GRPO, and train on problems never solved
    assert cfg.traces.generation.max_tokens >= cfg.eval.max_tokens
    assert cfg.rl.max_completion_length == cfg.eval.max_tokens
    assert cfg.sft.max_length >= cfg.traces.generation.max_tokens
    assert cfg.rl.loss_type == "grpo" and "GRPO" in block and cfg.rl.pass_rate_filter
    assert cfg.rl.learning_rate <= 1e-5 and cfg.sft.learning_rate <= 1e-4  # a 1.5B model's, not the toy's
    for t in cfg.tasks:
        for key in ("train_file", "test_file"):
            if key in t.options:
                assert Path(t.options[key]).is_file(), t.options[key]
