"""The project's sampling engine (`backend: cb`, pipeline/batching.py): the same samples as
`generate` under greedy decoding, the model's exact distribution under temperature and top-p, the
same distribution as `generate`'s samples, one prefill per prompt, seeded determinism."""
import collections
import itertools

import pytest
import torch

from pipeline import batching
from pipeline.config import GenerationConfig
from pipeline.sampling import Engine, load_tokenizer
from tasks import get_task
from tests.test_sampling import categories_of, homogeneity_p, prompts_for

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
    vLLM in test_sampling.py) does not tell `cb` and `generate` apart, and does tell a colder
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
    # a shard is its own call: the same (seed, first_chunk) gives the same samples on a rerun
    assert e.generate(ps[3:], 8, seed=3, first_chunk=1) == e.generate(ps[3:], 8, seed=3, first_chunk=1)
    greedy = Engine(model, GenerationConfig(backend="cb", temperature=0.0, max_tokens=10), 0).generate(ps[:2], 3)
    assert all(len({s.text for s in row}) == 1 for row in greedy)


def test_models_without_full_attention_are_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with pytest.raises(ValueError, match="generation.backend: 'cb' needs full attention"):
        batching.install_attention(Qwen2ForCausalLM(cfg))
