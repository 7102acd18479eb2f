"""The arms registry (pipeline.arms): arms are found by folder (pipeline/arms/ and DVR_ARMS_PATH), a
duplicate name is refused, and everything else (the config's sections, compute.devices, plots, health,
the report and the DAG) reads an arm from its one file: a throwaway arm in a temporary directory runs
through the smoke DAG to the report."""
import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pipeline.analysis import plots
from pipeline.arms import ENV, ArmError, arms
from pipeline.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

# a trivial but real arm: SFT on the teacher's traces under another name, colour and verdict
COPYCAT = '''
"""A throwaway arm: pipeline/arms/sft.py's trainer on the traces, as `copycat`."""
import sys

from pipeline.arms import Arm
from pipeline.arms.common import cli
from pipeline.arms.sft import SFTConfig, train_sft

ARM = Arm(name="copycat", data="traces", config=SFTConfig, title="SFT again, by another name", color="tab:cyan",
          coverage="gained", enabled=lambda cfg: cfg.copycat.enabled and cfg.teacher_model is not None,
          health_metrics=("mean_token_accuracy",), curves=("loss", "mean_token_accuracy"),
          verdicts=(("copycat_vs_base_kmax", "copycat", "base", "max", "max"),))


def _run(cfg, traces, out, base_model, seed, checkpoints=None):
    return train_sft(base_model, traces, cfg.copycat, out, seed, checkpoints, cfg.compute.checkpoint_steps)


if __name__ == "__main__":
    sys.exit(cli("copycat", "traces", "filtered teacher traces", _run))
'''


@pytest.fixture
def copycat(tmp_path, monkeypatch):
    d = tmp_path / "extra_arms"
    d.mkdir()
    (d / "copycat.py").write_text(COPYCAT)
    monkeypatch.setenv(ENV, str(d))
    return d


def test_an_arm_file_in_a_folder_is_an_arm_with_its_config_section(copycat, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert list(arms()) == ["sft", "rl", "distill", "rl_format", "rl_random", "copycat"]
    assert arms()["copycat"].module == "copycat"  # its file's name: `python -m pipeline.arms copycat`
    cfg = load_config("configs/smoke.yaml", {"copycat.max_steps": 3, "compute.devices": {"copycat": "0"}})
    assert cfg.copycat.max_steps == 3 and cfg.copycat.learning_rate == 5e-4 and cfg.sft.max_steps == 4
    assert cfg.compute.devices == {"copycat": "0"}
    assert list(cfg.model_dump())[8:14] == ["sft", "rl", "distill", "rl_format", "rl_random", "copycat"]  # the arms' sections, in order
    assert plots.color_of("copycat") == "tab:cyan" and plots.color_of("sft") == "tab:blue"
    with pytest.raises(ConfigError, match=r"smoke.yaml: copycat.bogus: unknown key"):
        load_config("configs/smoke.yaml", {"copycat.bogus": 1})
    with pytest.raises(ConfigError, match=r"compute.devices: unknown arm\(s\) \['nope'\]"):
        load_config("configs/smoke.yaml", {"compute.devices": {"nope": "0"}})


def test_without_the_folder_the_arm_is_gone(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(ENV, raising=False)
    assert list(arms()) == ["sft", "rl", "distill", "rl_format", "rl_random"]
    with pytest.raises(ConfigError, match=r"copycat: unknown key"):
        load_config("configs/smoke.yaml", {"copycat.max_steps": 3})


def test_a_duplicate_arm_name_is_refused_naming_both_files(copycat):
    (copycat / "again.py").write_text(COPYCAT)
    with pytest.raises(ArmError) as e:
        arms()
    msg = str(e.value)
    assert "'copycat' is declared twice" in msg and str(copycat / "copycat.py") in msg and str(copycat / "again.py") in msg
    assert "\n" not in msg


def test_a_missing_arm_folder_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ArmError, match=f"{ENV}: .*nowhere is not a directory"):
        arms()


@pytest.mark.slow
def test_a_throwaway_arm_runs_through_the_smoke_dag_to_the_report(copycat, tmp_path, toyworld):
    from conftest import run_smoke

    out = tmp_path / "runs"
    run_smoke(out, "--set", "rl.enabled=false", "--set", "sft.enabled=false", "--set",
              "copycat={learning_rate: 5.0e-4, max_steps: 4, per_device_train_batch_size: 8, max_length: 320, "
              "logging_steps: 1, extra: {gradient_checkpointing: false}}")
    rep = out / "smoke" / "report"
    assert set(pd.read_csv(rep / "passk.csv")["model"]) == {"base", "teacher", "copycat"}
    health = json.loads((rep / "health.json").read_text())
    assert set(health) == {"copycat"} and health["copycat"]["metric"] == "mean_token_accuracy"
    assert (rep / "training_copycat.png").is_file()
    assert {v["name"] for v in json.loads((rep / "verdicts.json").read_text())} == {"copycat_vs_base_kmax"}
    md = (rep / "report.md").read_text()
    assert "### Problems gained by copycat (copycat solves, base does not)" in md
    assert list((out / "smoke").glob("copycat-*/model/model.safetensors"))
