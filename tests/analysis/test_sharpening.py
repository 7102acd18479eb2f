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
    c = sh.crossover(pp([2, 2]), pp([1, 1]), n_boot=0)
    assert c["k"] == 1 and not c["arm_leads_at_1"] and "no lead" in sh.crossover_words(c)


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


def test_support_transitions_per_level():
    base, arm = pp([1, 0, 2, 0]), pp([3, 1, 0, 0])
    levels = {"p0": "1", "p1": "1", "p2": "2", "p3": "2"}
    t = sh.support_transitions(base, arm, levels).set_index("level")
    assert t.loc["all", list(sh.SUPPORT)].tolist() == [1, 1, 1, 1] and t.loc["all", "problems"] == 4
    assert t.loc["1", list(sh.SUPPORT)].tolist() == [1, 1, 0, 0]
    assert t.loc["2", list(sh.SUPPORT)].tolist() == [0, 0, 1, 1]
    assert t.loc["all", "expanded_low"] <= 1 <= t.loc["all", "expanded_high"]
    # exact intervals: 0 of 2 shrunk on level 1 is [0, 0.842 x 2], never a zero-width [0, 0]
    assert t.loc["1", "shrunk_low"] == 0 and t.loc["1", "shrunk_high"] == pytest.approx(2 * 0.8419, abs=1e-3)


def test_distinct_correct_solutions():
    ok = "<think>\n1+2\n=3\n</think>\n<answer>3</answer>"
    samples = pd.DataFrame({
        "problem_id": ["a", "a", "a", "a", "b", "b"],
        "correct": [True, True, True, False, True, False],
        "completion": [ok, ok.replace("1+2", " 1+2  "), "<think>\n1+2=3\n</think><answer>3</answer>", "x", ok, ok]})
    got = sh.distinct_correct(samples, lambda pid, c: sh.canonical_chain(None, None, c))
    assert got.to_dict() == {"a": 2, "b": 1}  # whitespace does not make a new chain; a wrong sample does not count


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


def test_kl_to_base_from_the_perplexity_records():
    rec = [dict(scorer="base", source="rl", problem_id="a", sample_index=0, nll=5.0, num_tokens=3),
           dict(scorer="rl", source="rl", problem_id="a", sample_index=0, nll=2.0, num_tokens=3),
           dict(scorer="base", source="rl", problem_id="b", sample_index=1, nll=3.0, num_tokens=1),
           dict(scorer="rl", source="rl", problem_id="b", sample_index=1, nll=1.0, num_tokens=1),
           dict(scorer="base", source="base", problem_id="a", sample_index=0, nll=9.0, num_tokens=3)]
    k = sh.kl_to_base(rec, "rl", n_boot=200)
    assert k["pairs"] == 2 and k["kl_per_token"] == pytest.approx((3 + 2) / 4) and k["kl_per_sequence"] == pytest.approx(2.5)
    assert k["ci_low"] <= k["kl_per_token"] <= k["ci_high"]
    with pytest.raises(ValueError, match="no \\(problem, sample\\) pair"):
        sh.kl_to_base(rec, "sft")


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
                  seed=0, out=tmp_path, judge=lambda models, lo, hi, d: "words")
    pps = {m: pp(c) for m, c in counts.items()}
    # guessing from training answers that are mostly "2": pass@4 of the guesser 0.5 + ... >= half the base's 0.75
    res = sh.section(pps, runs, train_answers={"toy_arith": ["2"] * 9 + ["3"]}, **common)
    floor = res["floor"]["toy_arith"]
    assert floor[1] == pytest.approx((0.9 + 0.9 + 0.1 + 0) / 4) and res["warning"] and "guessing floor is high" in res["warning"][0]
    assert [(g["arm"], g["kind"], g["k"], g["best"]) for g in res["data"]["net_gains"]] == [
        ("rl", "controls", 1, "rl_random"), ("rl", "controls", 4, "rl_random")]
    assert res["data"]["distinct_correct"]["rl"] == {"solved": 2, "mean_solved": 2.0, "mean_all": 1.0}
    # answers no training answer matches: a floor of zero, no warning
    res = sh.section(pps, runs, train_answers={"toy_arith": ["7"] * 10}, **common)
    assert res["floor"]["toy_arith"][4] == 0 and not res["warning"]
