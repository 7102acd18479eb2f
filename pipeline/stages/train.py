"""The training stage: one trained arm (pipeline.arms) from the base, on its training input."""
from __future__ import annotations

import os

import luigi
import yaml

from pipeline.arms import Arm, arms, get_arm
from pipeline.stages.base import Stage, _gpu, log_model, stage_info
from pipeline.stages.filtered import FilterTraces
from pipeline.stages.problems import Problems
from pipeline.stages.rlprompts import FilterRLProblems
from pipeline.stages.traces import GenerateTeacherTraces


class Train(Stage):
    """One trained arm (pipeline.arms): `python -m pipeline.arms <arm module>` (or
    `accelerate launch`) on its training input, from the base. Its identity: the base, its own config
    section, the seed, the process count, its input's identity, and the teacher when it loads one."""

    arm = luigi.Parameter(description="the arm to train: " + ", ".join(arms()))
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    resources = property(lambda self: _gpu(self.cfg))
    node = property(lambda self: self.arm)  # luigid's graph: Train-sft, Train-rl

    @property
    def spec(self) -> Arm:
        return get_arm(self.arm)

    @property
    def stage(self) -> str:
        return self.arm

    @property
    def sections(self):
        return (("base_model", self.arm, *self.spec.reads, "seed", "compute.num_processes")
                + (("teacher_model",) if self.spec.reads_teacher else ()))

    @property
    def reads_models(self):
        return ("base_model",) + (("teacher_model",) if self.spec.reads_teacher else ())

    def upstream(self):
        init = self.spec.starts_from(self.cfg)
        start = {"init": Train(self.config, self.overrides, arm=init)} if init else {}
        if self.spec.data == "traces":
            return {"data": FilterTraces(self.config, self.overrides), **start}
        section = self.spec.prompt_filter(self.cfg)
        return {"data": FilterRLProblems(self.config, self.overrides, section=section) if section
                else Problems(self.config, self.overrides), **start}

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
        # `python -m pipeline.arms <module>`: finds an arm module in a DVR_ARMS_PATH folder too
        start = ["--base-model", self.input()["init"].path + "/model"] if "init" in self.input() else []
        self.subprocess("pipeline.arms", [self.spec.module, "--config", str(tmp / "config.yaml"), flag, self.data_file(),
                        "--out", str(tmp / "model"), "--checkpoints", str(self.work_dir(".ckpt")), *start],
                        run_id, devices=self.cfg.compute.devices.get(self.arm), train=True)
        log_model(self.cfg, run_id, tmp / "model", self.out_dir / "model", name=self.arm)
        return {"model": str(self.out_dir / "model"), "arm": self.arm}

    def with_vllm_server(self, tmp, run_id, extra):
        """Rollouts from a vLLM server (an arm's `extra: {use_vllm: true, vllm_mode: server}`) that this stage starts on compute.rl_server_devices and stops
        when training ends; the trainer reaches it on a free port, and syncs weights on another."""
        from pipeline.core.procs import free_port, managed_server, vllm_server_command

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
