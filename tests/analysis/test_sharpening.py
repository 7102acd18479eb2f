"""The analyses that tell sharpening from new capability (pipeline/analysis/sharpening.py), each on
hand-made counts with a known answer, and the control arms' rewards."""
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis import sharpening as sh


def pp(counts, n=4, ids=None):
    ids = ids or [f"p{i}" for i in range(len(counts))]
    return pd.DataFrame({"problem_id": ids, "n": n, "correct": counts})


def test_crossover_on_known_counts():
    # base: problems A and B each solved 1 in 4 -> pass@k = k/4 on both; arm: A always, B never -> 0.5 at every k
    base, arm = pp([1, 1]), pp([4, 0])
    c = sh.crossover(base, arm, n_boot=0)
    assert c["k"] == 2 and c["k_limit"] == 4 and c["arm_leads_at_1"]  # 0.5 >= 0.5 at k = 2: ties count
    assert "k = 2" in sh.crossover_words(c)
    # the base never solves the arm's problem: no crossover up to k = n
    c = sh.crossover(pp([0, 1]), pp([4, 4]), n_boot=0)
    assert c["k"] is None and "no crossover up to k = 4" in sh.crossover_words(c)
    # an arm behind at k = 1 has no lead to lose
    c = sh.crossover(pp([2, 2]), pp([1, 1]), n_boot=200)
    assert c["k"] is None and not c["arm_leads_at_1"] and "no lead" in sh.crossover_words(c)
    assert sh.crossover_cell(c) == "no lead" and c["ci_low"] is None


def test_crossover_interval_covers_and_reports_a_tail_beyond_n():
    rng = np.random.default_rng(0)
    n = 16
    # 60 problems: the arm sharpens (solves the base's easy problems more often), the base keeps 6 the arm lost
    base_c = np.r_[rng.integers(2, 10, 54), [1] * 6]
    arm_c = np.r_[np.minimum(base_c[:54] + 6, n), [0] * 6]
    c = sh.crossover(pp(base_c, n), pp(arm_c, n), n_boot=500, seed=1)
    assert c["k"] is not None and c["ci_low"] <= c["k"] and (c["ci_high"] is None or c["k"] <= c["ci_high"])
    assert 0 < c["share_crossing"] <= 1
    # the arm solves 6 problems the base never does and loses none: (almost) no resample crosses
    c = sh.crossover(pp(np.r_[base_c[:54], [0] * 6], n), pp(np.r_[arm_c[:54], [3] * 6], n), n_boot=500, seed=1)
    assert c["k"] is None and c["ci_low"] is None and c["ci_high"] is None and c["share_crossing"] < 0.02  # a resample without the 6 can tie


def test_guesser_passk_is_exact():
    got = sh.guesser_passk(["1", "4"], ["1", "1", "2", "3"], [1, 2])
    assert got[1] == pytest.approx((0.5 + 0) / 2) and got[2] == pytest.approx((1 - 0.5 ** 2) / 2)
    with pytest.raises(ValueError, match="no training answers"):
        sh.guesser_passk(["1"], [], [1])


def test_the_guesser_is_graded_like_the_models():
    """The guessing floor counts a training answer as right when the task's grader (verify) accepts it, so
    "0.5" and "1/2" both hit a gold answer of \\frac{1}{2} on math, as they would in a model's sample."""
    from tasks.base import Problem
    from tasks.math import MathTask

    task = MathTask()
    gold = Problem(id="m", task="math", question="?", answer="\\frac{1}{2}")
    accepts = lambda g, guess: task.verify(gold, f"<answer>{guess}</answer>")  # noqa: E731
    train = ["0.5", "1/2", "3", "4"]
    assert sh.guesser_passk([gold.answer], train, [1, 2], accepts) == pytest.approx({1: 0.5, 2: 0.75})
    assert sh.guesser_passk([gold.answer], train, [1])[1] == 0  # exact strings: no hit


def test_support_transitions_per_level():
    base, arm = pp([1, 0, 2, 0]), pp([3, 1, 0, 0])
    levels = {"p0": "1", "p1": "1", "p2": "2", "p3": "2"}
    t = sh.support_transitions(base, arm, levels).set_index("level")
    assert t.loc["all", list(sh.SUPPORT)].tolist() == [1, 1, 1, 1] and t.loc["all", "problems"] == 4
    assert t.loc["1", list(sh.SUPPORT)].tolist() == [1, 1, 0, 0]
    assert t.loc["2", list(sh.SUPPORT)].tolist() == [0, 0, 1, 1]
    # the same model twice: given a problem's t correct of 8 samples, the base holds none of them with
    # probability C(4, t) / C(8, t): 1/70 (t = 4), 1/2 (t = 1), 3/14 (t = 2); t = 0 is out of support either way
    chance = 1 / 70 + 1 / 2 + 3 / 14
    assert t.loc["all", "expanded_null"] == pytest.approx(chance) and t.loc["all", "shrunk_null"] == pytest.approx(chance)
    assert t.loc["all", "out_of_support_null"] == 1 and t.loc["all", "preserved_null"] == pytest.approx(3 - 2 * chance)
    assert t.loc["1", "expanded_null"] == pytest.approx(1 / 70 + 1 / 2)
    # one expanded problem is what chance gives: P(at least 1) = 1 - (1 - 1/70)(1 - 1/2)(1 - 3/14)
    assert t.loc["all", "expanded_p"] == pytest.approx(1 - (69 / 70) * 0.5 * (11 / 14))
    # an arm that solves 10 problems the base never does, each with 20 of 64: far beyond chance
    big = sh.support_transitions(pp([0] * 10, 64), pp([20] * 10, 64), {}).iloc[0]
    assert big["expanded"] == 10 and big["expanded_null"] < 1e-5 and big["expanded_p"] < 1e-40


def test_distinct_correct_solutions():
    ok = "<think>\n1+2\n=3\n</think>\n<answer>3</answer>"
    samples = pd.DataFrame({
        "problem_id": ["a", "a", "a", "a", "b", "b"],
        "correct": [True, True, True, False, True, False],
        "completion": [ok, ok.replace("1+2", " 1+2  "), "<think>\n1+2=3\n</think><answer>3</answer>", "x", ok, ok]})
    got = sh.distinct_correct(samples, lambda pid, c: sh.canonical_chain(None, None, c))
    assert got.to_dict() == {"a": 2, "b": 1}  # whitespace does not make a new chain; a wrong sample does not count


def test_expected_distinct_chains_among_m_correct_samples():
    from pipeline.analysis.chains import expected_distinct

    # chains a, a, b: two of them hold b with probability 1 - C(1, 2)/C(3, 2) = 2/3, a always: 5/3
    assert expected_distinct([2, 1], 2) == pytest.approx(5 / 3) and expected_distinct([1, 1, 1], 3) == 3
    assert math.isnan(expected_distinct([1], 2))  # fewer correct samples than m: not counted


def test_distinct_chains_do_not_grow_with_the_pass_rate(tmp_path):
    """Two models with the same chain distribution per problem (0.6, 0.3, 0.1), one with 8 correct samples of 64
    per problem, one with 40: the report's distinct-chain figure is the same for both (the expected distinct
    chains among m = 4 correct samples, 1 - 0.4^4 + 1 - 0.7^4 + 1 - 0.9^4 = 2.078), where the count among all
    correct samples is about 2.4 against 3.0."""
    from pipeline.analysis.analyses import EvalRun
    from tasks.base import Problem

    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(100)]
    probs = {i: Problem(id=i, task="toy_arith", question="1+1", answer="2", difficulty=1) for i in ids}
    runs, pps = {}, {}
    for m, c in (("base", 8), ("rl", 40)):
        chains = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=(100, c))
        rows = [dict(problem_id=pid, sample_index=j, correct=j < c,
                     completion=f"<think>\n{chains[i, j] if j < c else 'x'}\n</think>") for i, pid in enumerate(ids) for j in range(64)]
        pps[m] = pp([c] * 100, 64, ids)
        runs[m] = EvalRun(m, None, pps[m], pd.DataFrame(rows), probs)
    res = sh.section(pps, runs, arms=["rl"], controls={}, sharpened=[], k_max=64, ks=[1, 64], train_answers={},
                     reasoning=None, canonical=lambda p, c: sh.canonical_chain(None, p, c), ppl_records=None, n_boot=0,
                     seed=0, out=tmp_path, judge=lambda models, v, p: "words")
    metric = {k: v for k, v, _ in res["metrics"]}
    truth = (1 - 0.4 ** 4) + (1 - 0.7 ** 4) + (1 - 0.9 ** 4)
    assert metric["summary/distinct_correct_base"] == pytest.approx(truth, abs=0.08)
    assert metric["summary/distinct_correct_rl"] == pytest.approx(truth, abs=0.08)
    everything = {m: sh.distinct_correct(runs[m].samples, lambda pid, c: sh.canonical_chain(None, None, c)).mean() for m in runs}
    assert everything["rl"] - everything["base"] > 0.4  # the count over all correct samples differs mechanically


def test_canonical_chain_uses_the_task_own_when_it_has_one():
    class Task:
        def canonical_chain(self, problem, completion):
            return "own"

    assert sh.canonical_chain(Task(), None, "<think>x</think>") == "own"
    assert sh.canonical_chain(None, None, "No Think\n\n  At   all ") == "no think\nat all"


def test_net_gain_against_the_best_of_a_group():
    """The best is the member the arm beats by least; the interval is simultaneous over the members:
    each member's paired t-interval at 97.5% (two members), the smallest lower and upper bounds."""
    from scipy import stats

    arm, c1, c2 = pp([4, 4, 2, 0]), pp([1, 1, 0, 0]), pp([2, 2, 1, 0])
    g = sh.net_gain({"rl": arm, "c1": c1, "c2": c2}, "rl", ["c1", "c2"], 1, n_boot=1000, seed=0)
    assert g["best"] == "c2" and g["best_value"] == pytest.approx(5 / 16)
    assert g["diff"] == pytest.approx(10 / 16 - 5 / 16) and g["member_level"] == pytest.approx(0.975)
    bounds = []
    for c in (c1, c2):  # by hand: per-problem pass@1 differences, t at 1 - 0.025 / 2, 3 degrees of freedom
        d = (arm["correct"] - c["correct"]).to_numpy() / 4
        h = stats.t.ppf(1 - 0.025 / 2, 3) * d.std(ddof=1) / 2
        bounds.append((d.mean() - h, d.mean() + h))
    assert g["ci_low"] == pytest.approx(min(lo for lo, _ in bounds)) and g["ci_high"] == pytest.approx(min(hi for _, hi in bounds))
    # wider on both sides than the best's own 95% interval (what the old rule reported)
    own = sh.net_gain({"rl": arm, "c2": c2}, "rl", ["c2"], 1, n_boot=1000, seed=0)
    assert g["ci_low"] < own["ci_low"] < own["ci_high"] < g["ci_high"]


@pytest.mark.slow  # 3,000 simulated studies per case, about a minute each
@pytest.mark.parametrize("controls", [2, 3])
def test_net_gain_with_the_arm_equal_to_every_control_is_rarely_called_different(controls):
    """The arm and its controls are draws of one model (per-problem rates like the toy base's, 100 problems,
    n = 16, pass@1): "arm lower" (upper bound below 0) and "arm higher" (lower bound above 0) are each called
    at the nominal 2.5% or less, within two Monte Carlo s.e. (3,000 runs: s.e. 0.29%), and together at most
    5%. Measured: 2 controls, lower 2.6%, higher 0.1%. Picking the best and using its own 95% interval
    called "lower" 4.4% (2 controls) to 6.4% (3 controls) of the time."""
    rng = np.random.default_rng(controls)
    ids = [f"p{i}" for i in range(100)]
    lower = higher = 0
    runs = 3000
    for _ in range(runs):
        p = rng.beta(0.3, 0.9, 100)
        models = {m: pp(rng.binomial(16, p), n=16, ids=ids) for m in ["rl"] + [f"c{i}" for i in range(controls)]}
        g = sh.net_gain(models, "rl", [f"c{i}" for i in range(controls)], 1, n_boot=1000, seed=0)
        lower += g["ci_high"] < 0
        higher += g["ci_low"] > 0
    print(f"\n{controls} controls: arm lower {lower / runs:.4f}, arm higher {higher / runs:.4f}")
    se = math.sqrt(0.025 * 0.975 / runs)
    assert lower / runs <= 0.025 + 2 * se and higher / runs <= 0.025 + 2 * se, (lower / runs, higher / runs)
    assert (lower + higher) / runs <= 0.05


def test_log_ratio_to_base_from_the_perplexity_records():
    from pipeline.analysis.logratio import log_ratio_to_base

    def pair(pid, j, base_nll, own_nll, tokens):
        return [dict(scorer="base", source="rl", problem_id=pid, sample_index=j, nll=base_nll, num_tokens=tokens),
                dict(scorer="rl", source="rl", problem_id=pid, sample_index=j, nll=own_nll, num_tokens=tokens)]

    # problem a: two samples, log-ratio sums 3 (3 tokens) and 0 (1 token); problem b: one sample, 2 (1 token)
    rec = pair("a", 0, 5.0, 2.0, 3) + pair("a", 1, 1.0, 1.0, 1) + pair("b", 2, 3.0, 1.0, 1)
    rec.append(dict(scorer="base", source="base", problem_id="a", sample_index=0, nll=9.0, num_tokens=3))
    k = log_ratio_to_base(rec, "rl", n_boot=2000)
    assert (k["pairs"], k["problems"]) == (3, 2) and k["log_ratio_per_token"] == pytest.approx(5 / 5)
    assert k["log_ratio_per_sequence"] == pytest.approx(5 / 3)
    # resampling problems: a alone gives 3/4, b alone 2/1, both 5/5, so the interval is [0.75, 2.0]; resampling
    # pairs (the old interval) drew sample a1 alone (ratio 0) 1 time in 27 and reached down to 0
    assert (k["ci_low"], k["ci_high"]) == (0.75, 2.0)
    with pytest.raises(ValueError, match="no \\(problem, sample\\) pair"):
        log_ratio_to_base(rec, "sft")


@pytest.mark.slow  # two tiny models, 4,000 samples scored by enumeration
def test_the_log_ratio_is_what_its_name_says_on_a_tiny_model_by_enumeration():
    """Two tiny Llamas (arm, base) and every two-token completion of one prompt: the exact expectation of
    log p_arm − log p_base (T = 1) per token under the arm's sampling distribution (T = 0.6, top_p 0.95) is
    what log_ratio_to_base estimates from samples drawn that way (scored by the perplexity stage's `score`),
    and it is not KL(p_arm ‖ p_base), which the report used to call it."""
    import torch

    from pipeline.analysis.logratio import log_ratio_to_base
    from pipeline.sampling.engine import nucleus
    from pipeline.stages.perplexity import score
    from pipeline.toyworld.model import build_model, build_tokenizer
    from tasks.base import encode_prompt

    tok = build_tokenizer(())
    models = {}
    for name, seed in (("rl", 1), ("base", 2)):
        m = build_model(tok, hidden=32, layers=1, seed=seed).eval()
        with torch.no_grad():
            m.model.norm.weight.mul_(8.0)  # peaked next-token distributions, as a trained model's
        models[name] = m
    prompt = "1+2="
    ids = encode_prompt(tok, prompt)
    V = len(tok)

    def logp(m):  # [V] first token, [V, V] second token given the first, at T = 1 (and the raw logits)
        with torch.no_grad():
            first = m(torch.tensor([ids])).logits[0, -1]
            second = m(torch.tensor([ids + [v] for v in range(V)])).logits[:, -1]
        return first, second

    def sampling(logits, T=0.6, top_p=0.95):
        p = torch.softmax(logits / T, -1)
        sp, si = p.sort(-1, descending=True)
        keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, si, nucleus(sp, top_p))
        q = torch.where(keep, p, 0.0)
        return (q / q.sum(-1, keepdim=True)).double()

    (a1, a2), (b1, b2) = logp(models["rl"]), logp(models["base"])
    la1, la2, lb1, lb2 = (torch.log_softmax(x.double(), -1) for x in (a1, a2, b1, b2))
    ratio = (la1 - lb1)[:, None] + (la2 - lb2)  # [y1, y2]: log p_arm(y) − log p_base(y), two tokens
    q = sampling(a1)[:, None] * sampling(a2)  # the arm's sampling distribution of (y1, y2)
    p_arm = la1.exp()[:, None] * la2.exp()
    exact = float((q * ratio).sum() / 2)
    kl = float((p_arm * ratio).sum() / 2)  # KL(p_arm ‖ p_base) per token

    rng = np.random.default_rng(0)
    flat = rng.choice(V * V, size=4000, p=(q / q.sum()).flatten().numpy())
    y1, y2 = flat // V, flat % V
    rec = []
    for i, (u, v) in enumerate(zip(y1, y2)):
        for name, (l1, l2) in (("rl", (la1, la2)), ("base", (lb1, lb2))):
            rec.append(dict(scorer=name, source="rl", problem_id=f"p{i // 4}", sample_index=i,
                            nll=-float(l1[u] + l2[u, v]), num_tokens=2))
    k = log_ratio_to_base(rec, "rl", n_boot=500)
    se = (k["ci_high"] - k["ci_low"]) / 3.92
    assert abs(k["log_ratio_per_token"] - exact) < 4 * se and k["ci_low"] <= exact <= k["ci_high"], (k, exact)
    assert abs(kl - exact) > 10 * se, (kl, exact, se)  # not the KL it was named
    # the records are the perplexity stage's: its teacher-forced scores of plain-character samples agree
    chars = [(int(u), int(v)) for u, v in zip(y1, y2) if tok(tok.decode([u, v]), add_special_tokens=False)["input_ids"] == [u, v]][:16]
    assert len(chars) >= 4
    for name, (l1, l2) in (("rl", (la1, la2)), ("base", (lb1, lb2))):
        got = score(models[name], tok, [prompt] * len(chars), [tok.decode(list(c)) for c in chars])
        assert [g.nll for g in got] == pytest.approx([-float(l1[u] + l2[u, v]) for u, v in chars], abs=1e-4)


def test_control_rewards():
    from pipeline.arms.rl_format import FormatReward
    from pipeline.arms.rl_random import RandomReward
    from tasks import build_tasks
    from tasks.base import Problem
    from pipeline.config.schema import TaskSpec

    tasks = build_tasks([TaskSpec(name="toy_arith")])
    p = Problem(id="x", task="toy_arith", question="1+2", answer="3")
    fmt = FormatReward(tasks)
    assert fmt.scores([p, p, p], ["<answer>3</answer>", "<answer>4</answer>", "3"]) == [1.0, 1.0, 0.0]

    class State:
        global_step = 7

    rnd = RandomReward(tasks, [p], rate=0.3, seed=0)
    texts = [f"<answer>{i}</answer>" for i in range(4000)]
    a, b = rnd.scores([p] * 4000, texts, State()), rnd.scores([p] * 4000, texts, State())
    assert a == b and abs(np.mean(a) - 0.3) < 0.03  # the same coins on a rerun, at the base's rate
    State.global_step = 8
    assert rnd.scores([p] * 4000, texts, State()) != a  # new coins at the next step
    assert math.isclose(np.mean([r == 1.0 for r in a]), np.mean(a))


def _runs(counts: dict, answers: list[str]):
    from pipeline.analysis.analyses import EvalRun
    from tasks.base import Problem

    probs = {f"p{i}": Problem(id=f"p{i}", task="toy_arith", question="1+1", answer=a, difficulty=1 + i % 2)
             for i, a in enumerate(answers)}
    out = {}
    for m, c in counts.items():
        rows = [dict(problem_id=f"p{i}", sample_index=j, completion=f"<think>\n{m}{j % 2}\n</think><answer>x</answer>",
                     correct=j < ci) for i, ci in enumerate(c) for j in range(4)]
        out[m] = EvalRun(m, None, pp(c), pd.DataFrame(rows), probs)
    return out


def test_section_warns_of_a_high_guessing_floor_and_nets_controls(tmp_path):
    counts = {"base": [1, 1, 0, 2], "rl": [4, 3, 0, 0], "rl_random": [1, 0, 0, 1]}
    runs = _runs(counts, ["2", "2", "3", "5"])
    common = dict(arms=["rl", "rl_random"], controls={"rl": ["rl_random"]}, sharpened=[], k_max=4, ks=[1, 2, 4],
                  reasoning=None, canonical=lambda p, c: sh.canonical_chain(None, p, c), ppl_records=None, n_boot=200,
                  seed=0, out=tmp_path, judge=lambda models, v, p: "words")
    pps = {m: pp(c) for m, c in counts.items()}
    # guessing from training answers that are mostly "2": pass@4 of the guesser 0.5 + ... >= half the base's 0.75
    res = sh.section(pps, runs, train_answers={"toy_arith": ["2"] * 9 + ["3"]}, **common)
    floor = res["floor"]["toy_arith"]
    # rl_random's pass@1 is below the base's: no lead, so no crossover is logged as found (it was "k = 1")
    metric = {k: v for k, v, _ in res["metrics"]}
    assert metric["summary/crossover_found_rl"] == 1 and "summary/crossover_found_rl_random" not in metric
    assert "summary/crossover_k_rl_random" not in metric and res["data"]["crossover"]["rl_random"]["k"] is None
    assert floor[1] == pytest.approx((0.9 + 0.9 + 0.1 + 0) / 4) and res["warning"] and "guessing floor is high" in res["warning"][0]
    assert [(g["arm"], g["kind"], g["k"], g["best"]) for g in res["data"]["net_gains"]] == [
        ("rl", "controls", 1, "rl_random"), ("rl", "controls", 4, "rl_random")]
    # m = 4 correct samples: only rl's first problem has them, chains rl0, rl1, rl0, rl1: 2 distinct
    assert res["data"]["distinct_correct"]["m"] == 4
    d = res["data"]["distinct_correct"]["rl"]
    assert (d["problems"], d["mean"], d["shared_with_base"]) == (1, 2.0, 0) and math.isnan(d["mean_shared"])
    # one task: the plot's floor line is that task's floor
    assert res["pooled_floor"] == pytest.approx(floor)
    # answers no training answer matches: a floor of zero, no warning
    res = sh.section(pps, runs, train_answers={"toy_arith": ["7"] * 10}, **common)
    assert res["floor"]["toy_arith"][4] == 0 and not res["warning"]


def test_the_plot_floor_pools_the_tasks_like_the_curves(tmp_path):
    """Two tasks on one pass@k plot: the curves pool every problem, so the floor line is the guesser's pass@k
    over all problems (each task's floor weighted by its test problems), not one line per task over them."""
    from pipeline.analysis.analyses import EvalRun
    from tasks.base import Problem

    probs = {f"p{i}": Problem(id=f"p{i}", task="a" if i < 3 else "b", question="1+1", answer="2", difficulty=1) for i in range(4)}
    rows = [dict(problem_id=f"p{i}", sample_index=j, completion="x", correct=False) for i in range(4) for j in range(4)]
    pps = {m: pp([1, 0, 0, 2]) for m in ("base", "rl")}
    runs = {m: EvalRun(m, None, pps[m], pd.DataFrame(rows), probs) for m in pps}
    res = sh.section(pps, runs, arms=["rl"], controls={}, sharpened=[], k_max=4, ks=[1, 4], reasoning=None,
                     train_answers={"a": ["2", "3"], "b": ["2", "3", "3", "3"]}, canonical=lambda p, c: None,
                     ppl_records=None, n_boot=0, seed=0, out=tmp_path, judge=lambda models, v, p: "words")
    assert res["floor"]["a"][1] == 0.5 and res["floor"]["b"][1] == 0.25
    assert res["pooled_floor"][1] == pytest.approx((3 * 0.5 + 1 * 0.25) / 4)


def test_support_claims_of_an_arm_that_did_not_learn_are_inconclusive(tmp_path):
    """Every verdict about an arm whose training did not learn is inconclusive; its support claims were still
    stated ("more than chance") and counted in the family. Here rl solves 12 problems the base never does
    (p about 1e-7 with 64 samples each): stated when rl learned, inconclusive and outside the family when not."""
    from pipeline.analysis.family import Family

    counts = {"base": [0] * 12 + [30] * 8, "rl": [20] * 12 + [30] * 8}
    ids = [f"p{i}" for i in range(20)]
    runs = _runs(counts, ["2"] * 20)
    pps = {m: pp(c, n=64, ids=ids) for m, c in counts.items()}
    common = dict(arms=["rl"], controls={}, sharpened=[], k_max=64, ks=[1, 64], train_answers={}, reasoning=None,
                  canonical=lambda p, c: sh.canonical_chain(None, p, c), ppl_records=None, n_boot=200, seed=0,
                  out=tmp_path, judge=lambda models, v, p: "words")
    for not_learned, stated in ((None, True), ({"rl": "the rl run did not learn"}, False)):
        fam = Family()
        res = sh.section(pps, runs, family=fam, not_learned=not_learned, **common)
        fam.decide()
        exp = next(c for c in res["data"]["support_claims"] if c["class"] == "expanded")
        assert exp["count"] == 12 and exp["stated"] is stated, exp
        if not stated:
            assert exp["verdict"] == "inconclusive: the rl run did not learn" and exp["family_size"] == 0
