"""The stage framework of the Luigi DAG (pipeline.dag): a Stage's identity, output directory and
lock, its atomic write, its MLflow run and failure record, and the process it launches; plus the
helpers the stages share. Each DAG node is a Stage in its own file of pipeline/stages/.
"""
from __future__ import annotations

import json
import sys
import time
from functools import cached_property
from pathlib import Path

import luigi
import yaml

from pipeline.core import tracking
from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.core.io import Terminated, atomic_dir, is_complete, read_problems, remove_tree, sigterm_raises, stage_lock
from pipeline.core.procs import run_stage_process
from tasks import Problem

WORK_SUFFIXES = (".shards", ".ckpt")  # Stage.work_dir: resume points, removed once the stage completes


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

    node = ""  # what this instance is, for a stage with several (an arm, a model): Train-rl, Evaluate-sft

    @property
    def task_family(self) -> str:
        """The node's name in luigid's graph and Luigi's run summary: the class and, for a stage with
        several instances, what this one is (`Evaluate-sft`). Luigi reads it from the instance; the
        class (`luigi --module pipeline.dag Evaluate`) and the task id keep the class name."""
        return f"{self.get_task_family()}-{self.node}" if self.node else self.get_task_family()

    @cached_property
    def cfg(self) -> ExperimentConfig:
        try:
            return load_config(self.config, _thaw(self.overrides))
        except ConfigError as e:  # one line, not a traceback through Luigi's scheduler; exit 2 as pipeline.run
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    nested = True  # its MLflow run folds under the experiment's parent run (tracking.start_stage)

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
        from pipeline.core.models import is_gguf
        from pipeline.stages.convert import ConvertModel  # ConvertModel is a Stage: imported here (a cycle at the top)

        return {w: ConvertModel(self.config, self.overrides, ref=self.cfg.get(w)) for w in self.reads_models
                if is_gguf(self.cfg.get(w))}

    def model_ref(self, which: str) -> str:
        """What the stage's process loads for `which`: the converted directory, or the reference as is."""
        conv = self.conversions().get(which)
        return str(conv.out_dir / "model") if conv else self.cfg.get(which)

    def stage_config(self) -> ExperimentConfig:
        """The config written beside the stage's output and read by its process: model references
        resolved to what the process loads."""
        return self.cfg.with_refs({w: self.model_ref(w) for w in self.conversions()})

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
        run_id = tracking.start_stage(self.cfg, self.stage, self.key, self.lineage(), self.run_name, self.nested)
        t0 = time.time()
        self.error_file.unlink(missing_ok=True)
        try:
            with atomic_dir(self.out_dir, root=self.cfg.output_dir) as tmp:
                (tmp / "config.yaml").write_text(yaml.safe_dump(self.stage_config().model_dump(mode="json"), sort_keys=False))
                info = self.execute(tmp, run_id) or {}
                info = dict(stage=self.stage, key=self.key, run_id=run_id, seconds=round(time.time() - t0, 1), **info)
                (tmp / "stage.json").write_text(json.dumps(info, indent=2, default=str))
            tracking.log(self.cfg, run_id, metrics=[("stage_seconds", info["seconds"], 0)])
            tracking.end_stage(self.cfg, run_id)
            for work in WORK_SUFFIXES:  # the stage is complete: its resume points are no longer needed
                remove_tree(self.work_dir(work), root=self.cfg.output_dir)
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


def load_problems(problems_dir: str | Path, split: str) -> list[Problem]:
    return read_problems(Path(problems_dir) / f"{split}.jsonl")


def log_model(cfg: ExperimentConfig, run_id: str, model_dir: Path, final_path: Path, name: str = "model") -> str:
    """Small models are logged as artifacts; big ones are referenced by path (a tag). Either way the
    model becomes a version of `<experiment>-<name>` in MLflow's model registry, whose source is the
    logged artifact or, over log_model_max_mb, the model's directory. Returns the version."""
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20
    logged = size_mb <= cfg.tracking.log_model_max_mb
    tracking.log(cfg, run_id, tags={"model_path": str(final_path.resolve()), "model_mb": round(size_mb, 1)},
                 artifacts=[model_dir] if logged else [], artifact_path="model")
    if cfg.tracking.push_to_hub:
        push_to_hub(cfg, run_id, model_dir, f"{cfg.tracking.push_to_hub}/{cfg.experiment_name}-{name}")
    return tracking.register_model(cfg, run_id, f"{cfg.experiment_name}-{name}",
                                   None if logged else str(final_path.resolve()))


def push_to_hub(cfg: ExperimentConfig, run_id: str, model_dir: Path, repo: str) -> None:
    """Upload a trained model to a private hub repository (tracking.push_to_hub; off by default, and
    untested here: the machines this project is tested on have no hub). A failed push is reported
    and tagged (dvr.hub_error), not raised: the trained model stays in its stage directory."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, private=True, exist_ok=True)
        commit = api.upload_folder(folder_path=str(model_dir), repo_id=repo, commit_message=f"{cfg.name} run {run_id}")
        tracking.log(cfg, run_id, tags={"hub_repo": repo, "hub_commit": getattr(commit, "oid", "")})
    except Exception as e:  # noqa: BLE001 - no network, no token, no rights: the run's result stands
        print(f"[push_to_hub] {repo}: not pushed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})", flush=True)
        tracking.log(cfg, run_id, tags={"hub_repo": repo, "hub_error": f"{type(e).__name__}: {e}"[:1000]})


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
