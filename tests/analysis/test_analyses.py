"""Report analyses (pipeline.analysis.analyses) on hand-built evaluation directories with known counts, and
the perplexity stage (pipeline.stages.perplexity) on a tiny toy-world model trained here for a few seconds."""
from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import torch
from mlflow.utils.validation import _validate_metric_name

from pipeline.analysis import analyses as analysis
from pipeline.stages import perplexity
from pipeline.core.io import write_jsonl
from pipeline.analysis.passk import PER_PROBLEM_COLUMNS, passk_table
from pipeline.toyworld.model import build_model, build_tokenizer
from tasks import get_task
from tasks.toy_arith import chain_steps, completion_text, parse_chain, plain_step

N = 10  # samples per problem
# correct samples per problem (12 toy_arith test problems: 6 at level 1, then 6 at level 2)
BASE = [0, 1, 10, 5, 0, 3, 9, 10, 0, 2, 1, 7]
RL = [0, 0, 10, 9, 0, 0, 10, 10, 0, 6, 0, 10]
SFT = [4, 1, 10, 8, 1, 3, 10, 10, 0, 5, 2, 9]
RL_LUCKY = {2: 10, 3: 4}  # problem index -> correct answers of RL whose reasoning is wrong


# ---- hand-built evaluation directories -------------------------------------------------------------


def good(p) -> str:
    steps = chain_steps(*parse_chain(p.question))
    return completion_text([plain_step(a, op, b) for a, op, b, _ in steps], p.answer)


def lucky(p) -> str:
    """Right answer, wrong reasoning: the first step's result is off by one."""
    steps = chain_steps(*parse_chain(p.question))
    lines = [plain_step(a, op, b, r + 1 if i == 0 else None) for i, (a, op, b, r) in enumerate(steps)]
    return completion_text(lines, p.answer)


def wrong(p) -> str:
    steps = chain_steps(*parse_chain(p.question))
    return completion_text([plain_step(a, op, b) for a, op, b, _ in steps], str(int(p.answer) + 1))


def write_eval(d, name, problems, texts: dict[str, list[str]]):
    """An evaluation directory as pipeline.stages.evaluate writes it, from given completions per problem."""
    task = get_task("toy_arith")
    d.mkdir(parents=True)
    records = [
        dict(model=name, problem_id=p.id, task=p.task, difficulty=p.difficulty, sample_index=j, completion=t,
             extracted=task.extract(t), correct=task.verify(p, t), num_tokens=len(t), finish_reason="stop")
        for p in problems for j, t in enumerate(texts[p.id])
    ]
    write_jsonl(d / "samples.jsonl", records)
    write_jsonl(d / "problems.jsonl", (p.to_dict() for p in problems))
    rec = pd.DataFrame(records)
    pp = rec.groupby("problem_id", sort=False)["correct"].agg(n="size", correct="sum").reset_index().assign(model=name)
    pp[PER_PROBLEM_COLUMNS].to_csv(d / "per_problem.csv", index=False)
    ks = analysis.default_ks(int(pp["n"].min()))
    passk_table(pp[PER_PROBLEM_COLUMNS], ks, n_boot=0).to_csv(d / "passk.csv", index=False)
    return d


def counted_texts(problems, counts, lucky_counts=None):
    """c correct samples at the END of each problem's n (so 'first correct' is not index 0)."""
    lucky_counts = lucky_counts or {}
    out = {}
    for i, (p, c) in enumerate(zip(problems, counts)):
        texts = [wrong(p)] * (N - c)
        texts += [lucky(p) if j < lucky_counts.get(i, 0) else good(p) for j in range(c)]
        out[p.id] = texts
    return out


def make_problems():
    """The 12 toy_arith test problems every hand-built evaluation uses (6 at level 1, 6 at level 2)."""
    return get_task("toy_arith").problems("test", 12, levels=[1, 2])


def write_evals(root, problems, counts: dict[str, list[int]], lucky: dict[str, dict[int, int]] | None = None):
    """One evaluation directory per model, each from its correct-sample counts per problem."""
    return {m: write_eval(root / m, m, problems, counted_texts(problems, c, (lucky or {}).get(m))) for m, c in counts.items()}


@pytest.fixture(scope="module")
def problems():
    return make_problems()


@pytest.fixture(scope="module")
def evals(tmp_path_factory, problems):
    return write_evals(tmp_path_factory.mktemp("evals"), problems, {"base": BASE, "rl": RL, "sft": SFT}, {"rl": RL_LUCKY})


@pytest.fixture(scope="module")
def runs(evals):
    return analysis.load_evals(evals)


def test_fixture_counts_are_what_the_verifier_says(runs):
    # the hand-built completions really verify as intended, so every expectation below rests on them
    for name, counts in (("base", BASE), ("rl", RL), ("sft", SFT)):
        assert runs[name].per_problem["correct"].tolist() == counts


# ---- analyses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,n,label", [
    (0, 10, "0"), (10, 10, "1.0"), (1, 10, "(0,0.1]"), (2, 20, "(0,0.1]"), (3, 30, "(0,0.1]"),
    (1, 30, "(0,0.1]"), (4, 30, "(0.1,0.2]"), (2, 10, "(0.1,0.2]"), (3, 10, "(0.2,0.3]"), (7, 10, "(0.6,0.7]"),
    (9, 10, "(0.8,0.9]"), (18, 20, "(0.8,0.9]"), (19, 20, "(0.9,1.0)"), (127, 128, "(0.9,1.0)"), (1, 128, "(0,0.1]"),
])
def test_accuracy_bin_edges(c, n, label):
    assert analysis.BIN_LABELS[analysis.accuracy_bin(c, n)] == label


def test_accuracy_histogram_counts(runs):
    hist = analysis.accuracy_histogram(runs)
    assert list(hist.columns) == analysis.BIN_LABELS
    expected_base = {"0": 3, "(0,0.1]": 2, "(0.1,0.2]": 1, "(0.2,0.3]": 1, "(0.4,0.5]": 1, "(0.6,0.7]": 1,
                     "(0.8,0.9]": 1, "1.0": 2}
    assert hist.loc["base"].to_dict() == {b: expected_base.get(b, 0) for b in analysis.BIN_LABELS}
    expected_rl = {"0": 6, "(0.5,0.6]": 1, "(0.8,0.9]": 1, "1.0": 4}
    assert hist.loc["rl"].to_dict() == {b: expected_rl.get(b, 0) for b in analysis.BIN_LABELS}
    assert hist.sum(axis=1).tolist() == [12, 12, 12]


def test_coverage_venn_and_lists(runs, problems):
    cov = analysis.coverage(runs)
    assert cov["num_problems"] == 12
    assert cov["solvable"] == {"base": 9, "rl": 6, "sft": 11}
    rl, sft = cov["vs_base"]["rl"], cov["vs_base"]["sft"]
    assert {k: rl[k] for k in ("both", "base_only", "model_only", "neither")} == \
        {"both": 6, "base_only": 3, "model_only": 0, "neither": 3}
    assert {k: sft[k] for k in ("both", "base_only", "model_only", "neither")} == \
        {"both": 9, "base_only": 0, "model_only": 2, "neither": 1}
    ids = [p.id for p in problems]
    assert [x["problem_id"] for x in rl["lost"]] == sorted(ids[i] for i in (1, 5, 10))
    assert rl["gained"] == []
    assert [x["problem_id"] for x in sft["gained"]] == sorted(ids[i] for i in (0, 4))
    task = get_task("toy_arith")
    by_id = {p.id: p for p in problems}
    for item, solver_counts in [(x, BASE) for x in rl["lost"]] + [(x, SFT) for x in sft["gained"]]:
        p = by_id[item["problem_id"]]
        # one correct completion of the solver (its first correct sample) and one wrong of the other model
        assert task.verify(p, item["correct_completion"]["completion"])
        assert item["correct_completion"]["sample_index"] == N - solver_counts[ids.index(p.id)]
        assert not task.verify(p, item["wrong_completion"]["completion"])
        assert item["answer"] == p.answer and item["difficulty"] == p.difficulty


def comb_passk(n, c, k):
    """Independent of pipeline.analysis.passk: the textbook form with binomial coefficients."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_dse(runs):
    gap = analysis.dse(runs)
    assert gap["rl"]["k_max"] == N
    assert gap["rl"]["base_pass_at_kmax"] == pytest.approx(9 / 12)
    assert gap["rl"]["pass_at_1"] == pytest.approx(sum(RL) / 120)
    assert gap["rl"]["dse"] == pytest.approx(9 / 12 - sum(RL) / 120)
    assert gap["sft"]["dse"] == pytest.approx(9 / 12 - sum(SFT) / 120)
    assert "base" not in gap


def test_passk_by_difficulty(runs):
    df = analysis.passk_by_difficulty(runs)
    assert list(dict.fromkeys(df["difficulty"])) == ["1", "2"]
    assert sorted(df["k"].unique()) == [1, 2, 4, 8, 10]
    assert len(df) == 2 * 3 * 5 and set(df["num_problems"]) == {6}
    counts = {"base": BASE, "rl": RL, "sft": SFT}
    for row in df.itertuples():
        cs = counts[row.model][:6] if row.difficulty == "1" else counts[row.model][6:]
        assert row.pass_at_k == pytest.approx(sum(comb_passk(N, c, row.k) for c in cs) / 6)
    base1 = df[(df["model"] == "base") & (df["difficulty"] == "1")].set_index("k")["pass_at_k"]
    assert base1[1] == pytest.approx(19 / 60) and base1[10] == pytest.approx(4 / 6)


def test_reasoning_check_and_cot_passk(runs):
    r = analysis.reasoning_check(runs)
    assert r["base"]["share"] == 1.0 and r["base"]["correct"] == sum(BASE)
    rl = r["rl"]
    assert rl["correct"] == 55 and rl["correct_with_reasoning"] == 55 - 14
    assert rl["share"] == pytest.approx(41 / 55)
    assert rl["problems_solved"] == 6 and rl["problems_solved_with_reasoning"] == 5
    assert rl["pass_at_k"][10] == pytest.approx(6 / 12)
    assert rl["cot_pass_at_k"][10] == pytest.approx(5 / 12)
    cot = [c - RL_LUCKY.get(i, 0) for i, c in enumerate(RL)]
    assert rl["cot_pass_at_k"][1] == pytest.approx(sum(cot) / 120)


def test_analyze_writes_everything(evals, tmp_path):
    res = analysis.analyze(evals, tmp_path / "report")
    for key in ("coverage", "accuracy_histogram", "passk_by_difficulty", "cot_passk", "analysis"):
        assert (tmp_path / "report" / res["files"][key].split("/")[-1]).is_file(), key
    for png in ("accuracy_histogram.png", "passk_by_difficulty.png", "cot_passk.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cov = json.loads((tmp_path / "report" / "coverage.json").read_text())
    assert cov["vs_base"]["rl"]["base_only"] == 3 and len(cov["vs_base"]["sft"]["gained"]) == 2
    saved = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert saved["dse"]["rl"]["dse"] == pytest.approx(9 / 12 - 55 / 120)
    m = res["metrics"]
    for name in m:
        _validate_metric_name(name)  # MLflow accepts every metric name
    assert m["coverage/rl_vs_base/base_only"] == 3.0 and m["acc_hist/base/0"] == 3.0
    assert m["dse/sft"] == pytest.approx(9 / 12 - 63 / 120)
    assert m["reasoning/rl/share_correct_with_reasoning"] == pytest.approx(41 / 55)
    assert not list((tmp_path / "report").glob(".*tmp*"))  # no temporary files left behind


def test_bad_inputs_give_one_line_errors(evals, tmp_path, problems):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("samples.jsonl", "problems.jsonl"):
        (bad / f).write_text((evals["base"] / f).read_text())
    (bad / "per_problem.csv").write_text("model,problem,n,correct\nbase,x,1,0\n")
    with pytest.raises(ValueError, match=r"per_problem\.csv: columns .*expected model,problem_id,n,correct"):
        analysis.load_eval("bad", bad)
    short = write_eval(tmp_path / "short", "rl", problems[:11], counted_texts(problems[:11], RL[:11]))
    with pytest.raises(ValueError, match="cover different problems"):
        analysis.coverage(analysis.load_evals({"base": evals["base"], "rl": short}))
    with pytest.raises(FileNotFoundError, match="evaluation directory of model 'x' not found"):
        analysis.load_eval("x", tmp_path / "nowhere")


# ---- perplexity ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """A tiny Llama from the toy world, trained for ~150 steps on correct toy_arith traces so its
    greedy samples are structured text (an untrained one just repeats one token). One thread:
    the machine's two cores are shared, and two spinning threads there are far slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer()
    task = get_task("toy_arith")
    seqs = [tok(task.prompt(p, tok) + good(p) + tok.eos_token, add_special_tokens=False)["input_ids"]
            for p in task.problems("train", 256, levels=[1, 2])]
    model = build_model(tok, hidden=64, layers=2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = [seqs[i] for i in torch.randint(len(seqs), (32,), generator=g).tolist()]
        T = max(map(len, batch))
        ids = torch.tensor([s + [tok.pad_token_id] * (T - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (T - len(s)) for s in batch])
        model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("toy") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def greedy_and_shuffled(model, tok, prompts, seed=0):
    rng = random.Random(seed)
    greedy, shuffled = [], []
    for prompt in prompts:
        enc = tok(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=40, pad_token_id=tok.pad_token_id)
        ids = [t for t in out[0, enc["input_ids"].shape[1]:].tolist() if t != tok.eos_token_id]
        greedy.append(tok.decode(ids))
        rng.shuffle(ids)
        shuffled.append(tok.decode(ids))
    return greedy, shuffled


@pytest.fixture(scope="module")
def toy_samples(toy_model, problems):
    model, tok = perplexity.load_scorer(toy_model)
    task = get_task("toy_arith")
    prompts = [task.prompt(p, tok) for p in problems]
    greedy, shuffled = greedy_and_shuffled(model, tok, prompts)
    return model, tok, prompts, greedy, shuffled


def test_own_greedy_samples_have_lower_ppl_than_shuffled_text(toy_samples):
    model, tok, prompts, greedy, shuffled = toy_samples
    assert len(set(greedy)) > 1 and all("<answer>" in g for g in greedy)  # the model learned the format
    g = perplexity.score(model, tok, prompts, greedy)
    s = perplexity.score(model, tok, prompts, shuffled)
    assert all(a.num_tokens == b.num_tokens > 0 for a, b in zip(g, s))
    assert all(a.ppl < b.ppl for a, b in zip(g, s))
    assert sum(a.ppl for a in g) * 3 < sum(b.ppl for b in s)


def test_ppl_is_over_completion_tokens_only_and_batch_invariant(toy_samples):
    model, tok, prompts, greedy, shuffled = toy_samples
    comps = [greedy[0], shuffled[1], greedy[2], shuffled[3] + " extra words", ""]
    ps = prompts[:5]
    one = perplexity.score(model, tok, ps, comps, batch_size=1)
    many = perplexity.score(model, tok, ps, comps, batch_size=4)  # left padding, mixed lengths
    for a, b in zip(one, many):
        assert a.num_tokens == b.num_tokens
        assert a.nll == pytest.approx(b.nll, rel=1e-4, abs=1e-4)
        assert a.entropy == pytest.approx(b.entropy, rel=1e-4, abs=1e-4)
    assert one[4].num_tokens == 0 and one[4].ppl is None  # an empty completion has no perplexity
    # by hand: one unpadded forward pass over prompt+completion, summing only completion positions
    for prompt, comp, st in zip(ps[:4], comps[:4], one[:4]):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(comp, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
        per_tok = [-logp[len(p_ids) + t - 1, c].item() for t, c in enumerate(c_ids)]
        assert st.num_tokens == len(c_ids)
        assert st.nll == pytest.approx(sum(per_tok), rel=1e-4)
        assert st.ppl == pytest.approx(math.exp(sum(per_tok) / len(c_ids)), rel=1e-4)
        rows = logp[len(p_ids) - 1 : len(p_ids) + len(c_ids) - 1]  # the positions predicting completion tokens
        assert st.entropy == pytest.approx(-(rows.exp() * rows).sum().item(), rel=1e-4)
        with_prompt = sum(-logp[i, t].item() for i, t in enumerate((p_ids + c_ids)[1:]))
        assert with_prompt > st.nll + 1.0  # the prompt's own tokens are not counted
    # the prompt is conditioned on: the same completion after another prompt scores differently
    other = perplexity.score(model, tok, [prompts[6]], [comps[0]])[0]
    assert other.nll != pytest.approx(one[0].nll, rel=1e-3)


def test_perplexity_stage_end_to_end(toy_model, toy_samples, problems, toyworld, tmp_path):
    _, _, prompts, greedy, shuffled = toy_samples
    ev = {
        "base": write_eval(tmp_path / "e" / "base", "base", problems, {p.id: [g, g] for p, g in zip(problems, greedy)}),
        "rl": write_eval(tmp_path / "e" / "rl", "rl", problems, {p.id: [s, s] for p, s in zip(problems, shuffled)}),
    }
    out = tmp_path / "ppl"
    # the "rl" model is another checkpoint (the toy teacher): the stage must score with it, not with the base
    teacher = str(toyworld / "teacher")
    res = perplexity.main(["--base", toy_model, "--model", f"rl={teacher}", "--evals", f"base={ev['base']}",
                           f"rl={ev['rl']}", "--out", str(out), "--subset", "8", "--seed", "0", "--batch-size", "3"])
    saved = json.loads((out / "perplexity.json").read_text())
    assert (out / "_SUCCESS").is_file() and (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert saved["subset"] == 8 and saved["ppl_under_base"]["base"]["n"] == 8
    assert saved["models"] == {"rl": teacher}
    assert saved["ppl_under_base"]["base"]["median"] < saved["ppl_under_base"]["rl"]["median"]
    assert saved["ppl_of_base_samples"]["rl"]["median"] != pytest.approx(saved["ppl_of_base_samples"]["base"]["median"])
    assert saved["entropy"]["rl"]["mean"] > 0 and saved["entropy"]["base"]["mean"] > 0
    assert saved["entropy"]["rl"]["mean"] != pytest.approx(saved["entropy"]["base"]["mean"])
    assert "own sampled completions" in saved["entropy_method"]
    own = saved["ppl_own_samples"]  # PPL_m(Y_m): each model's perplexity of its own samples
    assert own["base"] == saved["ppl_under_base"]["base"]
    assert own["rl"]["median"] != pytest.approx(saved["ppl_under_base"]["rl"]["median"])
    assert "ppl_own/rl/median" in res["metrics"]
    rows = [json.loads(x) for x in (out / "perplexity_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 2 + 8 * 2  # base scores base+rl samples, rl scores base+rl samples
    assert {(r["scorer"], r["source"]) for r in rows} == {("base", "base"), ("base", "rl"), ("rl", "base"), ("rl", "rl")}
    # each scorer's numbers are its own model's: rescore every row here with the checkpoint it names
    index = {p.id: i for i, p in enumerate(problems)}
    for scorer, path in (("base", toy_model), ("rl", teacher)):
        model, tok = perplexity.load_scorer(path)
        mine = [r for r in rows if r["scorer"] == scorer]
        comps = [(greedy if r["source"] == "base" else shuffled)[index[r["problem_id"]]] for r in mine]
        direct = perplexity.score(model, tok, [prompts[index[r["problem_id"]]] for r in mine], comps)
        assert [r["nll"] for r in mine] == pytest.approx([d.nll for d in direct], rel=1e-4, abs=1e-4)
    base_nll = {(r["source"], r["problem_id"], r["sample_index"]): r["nll"] for r in rows if r["scorer"] == "base"}
    assert all(r["nll"] != pytest.approx(base_nll[(r["source"], r["problem_id"], r["sample_index"])])
               for r in rows if r["scorer"] == "rl")
    for name in res["metrics"]:
        _validate_metric_name(name)
    # the subset is seeded: same seed, same pairs; and at most what exists
    runs = analysis.load_evals(ev)
    assert perplexity.pick_subset(runs, 8, 0) == perplexity.pick_subset(runs, 8, 0)
    assert perplexity.pick_subset(runs, 8, 0) != perplexity.pick_subset(runs, 8, 1)
    assert len(perplexity.pick_subset(runs, 1000, 0)) == 24


def test_perplexity_cli_errors(toy_model, evals, tmp_path):
    with pytest.raises(SystemExit, match="--model: expected NAME=PATH, got 'rl'"):
        perplexity.main(["--base", toy_model, "--model", "rl", "--evals", f"base={evals['base']}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--model teacher: no evaluation directory"):
        perplexity.main(["--base", toy_model, "--model", f"teacher={toy_model}", "--evals", f"base={evals['base']}",
                         "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--base: local model path"):
        perplexity.main(["--base", str(tmp_path / "missing"), "--evals", f"base={evals['base']}", "--out", str(tmp_path)])
