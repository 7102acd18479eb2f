"""The project's sampling engine (`backend: cb`, pipeline/sampling/engine.py): the same samples as
`generate` under greedy decoding, the model's exact distribution under temperature and top-p (on
the toy base, and on a random Qwen2-style model with grouped-query heads, attention biases and tied
embeddings, with mixed prompt lengths, mid-stream admissions, dropped rows and max_tokens cuts), the
same distribution as `generate`'s samples, one prefill per prompt, and samples that depend on
(seed, prompt key, sample index) alone, not on how the work was cut."""
import collections
import itertools

import pytest
import torch

from pipeline.sampling import engine as batching
from pipeline.config import GenerationConfig
from pipeline.sampling.backends import Engine, load_tokenizer
from tasks import get_task
from tests.sampling.test_backends import categories_of, homogeneity_p, prompts_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(model):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    return lm, load_tokenizer(model)


def test_greedy_equals_generate_with_refills_and_padding(toyworld):
    """Prompts of different lengths in one prefill block (left padding), and a width that forces
    prompts to be admitted as earlier rows end: every row equals `generate`'s greedy decode."""
    model = str(toyworld / "teacher")
    lm, tok = load(model)
    task = get_task("toy_arith")
    prompts = [task.prompt(p, tok) for p in task.problems("test", 6, seed=0, levels=[1, 3, 5])]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) > 1  # padding is exercised
    want = []
    for i in ids:  # one prompt at a time: no padding on the reference side
        g = lm.generate(torch.tensor([i]), do_sample=False, max_new_tokens=40, eos_token_id=[tok.eos_token_id],
                        pad_token_id=tok.pad_token_id)
        want.append(g[0, len(i):].tolist())
    batching.install_attention(lm)
    got, stats = batching.generate(lm, ids, 1, max_tokens=40, temperature=0, top_p=1.0, eos_ids=[tok.eos_token_id],
                                   seed=0, width=2, prefill_batch=2)
    assert [g[0] for g in got] == want
    assert stats.prefill_tokens == sum(len(i) for i in ids)


def qwen_gqa(seed=0):
    """A random Qwen2-style model: 4 query heads on 2 KV heads, q/k/v biases, tied embeddings, the toy
    tokenizer's vocabulary; initialised wide enough (0.3) that its next-token distributions are peaked."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pipeline.toyworld.model import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.3,
                      max_position_embeddings=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    lm = Qwen2ForCausalLM(cfg).eval()
    assert lm.model.layers[0].self_attn.k_proj.bias is not None and lm.lm_head.weight is lm.model.embed_tokens.weight
    return lm


def greedy_reference(lm, ids, max_tokens, eos):
    """`generate(do_sample=False)` one prompt at a time (no padding on the reference side)."""
    out = []
    for i in ids:
        g = lm.generate(torch.tensor([i]), do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=0)
        out.append(g[0, len(i):].tolist())
    return out


def test_greedy_equals_generate_on_a_gqa_model_with_biases_and_tied_embeddings():
    """Five prompts of lengths 3..11 in blocks of two (left padding), width 2 (admissions as rows end),
    an end-of-sequence token that some rows draw early and a max_tokens cut for the others."""
    lm = qwen_gqa()
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, lm.config.vocab_size, (L,), generator=g).tolist() for L in (3, 11, 5, 9, 7)]
    free = greedy_reference(lm, ids, 10, [])
    eos = [free[0][3]]  # the 4th token of the first prompt's greedy decode ends that row early
    want = greedy_reference(lm, ids, 10, eos)
    lens = [len(w) for w in want]
    assert min(lens) < 10 and max(lens) == 10, lens  # both an early end and a max_tokens cut
    batching.install_attention(lm)
    got, stats = batching.generate(lm, ids, 3, max_tokens=10, temperature=0, top_p=1.0, eos_ids=eos, seed=0, width=2,
                                   prefill_batch=2)
    assert [row[0] for row in got] == want and all(len({tuple(r) for r in row}) == 1 for row in got)
    assert stats.prefill_tokens == sum(map(len, ids)) and stats.peak_blocks == 2


def test_samples_follow_the_exact_distribution_on_a_gqa_model_with_admissions_and_drops():
    """Three prompts of different lengths, two in the first block (padding), the third admitted
    mid-stream once the first block's ended rows are dropped (an end-of-sequence token most rows draw
    at once, width 2.5 n); three tokens at most (a max_tokens cut). Per prompt, the samples fit the
    exact temperature/top-p distribution and not the one at another temperature (the test has power)."""
    lm = qwen_gqa()
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(3, lm.config.vocab_size, (L,), generator=g).tolist() for L in (4, 9, 6)]
    with torch.no_grad():  # each prompt's most likely first token ends rows: a quarter of a block ends at step 1
        eos = sorted({int(lm(torch.tensor([i])).logits[0, -1].argmax()) for i in ids})
    temperature, top_p, n = 0.5, 0.8, 1200
    exact = [exact_distribution(lm, i, 3, temperature, top_p, eos) for i in ids]
    batching.install_attention(lm)

    out, stats = batching.generate(lm, ids, n, max_tokens=3, temperature=temperature, top_p=top_p, eos_ids=eos,
                                   seed=3, width=5 * n // 2, prefill_batch=2)
    samples = [[tuple(s) for s in row] for row in out]
    assert stats.prefill_tokens == sum(map(len, ids))
    assert stats.peak_blocks == 2  # the third prompt decoded beside the first block's survivors
    assert stats.row_steps < 3 * n * 2  # rows were dropped before the end (else 2 steps x 3n rows)
    for row, probs in zip(samples, exact):
        assert len(probs) >= 3 and any(len(k) < 3 for k in probs) and any(len(k) == 3 for k in probs)
        assert goodness_of_fit(row, probs) > 0.001
    warmer = [exact_distribution(lm, i, 3, 0.7, top_p, eos) for i in ids]  # a wider nucleus: a superset
    assert min(goodness_of_fit(row, probs) for row, probs in zip(samples, warmer)) < 0.001


def exact_distribution(lm, ids, depth, temperature, top_p, eos):
    """P(first `depth` tokens) under temperature and top-p, from the model's logits, by enumerating
    the nucleus at every step (a sequence that ends early is shorter)."""
    def nucleus(prefix):
        p = torch.softmax(lm(torch.tensor([prefix])).logits[0, -1].double() / temperature, -1)
        sp, si = p.sort(descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p
        return zip(si[keep].tolist(), (sp[keep] / sp[keep].sum()).tolist())

    out = {}

    def walk(seq, prob):
        if len(seq) == depth or (seq and seq[-1] in eos):
            out[tuple(seq)] = prob
            return
        for t, p in nucleus(ids + seq):
            walk(seq + [t], prob * p)

    with torch.no_grad():
        walk([], 1.0)
    return out


def goodness_of_fit(samples, probs):
    from scipy.stats import chisquare

    n = len(samples)
    counts = collections.Counter(samples)
    assert set(counts) <= set(probs), "a sample outside the nucleus"
    big = [k for k, p in probs.items() if p * n >= 5]
    obs = [counts[k] for k in big]
    exp = [probs[k] * n for k in big]
    if len(big) < len(probs):  # the rare outcomes pooled in one cell
        obs.append(n - sum(obs))
        exp.append(n - sum(exp))
    return chisquare(obs, exp)[1]


def test_samples_follow_the_models_exact_distribution(toyworld):
    """Chi-square goodness of fit of 3,000 four-token samples against the exact temperature/top-p
    distribution; samples at another temperature fail the same test (it has power)."""
    model = str(toyworld / "base")
    lm, tok = load(model)
    ids = tok(prompts_for(model, 1)[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # follow the greedy path to where the model is unsure, and sample from there
        while (p := torch.softmax(lm(torch.tensor([ids])).logits[0, -1], -1)).max() > 0.7:
            ids = ids + [int(p.argmax())]
    eos = [tok.eos_token_id]
    probs = exact_distribution(lm, ids, 4, 1.0, 0.95, eos)
    assert len(probs) >= 3  # several outcomes, and a nucleus that cuts (top_p 0.95)
    batching.install_attention(lm)

    def draw(temperature, top_p):
        out, _ = batching.generate(lm, [ids], 3000, max_tokens=4, temperature=temperature, top_p=top_p,
                                   eos_ids=eos, seed=1, width=1024)
        return [tuple(s) for s in out[0]]

    assert goodness_of_fit(draw(1.0, 0.95), probs) > 0.001
    cold = draw(0.6, 0.95)
    assert goodness_of_fit(cold, probs) < 0.001


def test_cb_and_generate_sample_the_same_distribution(toyworld):
    """Whole completions: a chi-square test of homogeneity on the samples' categories (as for
    vLLM in sampling/test_backends.py) does not tell `cb` and `generate` apart, and does tell a colder
    temperature apart."""
    hf, cb, cold = categories_of(toyworld, "hf", 1), categories_of(toyworld, "cb", 1), categories_of(toyworld, "cb", 2, 0.3)
    assert homogeneity_p(hf, cb) > 0.001, (collections.Counter(hf), collections.Counter(cb))
    assert homogeneity_p(cb, cold) < 0.001


def test_engine_counts_reasons_seeds_and_shards(toyworld):
    model = str(toyworld / "base")
    gen = GenerationConfig(backend="cb", temperature=1.0, top_p=0.95, max_tokens=12, batch_size=16)
    e = Engine(model, gen, seed=0)
    ps = prompts_for(model, 6)
    a, b = e.generate(ps, 8, seed=3), e.generate(ps, 8, seed=3)
    assert a == b and a != e.generate(ps, 8, seed=4)
    assert len(a) == 6 and all(len(r) == 8 for r in a)
    for s in itertools.chain(*a):
        assert 1 <= s.num_tokens <= 12 and (s.finish_reason == "stop" or s.num_tokens == 12)
    assert {s.finish_reason for s in itertools.chain(*a)} == {"stop", "length"}
    # a shard draws what the whole call drew for its prompts (keys: their indices in the whole call)
    assert e.generate(ps[3:], 8, seed=3, keys=[3, 4, 5]) == a[3:] != e.generate(ps[3:], 8, seed=3)
    assert e.generate(ps, 4, seed=3, first_sample=4) == [row[4:] for row in a]  # samples 4..7 alone
    greedy = Engine(model, GenerationConfig(backend="cb", temperature=0.0, max_tokens=10), 0).generate(ps[:2], 3)
    want = [e.lm.generate(**e.encode([p]), do_sample=False, max_new_tokens=10, pad_token_id=e.tok.pad_token_id,
                          eos_token_id=e.eos_ids)[0, len(e.encode([p])["input_ids"][0]):].tolist() for p in ps[:2]]
    assert [[s.num_tokens for s in row] for row in greedy] == [[min(len(w), 10)] * 3 for w in want]
    assert [[s.text for s in row] for row in greedy] == [[e.tok.decode(w, skip_special_tokens=True)] * 3 for w in want]


def test_samples_do_not_depend_on_how_the_work_is_cut(toyworld):
    """A prompt's samples are a function of (seed, its key, sample index): shards of 1, 4 and all 16
    problems, widths 32 and 256, two data-parallel ranks (alternate shards) and a call for samples
    4..7 alone all give the same token ids. (Measured: 0 of 6,782 tokens differ over shard sizes 1, 4
    and 32 and widths 32-1024 at n=16 on 32 problems: the logits do not move with the batch here.)"""
    from pipeline.sampling.shards import problem_key

    model = str(toyworld / "base")
    lm, tok = load(model)
    task = get_task("toy_arith")
    problems = task.problems("test", 16, seed=0, levels=[1, 2, 3])
    ids = [tok(task.prompt(p, tok), add_special_tokens=False)["input_ids"] for p in problems]
    keys = [problem_key(p.id) for p in problems]
    batching.install_attention(lm)

    def run(shards, width=256, n=8, first_sample=0):
        out = {}
        for s in shards:
            rows, _ = batching.generate(lm, [ids[i] for i in s], n, max_tokens=12, temperature=0.8, top_p=0.95,
                                        eos_ids=[tok.eos_token_id], seed=5, keys=[keys[i] for i in s],
                                        first_sample=first_sample, width=width)
            out.update(zip(s, rows))
        return [out[i] for i in range(len(ids))]

    def cut(size):
        return [list(range(i, min(i + size, len(ids)))) for i in range(0, len(ids), size)]

    whole = run(cut(16))
    assert len({tuple(s) for row in whole for s in row}) > len(ids)  # real sampling: samples differ within rows
    for size in (1, 4):
        assert run(cut(size)) == whole
    assert run(cut(16), width=32) == whole and run(cut(4), width=32) == whole
    assert run(cut(4)[0::2] + cut(4)[1::2]) == whole  # rank 0's shards, then rank 1's
    assert run(cut(16), n=4, first_sample=4) == [row[4:] for row in whole]
    rows, _ = batching.generate(lm, [ids[0]] * 2, 8, max_tokens=12, temperature=0.8, top_p=0.95,
                                eos_ids=[tok.eos_token_id], seed=5)
    assert rows[0] != rows[1]  # default keys (the index in the call): one prompt listed twice gets two sets


def test_wide_nucleus_takes_the_full_sort_and_keeps_top_p_warpers_set():
    """Rows whose nucleus is wider than the 64 most likely tokens (a flat row at high temperature)
    sort the whole vocabulary; beside a peaked row (the top-64 path) in one call, each row's draws
    over an even grid of uniforms hit exactly TopPLogitsWarper's kept set, at its probabilities."""
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(2, 144)
    logits[1] *= 8  # peaked: its nucleus is a handful of tokens
    temperature, top_p, grid = 3.0, 0.9, 8192
    rows = logits.repeat_interleave(grid, 0)
    u = ((torch.arange(grid, dtype=torch.float64) + 0.5) / grid).repeat(2)
    stats = batching.Stats()
    tok = batching.sample_next(rows, temperature, top_p, u, stats)
    assert stats.full_sorts == grid  # the flat row's draws, and only those, took the full sort
    kept = TopPLogitsWarper(top_p)(None, logits / temperature) > -float("inf")
    assert kept[0].sum() > batching.TOPK_FIRST and kept[1].sum() < batching.TOPK_FIRST
    for r in range(2):
        drawn = tok[r * grid : (r + 1) * grid]
        assert set(drawn.tolist()) == set(kept[r].nonzero().squeeze(1).tolist())
        p = torch.softmax(logits[r] / temperature, -1) * kept[r]
        freq = torch.bincount(drawn, minlength=144) / grid
        assert torch.allclose(freq, (p / p.sum()).float(), atol=1.5 / grid)


def test_generate_takes_the_full_sort_on_a_flat_random_model(tiny_model):
    lm, tok = load(tiny_model)  # random init: near-uniform next-token distributions
    batching.install_attention(lm)
    _, stats = batching.generate(lm, [[5, 6, 7]], 4, max_tokens=3, temperature=1.5, top_p=0.95, eos_ids=[2], seed=0)
    assert stats.full_sorts == stats.tokens == 12


def test_models_without_full_attention_are_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with pytest.raises(ValueError, match="generation.backend: 'cb' needs full attention"):
        batching.install_attention(Qwen2ForCausalLM(cfg))


def test_mistral_style_sliding_window_is_refused():
    """MistralConfig sets `sliding_window` without `layer_types`: not full attention."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, sliding_window=8)
    lm = MistralForCausalLM(cfg)
    assert not batching.supported(lm)
    with pytest.raises(ValueError, match=r"^generation.backend: 'cb' needs full attention .*'sliding_attention'"):
        batching.install_attention(lm)
    assert batching.supported(MistralForCausalLM(MistralConfig(**{**cfg.to_dict(), "sliding_window": None})))


@pytest.mark.parametrize("model", ["toy base, float32", "toy base, bfloat16", "qwen2 gqa"])
def test_the_written_out_decode_step_equals_the_module_forward(toyworld, model):
    """pipeline/sampling/decode_step.py runs transformers' operations without its modules: the same
    token ids, sample for sample, with prompts admitted mid-stream and ended rows dropped (width 3 n);
    on the toy base in float32 and bfloat16, and on a Qwen2-style model with grouped-query heads and
    biases. A projection wrapped by LoRA (peft) keeps the module forward, which applies the adapter."""
    from peft import LoraConfig, get_peft_model

    from pipeline.sampling import decode_step

    if model.startswith("toy"):
        lm, tok = load(str(toyworld / "base"))
        lm = lm.to(torch.bfloat16 if model.endswith("bfloat16") else torch.float32)
        task = get_task("toy_arith")
        ids = [tok(task.prompt(p, tok), add_special_tokens=False)["input_ids"]
               for p in task.problems("test", 8, seed=0, levels=[1, 3, 5])]
        eos = [tok.eos_token_id]
    else:
        lm = qwen_gqa()
        g = torch.Generator().manual_seed(4)
        ids = [torch.randint(3, lm.config.vocab_size, (L,), generator=g).tolist() for L in (4, 9, 6, 7)]
        with torch.no_grad():  # the second prompt's most likely first token ends rows: drops and admissions
            eos = [int(lm(torch.tensor([ids[1]])).logits[0, -1].argmax())]
    batching.install_attention(lm)
    assert decode_step.step_for(lm) is decode_step.decode
    kw = dict(max_tokens=60, temperature=0.8, top_p=0.95, eos_ids=eos, seed=1, width=48)
    fast, stats = batching.generate(lm, ids, 16, **kw)
    slow, _ = batching.generate(lm, ids, 16, fast_step=False, **kw)
    assert fast == slow
    assert stats.peak_blocks > 1 and stats.row_steps < max(map(len, (s for row in fast for s in row))) * 48
    adapted = get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj"]))
    assert decode_step.step_for(adapted.base_model.model) is None
