"""Pretraining one model from scratch on a corpus (transformers' Trainer, CPU)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from datasets import Dataset

from pipeline.toyworld.config import Recipe
from pipeline.toyworld.model import build_model


# ---- pretraining ----------------------------------------------------------------------------------
def pack(docs: list[str], tokenizer, block_size: int) -> Dataset:
    """Concatenate the tokenized documents and cut them into equal blocks (standard LM pretraining
    packing: no padding, every token trains); the tail shorter than a block is dropped."""
    ids = [t for enc in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in enc]
    n = len(ids) // block_size
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def pretrain(recipe: Recipe, docs: list[str], tokenizer, out_dir: Path, seed: int) -> dict[str, Any]:
    """Pretrain one model from scratch with transformers' Trainer and save it (HF format) to out_dir."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    m = recipe.model
    model = build_model(tokenizer, m.hidden, m.layers, m.heads, m.intermediate, m.max_positions, seed=seed)
    data = pack(docs, tokenizer, recipe.train.block_size)
    t = recipe.train
    with tempfile.TemporaryDirectory(prefix="toyworld-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
            learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
            lr_scheduler_type="cosine", logging_steps=max(1, t.max_steps // 10), save_strategy="no",
            report_to="none", seed=seed, data_seed=seed, use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return dict(
        params=sum(p.numel() for p in model.parameters()), documents=len(docs), blocks=len(data),
        tokens_seen=t.max_steps * t.batch_size * t.block_size, corpus_tokens=len(data) * t.block_size,
        train_seconds=round(seconds, 1), final_loss=round(losses[-1], 4) if losses else None,
        loss_curve=[round(x, 4) for x in losses], train_loss=round(result.training_loss, 4),
    )
