"""The training stages: real TRL SFTTrainer / GRPOTrainer runs of a few steps on a tiny toy-world
model, their outputs, the reward, and MLflow logging into a run the caller created."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.base import encode_prompt
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import RLConfig, SFTConfig, TaskSpec
from pipeline.arms.rl import TaskReward, build_rl_trainer, train_rl
from pipeline.arms.sft import build_sft_trainer, train_sft
from pipeline.toyworld.model import build_model, build_tokenizer
from pipeline.arms.common import LOG_HISTORY_FILE, METRICS_FILE, TrainInputError
from tasks import get_task
from tasks.toy_arith import chain_steps, completion_text, parse_chain, plain_step

ROOT = Path(__file__).resolve().parents[2]
FAST = {"gradient_checkpointing": False, "disable_tqdm": True}  # tiny model: recomputation only costs time
SPEC = TaskSpec(name="toy_arith", train_size=4, test_size=2, levels=[1])


def trace_for(task, problem, tokenizer) -> dict:
    terms, ops = parse_chain(problem.question)
    lines = [plain_step(a, op, b) for a, op, b, _ in chain_steps(terms, ops)]
    return {"prompt": task.prompt(problem, tokenizer), "completion": completion_text(lines, problem.answer),
            "problem_id": problem.id}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random base model, one training problem and its teacher-style trace."""
    d = tmp_path_factory.mktemp("world")
    tok = build_tokenizer()
    build_model(tok, hidden=64, layers=2, max_positions=256, seed=0).save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    task = get_task("toy_arith")
    problems = task.problems("train", 2, seed=0, levels=[1])
    write_jsonl(d / "traces.jsonl", [trace_for(task, problems[0], tok)])
    write_jsonl(d / "problems.jsonl", [p.to_dict() for p in problems])
    return {"dir": d, "base": str(d / "base"), "task": task, "problems": problems, "tok": tok,
            "traces": str(d / "traces.jsonl"), "problems_path": str(d / "problems.jsonl")}


@pytest.fixture(scope="module")
def sft_model(world):
    """SFT run long enough to memorise the single trace (so GRPO rollouts can earn reward)."""
    out = world["dir"] / "sft"
    cfg = SFTConfig(max_steps=60, learning_rate=3e-3, per_device_train_batch_size=1, logging_steps=10,
                    lr_scheduler_type="constant", extra=FAST)
    metrics = train_sft(world["base"], world["traces"], cfg, str(out), seed=0)
    return out, metrics


# ---- SFT ------------------------------------------------------------------------------------------
def test_sft_masks_prompt_tokens(world, tmp_path):
    cfg = SFTConfig(max_steps=1, per_device_train_batch_size=1, extra=FAST)
    trainer = build_sft_trainer(world["base"], world["traces"], cfg, str(tmp_path / "o"), seed=0)
    row = json.loads(Path(world["traces"]).read_text().splitlines()[0])
    tok = world["tok"]
    prompt_ids = tok(row["prompt"])["input_ids"]
    ex = trainer.train_dataset[0]
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)  # prompt: no loss
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]  # completion: every token trained
    assert tok.decode(ids[len(prompt_ids):]) == row["completion"] + tok.eos_token  # EOS appended and trained


def test_sft_trains_and_saves_a_loadable_model(world, sft_model):
    out, metrics = sft_model
    assert metrics["global_step"] == 60 and metrics["num_examples"] == 1
    assert metrics["epoch"] == pytest.approx(60.0)  # one trace at batch 1: an epoch per step
    assert metrics["train_loss"] > 0 and metrics["train_runtime"] > 0
    assert json.loads((out / METRICS_FILE).read_text()) == metrics
    losses = [r["loss"] for r in json.loads((out / LOG_HISTORY_FILE).read_text()) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] / 10
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    row = json.loads(Path(world["traces"]).read_text().splitlines()[0])
    ids = tok(row["prompt"], return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=40, do_sample=False)
    # the memorised trace comes back, and the model stops after it
    assert tok.decode(gen[0, ids.shape[1]:]) == row["completion"] + tok.eos_token


def test_sft_same_seed_same_weights(world, tmp_path):
    cfg = SFTConfig(max_steps=2, per_device_train_batch_size=1, extra=FAST)
    sums = []
    for i in range(2):
        train_sft(world["base"], world["traces"], cfg, str(tmp_path / f"s{i}"), seed=7)
        m = AutoModelForCausalLM.from_pretrained(tmp_path / f"s{i}")
        sums.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(sums[0], sums[1])


# ---- reward ----------------------------------------------------------------------------------------
def test_reward_scores_completions_by_the_task_verifier(world):
    task, p = world["task"], world["problems"][0]
    reward = TaskReward({"toy_arith": task}, "verify")
    logged = {}
    right = f"<think>\n{p.question}={p.answer}\n</think>\n<answer>{p.answer}</answer>"
    wrong = f"<think>\n</think>\n<answer>{int(p.answer) + 1}</answer>"
    col = [json.dumps(p.to_dict())] * 3
    got = reward(prompts=["x"] * 3, completions=[right, wrong, "no answer"], problem=col,
                 log_metric=lambda k, v: logged.__setitem__(k, v))
    assert got == [1.0, 0.0, 0.0]
    assert logged == {"accuracy": pytest.approx(1 / 3)}
    assert reward.__name__ == "verify"


def test_logic_rl_reward_uses_the_knights_and_knaves_shaping():
    task = get_task("knights_knaves")
    p = task.problems("train", 1, seed=0, levels=[2])[0]
    reward = TaskReward({"knights_knaves": task}, "logic_rl")
    good = f"<think>\nreasoning\n</think>\n<answer>{p.answer}</answer>"
    no_format = f"<answer>{p.answer}</answer>"
    logged = {}
    got = reward(prompts=["x"] * 2, completions=[good, no_format], problem=[json.dumps(p.to_dict())] * 2,
                 log_metric=lambda k, v: logged.__setitem__(k, v))
    assert got == [3.0, -3.0]  # format +1 and answer +2; format -1 and answer -2
    # accuracy is `verify`, which ignores the format; Logic-RL's two scores are logged as means: (1 - 1) / 2, (2 - 2) / 2
    assert logged == {"accuracy": 1.0, "format_reward": 0.0, "answer_reward": 0.0}
    assert reward.__name__ == "logic_rl"


def test_logic_rl_reward_is_refused_for_a_task_without_it(world):
    with pytest.raises(TrainInputError, match="rl.reward: 'logic_rl'.*toy_arith"):
        TaskReward({"toy_arith": world["task"]}, "logic_rl")


# ---- GRPO ------------------------------------------------------------------------------------------
def test_grpo_prompts_are_the_evaluator_prompts(world, tmp_path):
    cfg = RLConfig(num_generations=2, per_device_train_batch_size=2, max_steps=1, max_completion_length=8,
                   extra=FAST)
    trainer = build_rl_trainer(world["base"], world["problems_path"], [SPEC], cfg, str(tmp_path / "o"), seed=0)
    tok = AutoTokenizer.from_pretrained(world["base"])
    assert trainer.train_dataset["prompt"] == [world["task"].prompt(p, tok) for p in world["problems"]]
    assert trainer.args.num_generations == 2 and trainer.args.use_vllm is False
    assert trainer.args.loss_type == "dapo" and trainer.args.seed == 0 and trainer.args.report_to == []


def test_grpo_runs_and_logs_reward_and_accuracy(world, sft_model, tmp_path):
    sft_dir, _ = sft_model
    out = tmp_path / "rl"
    # both rows are the memorised problem: rollouts from the SFT model are mostly correct
    write_jsonl(tmp_path / "p.jsonl", [world["problems"][0].to_dict()] * 2)
    cfg = RLConfig(num_generations=4, per_device_train_batch_size=4, max_steps=2, max_completion_length=24,
                   logging_steps=1, learning_rate=1e-4, extra=FAST)
    metrics = train_rl(str(sft_dir), str(tmp_path / "p.jsonl"), [SPEC], cfg, str(out), seed=0)
    assert metrics["global_step"] == 2 and metrics["num_problems"] == 2
    history = json.loads((out / LOG_HISTORY_FILE).read_text())
    steps = [r for r in history if "reward" in r]
    assert len(steps) == 2
    for r in steps:
        assert {"reward", "reward_std", "rewards/verify/mean", "accuracy", "completions/mean_length"} <= set(r)
        assert r["accuracy"] == pytest.approx(r["rewards/verify/mean"])  # verify reward: reward == accuracy
    assert max(r["reward"] for r in steps) > 0  # correct rollouts were rewarded through TRL
    assert metrics["final_reward"] == steps[-1]["reward"]
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert AutoTokenizer.from_pretrained(out).chat_template == world["tok"].chat_template


def test_grpo_cb_rollouts_group_prompts_and_end_at_eos(toyworld, tmp_path):
    """rl.rollouts: cb. TRL hands over each prompt num_generations times in a row; the engine
    prefills it once and returns that many completions in TRL's order, each ending at its EOS or
    at max_completion_length. Near temperature 0 each group is the model's greedy answer to its own
    prompt (two problems with different answers), so groups cannot be swapped or mixed."""
    cfg = RLConfig(num_generations=3, per_device_train_batch_size=3, max_steps=1, max_completion_length=24,
                   temperature=1e-3, extra=FAST)
    task = get_task("toy_arith")
    problems = task.problems("train", 2, seed=1, levels=[2])
    path = write_jsonl(tmp_path / "p.jsonl", [p.to_dict() for p in problems])
    trainer = build_rl_trainer(str(toyworld / "base"), str(path), [SPEC], cfg, str(tmp_path / "o"), seed=0)
    tok = trainer.processing_class
    p0, p1 = problems
    assert p0.answer != p1.answer
    prompts = [encode_prompt(tok, task.prompt(p, tok)) for p in (p0, p1)]
    greedy = []
    with torch.no_grad():
        for ids in prompts:
            gen = trainer.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
            greedy.append(gen[0, len(ids):].tolist())
    assert greedy[0] != greedy[1]
    trainer.model.train()  # as during training
    out, logprobs = trainer._generate_single_turn([prompts[0]] * 3 + [prompts[1]] * 3, None, {}, 3)
    assert len(out) == 6 and logprobs is None
    for seq in out:
        assert seq[-1] in trainer.eos_token_ids or len(seq) == 24
    assert out == [greedy[0]] * 3 + [greedy[1]] * 3  # each group answers its own prompt, in TRL's order
    assert trainer.model.training  # handed back in training mode
    assert trainer.model.config._attn_implementation == "sdpa"  # training keeps its attention


# ---- bad input ------------------------------------------------------------------------------------
def test_missing_and_empty_input_files_are_one_line_errors(world, tmp_path):
    sft, rl = SFTConfig(extra=FAST), RLConfig(num_generations=2, per_device_train_batch_size=2)
    with pytest.raises(TrainInputError, match=r"traces file .*nope.jsonl: not found") as e:
        train_sft(world["base"], str(tmp_path / "nope.jsonl"), sft, str(tmp_path / "o"), 0)
    assert "\n" not in str(e.value)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TrainInputError, match=r"problems file .*empty.jsonl: empty"):
        train_rl(world["base"], str(tmp_path / "empty.jsonl"), [SPEC], rl, str(tmp_path / "o"), 0)
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(TrainInputError, match=r"row 1: missing key\(s\) \['completion'\]"):
        train_sft(world["base"], str(tmp_path / "bad.jsonl"), sft, str(tmp_path / "o"), 0)
    with pytest.raises(TrainInputError, match=r"sft.extra: unknown key\(s\) \['no_such_field'\]"):
        train_sft(world["base"], world["traces"], SFTConfig(extra={"no_such_field": 1}), str(tmp_path / "o"), 0)


# ---- CLI + MLflow ---------------------------------------------------------------------------------
@pytest.mark.slow  # a training subprocess
def test_cli_logs_into_the_callers_mlflow_run(world, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp, run_name="rl-child").info.run_id
    cfg = {"name": "t", "seed": 3, "base_model": world["base"],  # the tiny world's context is 256 tokens
           "tasks": [{"name": "toy_arith", "levels": [1]}], "eval": {"max_tokens": 128},
           "rl": {"num_generations": 2, "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1,
                  "max_completion_length": 8, "extra": FAST}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": exp,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.arms.rl", "--config", str(tmp_path / "c.yaml"),
         "--problems", world["problems_path"], "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["global_step"] == 2
    # the curves landed in the caller's run, at each step; no other run was made
    assert [m.step for m in client.get_metric_history(run_id, "reward")] == [1, 2]
    assert len(client.get_metric_history(run_id, "accuracy")) == 2
    assert client.get_metric_history(run_id, "train_loss")
    assert client.get_run(run_id).data.params["seed"] == "3"
    assert [r.info.run_id for r in client.search_runs([exp])] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"  # transformers' callback ends the run it resumed
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_bad_input_exits_2_with_one_line(world, tmp_path):
    cfg = {"name": "t", "base_model": world["base"], "tasks": [{"name": "toy_arith"}], "eval": {"max_tokens": 128}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.arms.sft", "--config", str(tmp_path / "c.yaml"),
         "--traces", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: traces file {tmp_path / 'missing.jsonl'}: not found (expected a JSONL file with keys "
        "['prompt', 'completion'])"
    )
    assert not (tmp_path / "out").exists()


# ---- one prompt, one set of token ids, in every stage (issue 13, item 4) ----------------------------
@pytest.fixture(scope="module")
def bos_world(tmp_path_factory):
    """A base whose tokenizer adds BOS (as Llama-3, Mistral and Gemma tokenizers do) and whose chat
    template also writes it."""
    from tokenizers import processors

    from pipeline.toyworld.model import CHAT_TEMPLATE

    d = tmp_path_factory.mktemp("bos")
    tok = build_tokenizer()
    bos = "<|system|>"
    bid = tok.convert_tokens_to_ids(bos)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bid)])
    tok.bos_token, tok.chat_template = bos, "{{ bos_token }}" + CHAT_TEMPLATE
    build_model(tok, hidden=64, layers=2, max_positions=256, seed=0).save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    tok = AutoTokenizer.from_pretrained(d / "base")
    assert tok("1")["input_ids"][0] == bid  # it really adds BOS
    task = get_task("toy_arith")
    problems = task.problems("train", 2, seed=0, levels=[1])
    write_jsonl(d / "traces.jsonl", [trace_for(task, p, tok) for p in problems])
    write_jsonl(d / "problems.jsonl", [p.to_dict() for p in problems])
    return {"dir": d, "base": str(d / "base"), "tok": tok, "bid": bid, "task": task, "problems": problems}


def test_sft_grpo_sampling_and_perplexity_see_the_same_prompt_ids(bos_world, tmp_path):
    from pipeline.stages.perplexity import prompt_completion_ids
    from pipeline.sampling.backends import Engine
    from pipeline.config import GenerationConfig
    from tasks.base import encode_prompt

    w, tok = bos_world, bos_world["tok"]
    prompts = [w["task"].prompt(p, tok) for p in w["problems"]]
    want = [encode_prompt(tok, p) for p in prompts]
    assert all(ids.count(w["bid"]) == 1 and ids[0] == w["bid"] for ids in want)  # one BOS, from the template
    sft = build_sft_trainer(w["base"], str(w["dir"] / "traces.jsonl"), SFTConfig(max_steps=1, extra=FAST),
                            str(tmp_path / "s"), seed=0)
    for ids, ex in zip(want, sft.train_dataset):
        assert ex["input_ids"][: len(ids)] == ids and ex["input_ids"][len(ids)] != w["bid"]
        assert ex["input_ids"][-1] == tok.eos_token_id
    cfg = RLConfig(num_generations=2, per_device_train_batch_size=2, max_steps=1, max_completion_length=8, extra=FAST)
    grpo = build_rl_trainer(w["base"], str(w["dir"] / "problems.jsonl"), [SPEC], cfg, str(tmp_path / "r"), seed=0)
    assert grpo._tokenize_prompts(prompts)[0] == want
    assert [p for p, _ in prompt_completion_ids(tok, prompts, ["x"] * 2)] == want
    engine = Engine(w["base"], GenerationConfig(backend="hf", max_tokens=2))
    assert [engine.encode([p])["input_ids"][0].tolist() for p in prompts] == want


def test_resume_skips_checkpoints_cut_off_mid_save(tmp_path):
    """A kill while Trainer writes a checkpoint leaves trainer_state.json missing or empty (the chaos
    test found an empty one, and the rerun crashed on it); such a checkpoint is removed and the one
    before it resumed; the final step's is not resumed (Trainer would train past max_steps)."""
    from pipeline.arms.common import resume_point

    def ckpt(step, state):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)
        return d

    good = ckpt(2, json.dumps({"global_step": 2, "max_steps": 6}))
    empty, cut, missing = ckpt(4, ""), ckpt(5, '{"global_step": 5, "max'), ckpt(3, None)
    assert resume_point(tmp_path) == str(good)
    assert not empty.exists() and not cut.exists() and not missing.exists() and good.exists()
    final = ckpt(6, json.dumps({"global_step": 6, "max_steps": 6}))
    assert resume_point(tmp_path) == str(good) and not final.exists()
    assert resume_point(tmp_path / "none") is None
