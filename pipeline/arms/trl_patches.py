"""Overrides of TRL trainers' private methods, shared by the arms: prompts encoded as every other
stage encodes them (`with_our_prompt_encoding`) and rollouts from the project's `cb` engine
(`with_cb_rollouts`), each checked against the TRL release it was written for."""
from __future__ import annotations

from pipeline.arms.common import TrainInputError
from tasks.base import encode_prompt

# the TRL release whose private GRPOTrainer/RLOOTrainer API with_cb_rollouts overrides (_generate_single_turn,
# with the trainer attributes it reads); constraints.txt pins it, `check_trl_private_api` refuses any other
TRL_PRIVATE_API = "1.16"


def check_trl_private_api(trainer_cls, method: str, strict: bool = True) -> None:
    """One-line TrainInputError unless the installed TRL is the release the override of the private
    `trainer_cls.method` was written for; strict=False asks only that the method exists."""
    import trl

    exists = hasattr(trainer_cls, method)
    if exists and (not strict or trl.__version__.split(".")[:2] == TRL_PRIVATE_API.split(".")):
        return
    escape = " or set rl.rollouts: trl" if method == "_generate_single_turn" else ""
    raise TrainInputError(f"pipeline/arms/trl_patches.py overrides TRL's private {trainer_cls.__name__}.{method} written for trl "
                          f"{TRL_PRIVATE_API}.*; installed trl {trl.__version__}{'' if exists else ' has no such method'}: "
                          f"install the pinned set with `make setup`{escape}")



def with_our_prompt_encoding(trainer_cls):
    """A TRL trainer (GRPOTrainer, RLOOTrainer, DistillationTrainer) whose plain-text prompts are
    encoded by `encode_prompt` like every other stage: TRL 1.16 encodes them with the tokenizer's
    special tokens, which doubles the BOS of a chat-rendered prompt for Llama-3, Mistral or Gemma."""
    from trl.data_utils import is_conversational

    check_trl_private_api(trainer_cls, "_tokenize_prompts", strict=False)

    class Trainer(trainer_cls):
        def _tokenize_prompts(self, prompts: list):
            if is_conversational({"prompt": prompts[0]}):
                return super()._tokenize_prompts(prompts)
            return [encode_prompt(self.processing_class, p) for p in prompts], None, {}

    Trainer.__name__ = trainer_cls.__name__
    return Trainer


def with_cb_rollouts(trainer_cls):
    """A TRL trainer (GRPOTrainer, RLOOTrainer) whose rollouts come from the project's engine
    (pipeline/sampling/engine.py: continuous batching, one prefill per prompt for its num_generations
    rollouts) instead of transformers `generate`, the path TRL takes without vLLM. TRL's own paths
    stay in charge for vLLM, transformers' continuous batching, images, DeepSpeed/FSDP, and for
    top_k / min_p / repetition_penalty, which the engine does not implement."""
    import inspect

    import torch

    from pipeline.arms import lora
    from pipeline.sampling import engine as batching

    check_trl_private_api(trainer_cls, "_generate_single_turn")
    # GRPOTrainer's returns (completion_ids, logprobs); RLOOTrainer's (no num_generations argument) the ids alone
    with_logprobs = "num_generations" in inspect.signature(trainer_cls._generate_single_turn).parameters

    class Trainer(trainer_cls):
        rollout_dtype = "float32"  # rl.rollout_dtype: bfloat16 samples from a bfloat16 copy of the policy

        def _rollout_model(self, model):
            """The model the rollouts are sampled from: the policy itself (under LoRA, the transformers model
            inside the PeftModel, adapters applied), or its bfloat16 copy with this step's weights (parameters
            cast, buffers such as RoPE's inv_freq kept in float32; under LoRA, the adapters merged into it)."""
            lm = lora.language_model(model)
            if self.rollout_dtype == "float32":
                return lm
            copy_ = getattr(self, "_rollout_copy", None)
            with torch.no_grad():
                if copy_ is None:  # built from the config: a deepcopy would keep forward wrappers bound to the policy
                    import copy

                    copy_ = self._rollout_copy = type(lm)(copy.deepcopy(lm.config)).eval()
                    for p in copy_.parameters():
                        p.requires_grad_(False)
                        p.data = p.data.to(torch.bfloat16)
                copy_.load_state_dict(lora.merged_state_dict(model) if lora.is_lora(model) else model.state_dict())
            return copy_

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
            model = self.accelerator.unwrap_model(self.model_wrapped)
            plain = (not self.use_vllm and not getattr(self, "use_transformers_continuous_batching", False)
                     and not images and not multimodal_fields and not self.is_deepspeed_enabled
                     and not self.is_fsdp_enabled and not self.top_k and not self.min_p
                     and self.repetition_penalty in (None, 1.0) and batching.supported(model))
            if not plain:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
            groups: list[list] = []  # TRL lists each prompt num_generations times in a row
            for ids in prompt_ids:
                if groups and groups[-1][0] == list(ids):
                    groups[-1][1] += 1
                else:
                    groups.append([list(ids), 1])
            n = groups[0][1] if len({c for _, c in groups}) == 1 else 1
            prompts = [g for g, _ in groups] if n > 1 else [list(ids) for ids in prompt_ids]
            # cb's draws are a function of (seed, prompt key = index in this call, sample, step): a fresh seed per
            # call from the trainer's seeded torch RNG (advanced by every call, and restored with a checkpoint, so
            # a resumed run draws what an uninterrupted one draws) with the step folded in twice. Nothing that
            # lives only in this process: a per-process call counter restarted at a resume and changed the
            # rollouts (the chaos test caught it). That counter equalled step + 1 in every uninterrupted run with
            # one generation per optimizer step (TRL's default), so this formula draws the same rollouts as the
            # runs behind docs/findings.md.
            step = self.state.global_step
            seed = (int(torch.randint(0, 2**62, (1,))) * 1_000_003 + step) * 1_000_003 + step + 1
            was_training = model.training
            model.eval()
            sampler = self._rollout_model(model)
            try:
                with batching.attention(sampler):
                    out, _ = batching.generate(sampler, prompts, n, max_tokens=self.max_completion_length,
                                               temperature=self.temperature, top_p=self.top_p if self.top_p else 1.0,
                                               eos_ids=list(self.eos_token_ids), seed=seed,
                                               width=max(len(prompt_ids), 1))
            finally:
                model.train(was_training)
            ids = [seq for row in out for seq in row]
            return (ids, None) if with_logprobs else ids

    Trainer.__name__ = trainer_cls.__name__
    return Trainer


def grpo_trainer_class(rollouts: str = "trl"):
    from trl import GRPOTrainer

    cls = with_our_prompt_encoding(GRPOTrainer)
    return with_cb_rollouts(cls) if rollouts == "cb" else cls
