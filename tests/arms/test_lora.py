"""LoRA arms (an arm's `lora:` section, pipeline/arms/lora.py): real TRL runs with peft on the toy
world. Each trains only its adapters (the base's weights stay bit for bit), SFT's loss falls, the saved
model is the adapter merged into the base, and that merged model evaluates as the adapter on top of
the base does; the stage identity covers the LoRA settings."""
import json
from pathlib import Path

import pytest
import torch
from luigi.task_register import Register
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.arms.common import LOG_HISTORY_FILE, METRICS_FILE, TrainInputError, finish
from pipeline.arms.distill import build_distill_trainer
from pipeline.arms.lora import ADAPTER, LoraSection, language_model, merged_state_dict, peft_config
from pipeline.arms.rl import build_rl_trainer
from pipeline.arms.sft import build_sft_trainer
from pipeline.config import ConfigError, DistillConfig, RLConfig, SFTConfig, TaskSpec, load_config
from pipeline.sampling import engine
from tasks import get_task
from tasks.base import encode_prompt
from tasks.toy_arith import chain_steps, completion_text, parse_chain, plain_step

ROOT = Path(__file__).resolve().parents[2]
BASE, TEACHER = str(ROOT / "toyworld/base"), str(ROOT / "toyworld/teacher")
FAST = {"gradient_checkpointing": False, "disable_tqdm": True}
SPEC = TaskSpec(name="toy_arith", train_size=8, test_size=2, levels=[1, 2])
LORA = LoraSection(enabled=True, rank=4, alpha=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    task = get_task("toy_arith")
    probs = task.problems("train", 8, seed=0, levels=[1, 2])
    (d / "train.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    tok = AutoTokenizer.from_pretrained(BASE)
    rows = []
    for p in probs:  # the solver's chains, as a teacher writes them
        terms, ops = parse_chain(p.question)
        lines = [plain_step(a, op, b) for a, op, b, _ in chain_steps(terms, ops)]
        rows.append({"prompt": task.prompt(p, tok), "completion": completion_text(lines, p.answer)})
    (d / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"dir": d, "problems": str(d / "train.jsonl"), "traces": str(d / "traces.jsonl"), "rows": rows}


def base_weights() -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(BASE).state_dict()


def split(trainer) -> tuple[dict, dict]:
    """The trained PeftModel's frozen weights (under the base's own names) and its adapter weights."""
    frozen, adapter = {}, {}
    for k, v in language_model(trainer.model).state_dict().items():
        if ".lora_" in k:
            adapter[k] = v.detach().clone()
        else:
            frozen[k.replace(".base_layer.", ".")] = v.detach().clone()
    return frozen, adapter


def assert_only_adapters_trained(trainer, base: dict, adapter_before: dict) -> None:
    frozen, adapter = split(trainer)
    assert sorted(frozen) == sorted(base)
    changed = [k for k in base if not torch.equal(frozen[k], base[k])]
    assert changed == []  # every base weight bit for bit as loaded
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad and ".lora_" not in n] == []
    moved = [k for k in adapter if not torch.equal(adapter[k], adapter_before[k])]
    assert any(".lora_B." in k for k in moved) and any(".lora_A." in k for k in moved)  # B starts at 0: it moved


# ---- config ----------------------------------------------------------------------------------------
def test_lora_is_off_by_default_and_maps_to_peft_fields():
    cfg = load_config(ROOT / "configs/smoke.yaml")
    assert not cfg.sft.lora.enabled and not cfg.rl.lora.enabled and not cfg.distill.lora.enabled
    assert peft_config(cfg.rl.lora, "rl") is None
    cfg = load_config(ROOT / "configs/smoke.yaml", {"rl.lora": {"enabled": True, "rank": 8, "alpha": 16, "dropout": 0.1,
                                                                "target_modules": ["q_proj", "v_proj"],
                                                                "extra": {"use_rslora": True}}})
    pc = peft_config(cfg.rl.lora, "rl")
    assert (pc.r, pc.lora_alpha, pc.lora_dropout, sorted(pc.target_modules), pc.use_rslora) == (
        8, 16, 0.1, ["q_proj", "v_proj"], True)
    assert pc.task_type == "CAUSAL_LM"


def test_bad_lora_settings_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"rl\.lora\.target_modules: lm_head: .*never trains"):
        load_config(ROOT / "configs/smoke.yaml", {"rl.lora.target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(ConfigError, match=r"sft\.lora\.rank"):
        load_config(ROOT / "configs/smoke.yaml", {"sft.lora.rank": 0})
    with pytest.raises(ConfigError, match=r"distill\.lora\.ranks: unknown key"):
        load_config(ROOT / "configs/smoke.yaml", {"distill.lora.ranks": 4})
    with pytest.raises(TrainInputError, match=r"^rl\.lora\.extra: unknown key\(s\) \['rnak'\]"):
        peft_config(LoraSection(enabled=True, extra={"rnak": 2}), "rl")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    with pytest.raises(TrainInputError, match=r"^sft\.lora: the adapter is merged .* expected one process, DDP or ZeRO-2"):
        peft_config(LoraSection(enabled=True), "sft")


def test_the_training_stage_identity_covers_the_lora_settings(monkeypatch, toyworld):
    from pipeline import dag

    monkeypatch.chdir(ROOT)

    def key(**overrides):
        Register.clear_instance_cache()
        return dag.Train(config="configs/smoke.yaml", overrides=overrides, arm="rl").key

    full = key()
    keys = {full, key(**{"rl.lora.enabled": True}), key(**{"rl.lora.enabled": True, "rl.lora.rank": 8}),
            key(**{"rl.lora.enabled": True, "rl.lora.target_modules": ["q_proj"]})}
    assert len(keys) == 4
    assert key(**{"sft.lora.enabled": True}) == full  # another arm's section is not part of RL's identity


# ---- SFT: trains the adapters, saves them merged -----------------------------------------------------
@pytest.fixture(scope="module")
def sft_lora(data):
    out = data["dir"] / "sft-lora"
    cfg = SFTConfig(max_steps=40, learning_rate=1e-2, per_device_train_batch_size=4, logging_steps=5,
                    lr_scheduler_type="constant", lora=LORA, extra=FAST)
    trainer = build_sft_trainer(BASE, data["traces"], cfg, str(out), seed=0)
    base = base_weights()
    _, adapter_before = split(trainer)
    result = trainer.train()
    assert_only_adapters_trained(trainer, base, adapter_before)  # before the merge
    frozen, adapter = split(trainer)
    metrics = finish(trainer, result, str(out))
    return {"out": out, "metrics": metrics, "base": base, "adapter": adapter}


def test_sft_lora_loss_falls_and_only_the_adapters_train(sft_lora):
    losses = [r["loss"] for r in json.loads((sft_lora["out"] / LOG_HISTORY_FILE).read_text()) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0], losses
    m = sft_lora["metrics"]
    assert json.loads((sft_lora["out"] / METRICS_FILE).read_text()) == m
    # rank 4 on the 7 linear layers of each of 4 blocks (hidden 128, MLP 512): 4 * (3 * 4 * 256 + 4 * 4 * 640 + ... )
    assert 0 < m["trainable_parameters"] < 0.1 * m["all_parameters"]


def test_the_saved_model_is_the_adapter_merged_into_the_base(sft_lora):
    out, base = sft_lora["out"], sft_lora["base"]
    # a plain model directory, as every evaluator loads it; the adapter beside it
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert (out / ADAPTER / "adapter_config.json").is_file() and (out / ADAPTER / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert sorted(merged) == sorted(base)
    targeted = {k for k in base if k.endswith("_proj.weight")}
    assert len(targeted) == 4 * 7  # "all-linear": q, k, v, o, gate, up, down in each of 4 blocks
    assert [k for k in base if k not in targeted and not torch.equal(merged[k], base[k])] == []  # embeddings, norms
    assert all(not torch.equal(merged[k], base[k]) for k in targeted)  # every targeted weight took its adapter


def test_the_merged_model_evaluates_as_the_adapter_on_the_base(sft_lora, data):
    from peft import PeftModel

    out = sft_lora["out"]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), str(out / ADAPTER)).eval()
    plain = AutoModelForCausalLM.from_pretrained(BASE).eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompts = [encode_prompt(tok, r["prompt"]) for r in data["rows"][:4]]
    with torch.no_grad():
        for ids in prompts:
            a, b = merged(torch.tensor([ids])).logits, adapted(torch.tensor([ids])).logits
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
            assert not torch.allclose(a, plain(torch.tensor([ids])).logits, atol=1e-2)  # the adapter did something

    def greedy(lm):
        with engine.attention(lm):
            got, _ = engine.generate(lm, prompts, 1, max_tokens=40, temperature=0.0, top_p=1.0,
                                     eos_ids=[tok.eos_token_id], seed=0)
        return got

    assert greedy(merged) == greedy(language_model(adapted))  # the evaluator's engine, greedy: the same samples
    assert greedy(merged) != greedy(plain)


# ---- GRPO: cb rollouts from the adapted policy, its bf16 copy merged, snapshots merged ---------------
def test_grpo_lora_trains_only_the_adapters_with_bf16_rollouts_and_merged_snapshots(data, tmp_path):
    from trl import GRPOTrainer

    cfg = RLConfig(num_generations=4, per_device_train_batch_size=8, max_steps=3, max_completion_length=48,
                   learning_rate=5e-3, logging_steps=1, rollout_dtype="bfloat16", snapshots=1, lora=LORA, extra=FAST)
    out = tmp_path / "rl"
    trainer = build_rl_trainer(BASE, data["problems"], [SPEC], cfg, str(out), seed=0)
    assert isinstance(trainer, GRPOTrainer)
    base = base_weights()
    _, adapter_before = split(trainer)
    result = trainer.train()
    assert_only_adapters_trained(trainer, base, adapter_before)
    # the bf16 rollout copy holds this step's merged weights: peft's own merge of a copy, cast to bfloat16
    copy_ = trainer._rollout_model(trainer.accelerator.unwrap_model(trainer.model))
    import copy

    reference = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).merge_and_unload().state_dict()
    got = copy_.state_dict()
    assert sorted(got) == sorted(reference)
    for k, v in reference.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k
    assert merged_state_dict(trainer.model).keys() == reference.keys()
    steps = [r for r in trainer.state.log_history if "reward" in r]
    assert len(steps) == 3
    finish(trainer, result, str(out))
    snap = out / "snapshots" / "step-2"
    assert (snap / "model.safetensors").is_file() and not (snap / "adapter_config.json").exists()
    assert (snap / ADAPTER / "adapter_config.json").is_file()
    step2 = AutoModelForCausalLM.from_pretrained(snap).state_dict()
    final = AutoModelForCausalLM.from_pretrained(out).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(step2[q], base[q]) and not torch.equal(step2[q], final[q])  # a model of its own step
    assert torch.equal(step2["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


# ---- on-policy distillation -------------------------------------------------------------------------
def test_distill_lora_trains_only_the_adapters(data, tmp_path):
    cfg = DistillConfig(enabled=True, max_steps=2, per_device_train_batch_size=4, max_completion_length=32,
                        learning_rate=5e-3, logging_steps=1, lora=LORA, extra=FAST)
    trainer = build_distill_trainer(BASE, TEACHER, data["problems"], [SPEC], cfg, str(tmp_path / "d"), seed=0)
    base = base_weights()
    _, adapter_before = split(trainer)
    result = trainer.train()
    assert_only_adapters_trained(trainer, base, adapter_before)
    finish(trainer, result, str(tmp_path / "d"))
    assert (tmp_path / "d" / "model.safetensors").is_file() and (tmp_path / "d" / ADAPTER / "adapter_config.json").is_file()
