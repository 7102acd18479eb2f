"""Outside models (config `outside:`): models a study evaluates but does not train. Their names are checked like
arm names, their `from` must name a model of the study, and the presets that use them validate."""
import re
from pathlib import Path

import pytest

from pipeline.arms import row_verdicts, rows
from pipeline.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def outside(*entries):
    return {"outside": [dict(e) for e in entries]}


ONE = {"name": "zoo", "ref": "org/some-rl-model", "from": "base", "label": "GRPO, elsewhere"}


@pytest.mark.parametrize("name, taken", [("base", "the base model"), ("teacher", "the teacher"), ("rl", "an arm"),
                                         ("rl_random", "an arm"), ("base-T0.3", "a sharpened base row")])
def test_a_name_taken_by_another_row_is_refused_in_one_line(name, taken, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", {**outside({**ONE, "name": name}), "eval.sharpened_temperatures": [0.3]})
    msg = str(e.value)
    assert "\n" not in msg and f"outside[0].name: {name!r} is taken by {taken}" in msg


def test_two_outside_models_with_one_name_and_a_bad_from_are_refused(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=re.escape("outside[1].name: 'zoo' is taken by outside[0]")):
        load_config("configs/smoke.yaml", outside(ONE, ONE))
    for bad in ("sft", "teacher", "later"):  # from: the base or an outside model listed before it
        with pytest.raises(ConfigError, match=re.escape(f"outside[0].from: {bad!r} is not base or an outside model")):
            load_config("configs/smoke.yaml", outside({**ONE, "from": bad}, {**ONE, "name": "later"}))
    cfg = load_config("configs/smoke.yaml", outside(ONE, {**ONE, "name": "zoo-longer", "from": "zoo"}))
    assert [o.trained_from for o in cfg.outside] == ["base", "zoo"]


@pytest.mark.parametrize("field, value, expected", [
    ("ref", "./no/such/model", "outside.0.ref: local model path './no/such/model' does not exist"),
    ("name", "a/b", "outside.0.name: String should match pattern"),
    ("label", "", "outside.0.label: String should have at least 1 character"),
    ("bogus", 1, "outside.0.bogus: unknown key")])
def test_a_bad_field_names_itself(field, value, expected, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("configs/smoke.yaml", outside({**ONE, field: value}))


def test_from_is_written_as_from_and_read_back(monkeypatch):
    """A stage writes its config beside its output and its process reads it back: `from` survives the trip."""
    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/smoke.yaml", outside({**ONE, "from": "base"}, {**ONE, "name": "b", "from": "zoo"}))
    dumped = cfg.model_dump(mode="json")
    assert dumped["outside"][1] == {"name": "b", "ref": "org/some-rl-model", "from": "zoo", "label": "GRPO, elsewhere"}
    assert parse_config(dumped) == cfg


def test_rows_and_verdicts_of_an_outside_model(monkeypatch):
    """An outside model is a row after the arms, with the RL arm's two verdicts against its `from` model."""
    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/smoke.yaml", outside(ONE))
    assert rows(cfg) == ["sft", "rl", "zoo"]
    assert row_verdicts(cfg)[-2:] == [("zoo_vs_base_pass1", "zoo", "base", 1, 1),
                                      ("base_vs_zoo_kmax", "base", "zoo", "max", "max")]
    rl = [v for v in row_verdicts(cfg) if "rl" in v[1:3]]
    assert [(a.replace("rl", "zoo"), b.replace("rl", "zoo"), ka, kb) for _, a, b, ka, kb in rl] == \
        [(a, b, ka, kb) for _, a, b, ka, kb in row_verdicts(cfg)[-2:]]


def test_an_evaluation_only_study_is_valid(monkeypatch):
    """Base plus outside models, nothing trained and no teacher: the smoke-size preset and the paper's zoo."""
    monkeypatch.chdir(ROOT)
    for preset, names in (("configs/smoke-outside.yaml", ["outside-teacher"]),
                          ("configs/paper-zoo.yaml", ["simplerl-zoo", "oat-zero", "r1-distill"])):
        cfg = load_config(preset)
        assert cfg.teacher_model is None and rows(cfg) == names
        assert all(o.trained_from == "base" and o.label for o in cfg.outside)


def test_the_paper_zoo_names_the_published_checkpoints_by_hub_id(monkeypatch):
    """configs/paper-zoo.yaml: Qwen2.5-Math-7B and the RL and distilled models trained from it, by hub id; its
    test sets are the shipped files (evaluation only: no training problems)."""
    from tasks import problems_for

    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/paper-zoo.yaml")
    assert cfg.base_model == "Qwen/Qwen2.5-Math-7B"
    assert {o.ref for o in cfg.outside} == {"hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zoo", "sail/Qwen2.5-Math-7B-Oat-Zero",
                                            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.n) == (0.6, 0.95, 128)
    assert problems_for(cfg.tasks, "train") == [] and len(problems_for(cfg.tasks, "test")) == 570


def test_the_papers_other_pairs_validate_as_overrides_of_the_zoo(monkeypatch):
    """The pairs configs/paper-zoo.yaml's comment names, each a study of its own base."""
    monkeypatch.chdir(ROOT)
    for base, ref in (("Qwen/Qwen2.5-7B", "hkust-nlp/Qwen-2.5-7B-SimpleRL-Zoo"),
                      ("meta-llama/Llama-3.1-8B", "hkust-nlp/Llama-3.1-8B-SimpleRL-Zoo"),
                      ("Qwen/Qwen2.5-32B", "BytedTsinghua-SIA/DAPO-Qwen-32B")):
        cfg = load_config("configs/paper-zoo.yaml", {"base_model": base, **outside({**ONE, "ref": ref})})
        assert rows(cfg) == ["zoo"] and cfg.outside[0].ref == ref
