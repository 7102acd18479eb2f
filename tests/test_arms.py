"""The arms (pipeline.arms) and the RL variants, each a real TRL trainer run of a few steps on the
toy world: GRPO's loss types, the entropy options, RLOO, one-shot RLVR, the curriculum, snapshots,
on-policy distillation, and the SFT data-size subset."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.arms import arms, enabled_arms
from pipeline.config import ConfigError, DistillConfig, RLConfig, SFTConfig, TaskSpec, load_config
from pipeline.distill import build_distill_trainer
from pipeline.rl import build_rl_trainer, train_rl
from pipeline.sft import build_sft_trainer
from pipeline.train_common import LOG_HISTORY_FILE, SNAPSHOTS
from tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
FAST = {"gradient_checkpointing": False, "disable_tqdm": True}
SPEC = TaskSpec(name="toy_arith", train_size=8, test_size=2, levels=[1, 2])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    d = tmp_path_factory.mktemp("arms")
    probs = get_task("toy_arith").problems("train", 8, seed=0, levels=[1, 2])
    path = d / "train.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    return probs, path


def rl_cfg(**kw) -> RLConfig:
    base = dict(num_generations=4, per_device_train_batch_size=8, max_steps=2, max_completion_length=48,
                logging_steps=1, extra=FAST)
    return RLConfig(**{**base, **kw})


def test_the_registry_has_one_shape_for_every_arm():
    assert list(arms()) == ["sft", "rl", "distill"]
    for arm in arms().values():
        assert arm.module == f"pipeline.{arm.name}" and arm.data in ("traces", "problems") and arm.health_metrics
    cfg = load_config("configs/smoke.yaml")
    assert enabled_arms(cfg) == ["sft", "rl"]  # distill is opt-in (distill.enabled)
    assert enabled_arms(load_config("configs/smoke.yaml", {"distill.enabled": True, "rl.enabled": False})) == ["sft", "distill"]
    assert enabled_arms(load_config("configs/smoke.yaml", {"teacher_model": None})) == ["rl"]


VARIANTS = {
    "grpo": dict(loss_type="grpo"), "dapo": dict(loss_type="dapo", epsilon_high=0.28), "dr_grpo": dict(loss_type="dr_grpo"),
    "bnpo": dict(loss_type="bnpo"), "entropy_coef": dict(entropy_coef=0.01), "top20": dict(top_entropy_quantile=0.2),
    "rloo": dict(algorithm="rloo"), "curriculum": dict(curriculum=True), "beta": dict(beta=0.04),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rl_variant_trains_with_the_real_trl_trainer(variant, problems, tmp_path):
    cfg = rl_cfg(**VARIANTS[variant])
    trainer = build_rl_trainer("toyworld/base", str(problems[1]), [SPEC], cfg, str(tmp_path / "o"), seed=0)
    a = trainer.args
    if cfg.algorithm == "rloo":
        from trl import RLOOTrainer

        assert isinstance(trainer, RLOOTrainer) and not hasattr(a, "loss_type")
    else:
        assert (a.loss_type, a.entropy_coef, a.top_entropy_quantile, a.epsilon_high or None) == (
            cfg.loss_type, cfg.entropy_coef, cfg.top_entropy_quantile, cfg.epsilon_high)
    assert a.beta == cfg.beta
    if cfg.curriculum:  # easy to hard, no shuffling
        levels = [json.loads(p)["difficulty"] for p in trainer.train_dataset["problem"]]
        assert levels == sorted(levels) and a.shuffle_dataset is False
    trainer.train()
    logged = [r for r in trainer.state.log_history if "accuracy" in r]
    assert len(logged) == 2 and all(0 <= r["accuracy"] <= 1 for r in logged)


def test_rloo_refuses_grpo_only_options():
    with pytest.raises(ValueError, match="GRPO options"):
        rl_cfg(algorithm="rloo", top_entropy_quantile=0.2)


def test_one_shot_rlvr_repeats_the_highest_variance_problem(problems, tmp_path):
    probs, src = problems
    d = tmp_path / "rlprompts"
    (d / "base-train").mkdir(parents=True)
    shutil.copy(src, d / "train.jsonl")
    rates = {p.id: (i % 4) for i, p in enumerate(probs)}  # of 4: 0, 1, 2, 3 -> the variance peaks at 2/4
    with open(d / "base-train" / "per_problem.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["model", "problem_id", "n", "correct"])
        w.writerows(["base", pid, 4, c] for pid, c in rates.items())
    cfg = rl_cfg(one_shot=True, pass_rate_filter=True, max_steps=3)
    trainer = build_rl_trainer("toyworld/base", str(d / "train.jsonl"), [SPEC], cfg, str(tmp_path / "o"), seed=0)
    chosen = {json.loads(p)["id"] for p in trainer.train_dataset["problem"]}
    assert chosen == {probs[2].id}  # the first with 2 of 4 correct
    assert len(trainer.train_dataset) == 3 * 8 // 4  # max_steps x prompts per step: one epoch of copies
    with pytest.raises(ValueError, match="one_shot picks its problem"):
        rl_cfg(one_shot=True)


def test_snapshots_are_saved_during_training_and_kept_beside_the_model(problems, tmp_path):
    cfg = rl_cfg(max_steps=3, snapshots=2)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    metrics = train_rl("toyworld/base", str(problems[1]), [SPEC], cfg, str(out), seed=0, checkpoints=str(ckpt))
    assert metrics["global_step"] == 3
    snaps = sorted(p.name for p in (out / SNAPSHOTS).iterdir())
    assert snaps == ["step-1", "step-2"]
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out)
    first = AutoModelForCausalLM.from_pretrained(out / SNAPSHOTS / "step-1")
    assert any(not torch.equal(a, b) for a, b in zip(final.parameters(), first.parameters()))
    with pytest.raises(ValueError, match="snapshots=3 needs max_steps > snapshots"):
        rl_cfg(max_steps=3, snapshots=3)


def test_on_policy_distillation_trains_toward_the_teacher_and_logs_student_accuracy(problems, tmp_path):
    cfg = DistillConfig(enabled=True, max_steps=3, per_device_train_batch_size=4, max_completion_length=48,
                        logging_steps=1, extra=FAST)
    trainer = build_distill_trainer("toyworld/base", "toyworld/teacher", str(problems[1]), [SPEC], cfg,
                                    str(tmp_path / "o"), seed=0)
    from trl import DistillationTrainer

    assert isinstance(trainer, DistillationTrainer) and trainer.args.beta == 1.0  # reverse KL
    trainer.train()
    rows = [r for r in trainer.state.log_history if "accuracy" in r]
    assert len(rows) == 3 and all(r["loss"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows)


def test_distill_needs_a_teacher_with_the_students_tokenizer(tmp_path):
    other = tmp_path / "teacher"
    shutil.copytree(ROOT / "toyworld" / "teacher", other)
    c = json.loads((other / "config.json").read_text())
    c["vocab_size"] += 8
    (other / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match=r"distill.enabled: the base and the teacher do not share a tokenizer "
                                          r"\(vocab_size 144 vs 152\)"):
        load_config("configs/smoke.yaml", {"distill.enabled": True, "teacher_model": str(other)})
    with pytest.raises(ConfigError, match="distill.enabled needs a teacher_model"):
        load_config("configs/smoke.yaml", {"distill.enabled": True, "teacher_model": None})


def test_sft_data_size_takes_a_nested_seeded_subset(tmp_path):
    task = get_task("toy_arith")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("toyworld/base")
    rows = [{"prompt": task.prompt(p, tok), "completion": f"<answer>{p.answer}</answer>"}
            for p in task.problems("train", 20, seed=0, levels=[1])]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def kept(n, seed=0):
        t = build_sft_trainer("toyworld/base", str(path), SFTConfig(max_traces=n, max_steps=1, extra=FAST),
                              str(tmp_path / "o"), seed=seed)
        return [tuple(x) for x in t.train_dataset["input_ids"]]

    small, big, everything = kept(5), kept(12), kept(None)
    assert len(small) == 5 and len(big) == 12 and len(everything) == 20
    assert set(small) <= set(big) <= set(everything)
    assert set(kept(5, seed=1)) != set(small)


def test_logic_rl_on_knights_and_knaves_runs_end_to_end(tmp_path, toyworld):
    """The knights-knaves preset's DAG (Logic-RL reward, curriculum), at smoke size on the toy base:
    problems from reasoning-gym, GRPO with the shaped reward, evaluation, report."""
    from conftest import run_smoke

    # two-person puzzles: their prompts (430-470 tokens) and 40 new tokens fit the toy model's 512-token context
    tasks = "[{name: knights_knaves, train_size: 8, test_size: 4, levels: [2], options: {reward: logic_rl}}]"
    run_smoke(tmp_path, "--set", f"tasks={tasks}", "--set", "teacher_model=null", "--set", "rl.reward=logic_rl",
              "--set", "rl.curriculum=true", "--set", "rl.pass_rate_filter=false", "--set", "eval.perplexity_subset=0",
              "--set", "eval.max_tokens=40", "--set", "rl.max_completion_length=40")
    study = tmp_path / "smoke"
    history = json.loads(next(study.glob("rl-*/model/log_history.json")).read_text())
    rewards = [r["rewards/logic_rl/mean"] for r in history if "rewards/logic_rl/mean" in r]
    assert len(rewards) == 3 and all(-3 <= x <= 3 for x in rewards)
    lines = next(study.glob("problems-*/test.jsonl")).read_text().splitlines()
    assert {json.loads(line)["task"] for line in lines} == {"knights_knaves"}
    report = (study / "report" / "report.md").read_text()
    assert "knights_knaves" in report and "| rl |" in report
