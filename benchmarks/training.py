"""Training throughput on the toy world, with the default study's settings (configs/tiny.yaml):

    python -m benchmarks.training grpo --rollouts cb --steps 6 --work DIR
    python -m benchmarks.training sft --traces DIR/filtered.jsonl --steps 20 --work DIR

GRPO: seconds per optimizer step, split into rollout generation (TRL's `_generate_single_turn`)
and the rest (rewards, log-probabilities, loss, backward, optimizer), medians over the steps after
the first. SFT: tokens per second as TRL counts them (`num_tokens`). One JSON line each.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import median


def grpo(rollouts: str, steps: int, work: Path, threads: int, config: str = "configs/tiny.yaml",
         base_model: str | None = None, rl_set: dict | None = None) -> dict:
    """GRPO step times with the preset's rl section (and its first task's training problems); rl_set
    overrides rl fields (e.g. {"bf16": True})."""
    import torch
    from transformers import TrainerCallback

    from pipeline.config import load_config
    from pipeline.core.io import write_jsonl
    from pipeline.arms.rl import build_rl_trainer
    from tasks import build_tasks

    torch.set_num_threads(threads)
    cfg = load_config(config)
    spec = cfg.tasks[0]
    task = build_tasks([spec])[spec.name]
    problems = work / "grpo-problems.jsonl"
    write_jsonl(problems, [p.to_dict() for p in task.problems("train", spec.train_size, seed=0, levels=spec.levels or None)])
    rl = type(cfg.rl).model_validate({**cfg.rl.model_dump(), **dict(max_steps=steps, rollouts=rollouts, pass_rate_filter=False,
                                                                     logging_steps=1, **(rl_set or {}))})
    tag = "-".join([Path(config).stem, rollouts] + [f"{k}={v}" for k, v in sorted((rl_set or {}).items()) if k != "lora"]
                   + (["lora"] if rl.lora.enabled else []))
    trainer = build_rl_trainer(base_model or cfg.base_model, str(problems), cfg.tasks, rl, str(work / f"grpo-{tag}"),
                               seed=0)
    gen_time = [0.0]
    inner = trainer._generate_single_turn

    def timed(*a, **k):
        t = time.time()
        try:
            return inner(*a, **k)
        finally:
            gen_time[0] += time.time() - t

    trainer._generate_single_turn = timed
    rows = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, gen_time[0] = time.time(), 0.0

        def on_step_end(self, args, state, control, **kw):
            rows.append((time.time() - self.t, gen_time[0]))

    trainer.add_callback(Clock())
    trainer.train()
    steady = rows[1:] or rows
    hist = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return dict(config=config, rl_set=rl_set or {}, rollouts=rollouts, steps=len(rows), threads=threads,
                trainable_parameters=trainable, load_avg_at_end=[round(x, 2) for x in __import__("os").getloadavg()],
                step_s=median([s for s, _ in steady]), generation_s=median([g for _, g in steady]),
                loss_backward_s=median([s - g for s, g in steady]),
                rollouts_per_step=rl.per_device_train_batch_size,
                mean_completion_tokens=round(sum(r["completions/mean_length"] for r in hist) / max(len(hist), 1), 1))


def sft(traces: str, steps: int, work: Path, threads: int) -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.arms.sft import build_sft_trainer

    torch.set_num_threads(threads)
    cfg = load_config("configs/tiny.yaml")
    s = cfg.sft.model_copy(update=dict(max_steps=steps, logging_steps=1))
    trainer = build_sft_trainer(cfg.base_model, traces, s, str(work / "sft"), seed=0)
    t = time.time()
    trainer.train()
    wall = time.time() - t
    tokens = max(r.get("num_tokens", 0) for r in trainer.state.log_history)
    return dict(steps=steps, threads=threads, seconds=round(wall, 2), tokens=int(tokens),
                tokens_per_s=round(tokens / wall, 1), batch=s.per_device_train_batch_size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["grpo", "sft"])
    ap.add_argument("--rollouts", default="cb", choices=["cb", "trl"])
    ap.add_argument("--traces")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", required=True)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--base-model", help="a converted model directory (the preset's base_model otherwise)")
    ap.add_argument("--set", default="{}", help='rl fields as JSON, e.g. \'{"bf16": true}\'')
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res = (grpo(a.rollouts, a.steps, work, a.threads, a.config, a.base_model, json.loads(a.set)) if a.what == "grpo"
           else sft(a.traces, a.steps, work, a.threads))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
