"""The toy world's tokenizer and model factory: a fixed-vocabulary tokenizer and tiny Llamas
(the shipped checkpoints' architecture; tests build throwaway models with them)."""
from __future__ import annotations

import re
import string
from typing import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# ---- tokenizer ------------------------------------------------------------------------------------
PAD, UNK, EOS = "<|pad|>", "<|unk|>", "<|end|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
MARKERS = ["<think>", "</think>", "<answer>", "</answer>"]
SPECIALS = [PAD, UNK, EOS, USER, ASSISTANT, SYSTEM]
# Whole-word tokens: the toy_arith prompt's words plus a few common words kept from an early draft
# of the corpus templates (unused by the corpora now; removing them would change the shipped
# vocabulary). Any other ASCII word still round-trips, one letter per token.
WORDS = [
    "Compute", "Steps", "in", "result", "so", "The", "answer", "is", "Let", "me", "add", "step", "by",
    "It", "equals", "Quick", "check", "ok", "redo",
]
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}" + SYSTEM + "{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}" + USER + "{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}" + ASSISTANT + "{% generation %}{{ m['content'] }}" + EOS
    + "{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)


def build_tokenizer(words: Iterable[str] = WORDS) -> PreTrainedTokenizerFast:
    """A fixed-vocabulary tokenizer (no training, so it is identical on every machine).

    Pieces: the special/chat tokens and the <think>/<answer> markers as single tokens; each
    digit on its own; each listed word as one token (with or without a leading space); every
    other printable ASCII character, space and newline as one token. Decoding concatenates the
    pieces, so any printable-ASCII text round-trips exactly.
    """
    words = sorted(set(words), key=lambda w: (-len(w), w))
    for w in words:
        if not re.fullmatch(r"[A-Za-z]+", w):
            raise ValueError(f"build_tokenizer words: expected letters only, got {w!r}")
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # digits, letters, punctuation, space, \n
    vocab_list = SPECIALS + MARKERS + chars + words + [" " + w for w in words]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    word_alt = "|".join(words)
    # known words first (longest first, whole words only), then any single character
    pattern = (rf" ?(?:{word_alt})(?![A-Za-z])|[\s\S]" if words else r"[\s\S]")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    # the markers are single tokens but stay visible in decoded text (extraction needs them)
    fast.add_tokens(MARKERS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---- models ---------------------------------------------------------------------------------------
def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 128,
    layers: int = 4,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama for `tokenizer` (tied embeddings, head_dim 32: a size the
    vLLM CPU attention kernels support)."""
    heads = heads or max(1, hidden // 32)
    if hidden % heads:
        raise ValueError(f"build_model: hidden={hidden} must be a multiple of heads={heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model
