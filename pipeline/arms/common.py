"""What the training arms (pipeline.arms.sft, pipeline.arms.rl, pipeline.arms.distill; see pipeline.arms) share: reading their input file,
building the TRL config from our validated section plus its `extra`, MLflow wiring, saving the
final model and the metrics, and the command line around them.

MLflow: transformers' MLflowCallback (report_to=["mlflow"]) calls `mlflow.start_run(...)`, which
in mlflow 3.x resumes the run named by the MLFLOW_RUN_ID environment variable (it creates no new
run and sets the run's status back to RUNNING), logs the TrainingArguments and model config as
params and every `trainer.log` call as metrics at `state.global_step`. At the end of training it
calls `mlflow.end_run()`, which marks that run FINISHED; the run stays loggable afterwards. When
training raises, `mark_run_failed` (used by the CLI) ends it FAILED instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.core.io import read_jsonl, read_problems, write_atomic
from tasks.base import Problem

log = logging.getLogger(__name__)

METRICS_FILE = "train_metrics.json"
LOG_HISTORY_FILE = "log_history.json"


class TrainInputError(ValueError):
    """Bad input to a training stage (file, rows, config `extra`); the message is one line."""


def read_rows(path: str | os.PathLike, what: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of a JSONL input file; one-line errors for a missing or empty file or a row
    without the keys the stage needs."""
    p = Path(path)
    if not p.is_file():
        raise TrainInputError(f"{what} file {p}: not found (expected a JSONL file with keys {list(required)})")
    try:
        rows = read_jsonl(p)
    except ValueError as e:  # "file:line: not valid JSON (...)"
        raise TrainInputError(f"{what} file {e}") from None
    if not rows:
        raise TrainInputError(f"{what} file {p}: empty (expected at least one JSONL row with keys {list(required)})")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise TrainInputError(f"{what} file {p}: row {i}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise TrainInputError(f"{what} file {p}: row {i}: missing key(s) {missing} (expected keys {list(required)})")
    return rows


def mlflow_enabled() -> bool:
    """Report to MLflow only when the caller handed us a run to log into."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) and bool(os.environ.get("MLFLOW_RUN_ID"))


def report_to() -> list[str] | str:
    return ["mlflow"] if mlflow_enabled() else "none"


def build_args(config_cls: type, section: str, fields: dict[str, Any], extra: dict[str, Any]):
    """`config_cls(**fields, **extra)`: `extra` wins, so anything the preset sets there reaches
    TRL as is. An unknown key in `extra` is a one-line error naming it."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise TrainInputError(
            f"{section}.extra: unknown key(s) {unknown} (expected fields of trl.{config_cls.__name__})"
        )
    return config_cls(**{**fields, **extra})


# RLConfig/SFTConfig fields whose names are TRL's argument names, passed through as they are
COMMON_FIELDS = ("learning_rate", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "logging_steps", "bf16")


def same_named(cfg, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(cfg, n) for n in names}


def common_fields(cfg, out_dir: str, seed: int, checkpoints: str | None = None, save_steps: int = 0) -> dict[str, Any]:
    """The TrainingArguments both stages set the same way. With a checkpoint directory, Trainer
    checkpoints (model, optimizer, scheduler, RNG states, trainer state) go there every save_steps
    steps, the last two kept, so a killed stage resumes (`resume_point`); the final model is saved
    into out_dir by `finish` either way."""
    fields = dict(same_named(cfg, COMMON_FIELDS), output_dir=str(out_dir), seed=seed, data_seed=seed,
                  report_to=report_to(), save_strategy="no")
    if checkpoints and save_steps > 0:
        fields.update(output_dir=str(checkpoints), save_strategy="steps", save_steps=save_steps, save_total_limit=2)
    if cfg.bf16 and not _cuda():  # bfloat16 autocast on CPU: transformers asks for use_cpu to allow it
        fields["use_cpu"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _cuda():
        # several processes without a GPU (`accelerate launch --multi_gpu` on CPU): use_cpu makes
        # accelerate set up DDP over gloo; without it every rank would train alone on all the data
        fields["use_cpu"] = True
    return fields


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resume_point(checkpoints: str | os.PathLike | None) -> str | None:
    """The newest complete Trainer checkpoint in the directory before the final step, or None.
    Trainer writes a checkpoint in place (not atomically) and its trainer_state.json last, so a
    directory without that file, or with one that does not parse (a kill while it was written: the
    chaos test found it empty), was cut off mid-save: it is removed, and the one before it is used."""
    import shutil

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    d = Path(checkpoints) if checkpoints else None
    if d is None or not d.is_dir():
        return None
    found = sorted((p for p in d.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for p in reversed(found):
        s = _trainer_state(p / "trainer_state.json")
        if s is None:
            log.warning("removing the incomplete checkpoint %s (killed mid-save)", p)
        elif 0 < s.get("max_steps", 0) <= s.get("global_step", 0):
            # transformers 5.19 resumed at global_step == max_steps trains one step more (measured: a
            # 3-step GRPO run ended at step 4); the step before it is redone instead, which gives the same model
            log.warning("not resuming from the final checkpoint %s (Trainer would train past max_steps)", p)
        else:
            log.info("resuming from %s", p)
            return str(p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def _trainer_state(path: Path) -> dict | None:
    """A checkpoint's trainer_state.json, or None when it is missing or was cut off while written."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


SNAPSHOTS = "snapshots"  # beside the final model: step-<N>/ models saved during training (pipeline.dag evaluates them)


def snapshot_steps(max_steps: int, snapshots: int) -> list[int]:
    """`snapshots` intermediate steps evenly spaced before max_steps: 2 of 150 gives [50, 100]."""
    return sorted({round(max_steps * i / (snapshots + 1)) for i in range(1, snapshots + 1)} - {0, max_steps})


def add_snapshots(trainer, steps: list[int], where: str | os.PathLike) -> None:
    """Save the model (and tokenizer) at the given optimizer steps into `where`/step-<N>, for the
    training-length table: each snapshot is evaluated like the final model. `where` is the stage's
    checkpoint directory when it has one, so snapshots survive a kill and a resumed run keeps them;
    `finish` moves them beside the final model. All ranks call save_model (FSDP/ZeRO gather inside it)."""
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in steps:
                d = Path(where) / f"step-{state.global_step}"
                tmp = d.with_name(d.name + ".tmp")
                save_model(trainer, tmp)
                if trainer.is_world_process_zero():
                    import shutil

                    shutil.rmtree(d, ignore_errors=True)
                    os.replace(tmp, d)

    if steps:
        trainer.add_callback(Snapshot())
    trainer._dvr_snapshots = (steps, Path(where))


def save_model(trainer, path: str | os.PathLike, final: bool = False) -> None:
    """trainer.save_model (model in safetensors + the tokenizer), except that a LoRA-trained model is saved
    merged, with its adapter beside it (pipeline/arms/lora.py): every arm's output is a plain model directory."""
    from pipeline.arms.lora import is_lora, save_merged

    if is_lora(trainer.accelerator.unwrap_model(trainer.model)):
        save_merged(trainer, path, final)
    else:
        trainer.save_model(str(path))


def finish(trainer, train_output, out_dir: str, extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the final model + tokenizer (safetensors) and the metrics into out_dir; return the metrics."""
    from pipeline.arms.lora import is_lora, trainable_parameters

    out = Path(out_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    lora = trainable_parameters(model) if is_lora(model) else {}  # counted before the merge
    save_model(trainer, out, final=True)
    steps, where = getattr(trainer, "_dvr_snapshots", ([], None))
    if steps and trainer.is_world_process_zero():
        missing = [s for s in steps if not (where / f"step-{s}").is_dir()]
        if missing:
            raise RuntimeError(f"training ended without the snapshots at steps {missing} in {where}")
        (out / SNAPSHOTS).mkdir(exist_ok=True)
        for s in steps:
            if where.resolve() != (out / SNAPSHOTS).resolve():
                os.replace(where / f"step-{s}", out / SNAPSHOTS / f"step-{s}")
    m = train_output.metrics
    data = getattr(trainer, "train_dataset", None)
    metrics = {
        "train_loss": float(train_output.training_loss),
        "global_step": int(train_output.global_step),  # optimizer steps
        "epoch": float(trainer.state.epoch or 0.0),  # passes over the training set (fractional)
        **({"num_examples": len(data)} if data is not None else {}),  # training rows (traces, prompts)
        "train_runtime": float(m.get("train_runtime", 0.0)),
        "train_samples_per_second": float(m.get("train_samples_per_second", 0.0)),
        **lora,  # under LoRA: trainable_parameters (the adapters) of all_parameters
        **(extra_metrics or {}),
    }
    if trainer.is_world_process_zero():  # one writer under `accelerate launch`
        _write_json(out / METRICS_FILE, metrics)
        _write_json(out / LOG_HISTORY_FILE, trainer.state.log_history)
    return metrics


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=float))


def mark_run_failed() -> None:
    """If this process attached to an MLflow run, end it FAILED (mlflow's atexit hook would
    otherwise end it FINISHED)."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status="FAILED")


def cli(stage: str, input_flag: str, input_help: str, run: Callable[..., dict], argv: list[str] | None = None) -> int:
    """`python -m pipeline.arms.<stage> --config C --<input_flag> F --out D [--base-model M] [--seed S]`:
    loads and validates the preset, calls `run(cfg, input_path, out_dir, base_model, seed, checkpoints=)`,
    prints the final metrics as one JSON line."""
    from pipeline.config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog=f"python -m pipeline.arms.{stage}", description=f"Train the {stage} stage.")
    ap.add_argument("--config", required=True, help="experiment preset (YAML), e.g. configs/tiny.yaml")
    ap.add_argument(f"--{input_flag}", required=True, dest="input", help=input_help)
    ap.add_argument("--out", required=True, help="output directory for the final model (written as given)")
    ap.add_argument("--base-model", default=None, help="base model path or hub id (default: the preset's base_model)")
    ap.add_argument("--seed", type=int, default=None, help="seed (default: the preset's seed)")
    ap.add_argument("--checkpoints", default=None, help="directory for Trainer checkpoints (every "
                    "compute.checkpoint_steps steps); training resumes from the newest one found there")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(a.config)
        metrics = run(cfg, a.input, a.out, a.base_model or cfg.base_model, cfg.seed if a.seed is None else a.seed,
                      checkpoints=a.checkpoints)
    except (ConfigError, TrainInputError) as e:
        mark_run_failed()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException:
        mark_run_failed()
        raise
    print(json.dumps(metrics))
    return 0


REQUIRED = ("id", "task", "question", "answer")


def load_problems(problems_path: str) -> list[Problem]:
    """The training problems: read_rows's one-line checks (missing, empty, keys), then core.io's reader."""
    read_rows(problems_path, "problems", REQUIRED)
    try:
        return read_problems(problems_path)
    except ValueError as e:
        raise TrainInputError(f"problems file {e}") from None
