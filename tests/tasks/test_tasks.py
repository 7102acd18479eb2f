"""The verifiable task families: reasoning-gym tasks by name, math (GSM8K / MATH-500 layout, checked
with math-verify) and knights_knaves with the Logic-RL reward. Real generated problems, real
scorers, real math-verify; no stand-ins."""
import inspect
import json
import re
import threading
import time
from pathlib import Path

import pytest

from tasks import get_task, task_names
from tasks import verify as registry_verify
from tasks.base import Problem, split_of
from tasks.bounded import CheckTimeout, run_bounded
from tasks.gym import EVAL_SCORERS, SYMPY_SCORERS, gym_names, is_plain_arithmetic
from tasks.math import check_answer

FIX = Path(__file__).resolve().parents[1] / "fixtures"
GSM = dict(train_file=str(FIX / "gsm8k_train.jsonl"), test_file=str(FIX / "gsm8k_test.jsonl"))
MATH500 = dict(train_file=str(FIX / "math500_train.jsonl"), test_file=str(FIX / "math500_test.jsonl"))


def roundtrip(p: Problem) -> Problem:
    """What the DAG does: JSONL out, JSONL in (possibly in another process)."""
    return Problem.from_dict(json.loads(json.dumps(p.to_dict())))


def tagged(answer: str) -> str:
    return f"<think>working it out</think>\n<answer>{answer}</answer>"


def in_thread(fn, *args, **kwargs):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)))
    t.start()
    t.join()
    assert out, "the call raised in the thread"
    return out[0]


def flip_roles(answer: str, metadata: dict) -> str:
    t = metadata["knight_knave_terms"]
    return re.sub(rf"\b({t['knight']}|{t['knave']})\b",
                  lambda m: t["knave"] if m.group(1) == t["knight"] else t["knight"], answer)


# ---- reasoning-gym families ------------------------------------------------------------------
GYM_CASES = {"chain_sum": [0, 2], "countdown": [0], "gsm_symbolic": None, "knights_knaves": [2, 3]}


@pytest.fixture(scope="module")
def gym_problems():
    return {name: [roundtrip(p) for p in get_task(name).problems("train", 3, seed=11, levels=levels)]
            for name, levels in GYM_CASES.items()}


def wrong_answer(p: Problem) -> str:
    if p.task == "knights_knaves":
        return flip_roles(p.answer, p.meta["entry"]["metadata"])
    if p.task == "countdown":  # every number used once, but added (or subtracted) up: not the target
        meta = p.meta["entry"]["metadata"]
        op = " + " if sum(meta["numbers"]) != meta["target"] else " - "
        return op.join(str(n) for n in meta["numbers"])
    return str(int(float(p.answer)) + 1)


@pytest.mark.parametrize("name", list(GYM_CASES))
def test_gym_verify_accepts_the_answer_and_rejects_wrong_ones(name, gym_problems):
    for p in gym_problems[name]:
        assert registry_verify(p, tagged(p.answer)), (name, p.answer)
        assert not registry_verify(p, tagged(wrong_answer(p))), (name, wrong_answer(p))
        assert not registry_verify(p, p.answer)  # no <answer> block: nothing extracted
        assert not registry_verify(p, "<answer></answer>")
        # from a worker thread (as a thread pool or reward worker would call it): same verdicts
        assert in_thread(registry_verify, p, tagged(p.answer)) is True
        assert in_thread(registry_verify, p, tagged(wrong_answer(p))) is False


def test_partial_credit_is_not_correct(gym_problems):
    import reasoning_gym

    for p in gym_problems["countdown"]:  # countdown scores wrong answers 0.01/0.05, not 0
        scorer = reasoning_gym.create_dataset("countdown", size=1, seed=0, **p.meta["config"])
        assert 0 < scorer.score_answer(wrong_answer(p), p.meta["entry"]) < 1.0
        assert 0 < scorer.score_answer("", p.meta["entry"]) < 1.0
        assert not registry_verify(p, tagged(wrong_answer(p)))
    p = gym_problems["chain_sum"][0]  # chain_sum gives partial credit to answers containing the right one
    assert not registry_verify(p, tagged(f"{p.answer}0"))


def test_gym_difficulty_levels_follow_the_curriculum_and_stay_in_meta(gym_problems):
    by_level = {}
    for p in gym_problems["chain_sum"]:
        by_level.setdefault(p.difficulty, []).append(p.meta["entry"]["metadata"])
    assert set(by_level) == {0, 2}
    assert all(m["num_terms"] == 2 and m["num_digits"] == 1 for m in by_level[0])  # level 0: 2 terms, 1 digit
    assert all(m["num_terms"] == 4 and m["num_digits"] == 3 for m in by_level[2])  # level 2: 4 terms, 3 digits
    assert gym_problems["chain_sum"][0].meta["difficulty"] == {"num_terms": [2, 2], "num_digits": [1, 1]}
    assert {p.difficulty for p in gym_problems["knights_knaves"]} == {2, 3}
    for p in gym_problems["knights_knaves"]:  # knights_knaves: level = number of people
        assert len(p.meta["entry"]["metadata"]["names"]) == p.difficulty
        assert p.meta["difficulty"]["n_people"] == p.difficulty


def test_gym_level_errors_and_level_options():
    with pytest.raises(ValueError, match=r"level 99: expected 0\.\.\d+"):
        get_task("chain_sum").problems("train", 1, levels=[99])
    with pytest.raises(ValueError, match="no curriculum.*level_options"):
        get_task("gsm_symbolic").problems("train", 1, levels=[1])
    ps = get_task("chain_sum", level_options={5: {"min_terms": 3, "max_terms": 3}}).problems("train", 2, levels=[5])
    assert all(p.difficulty == 5 and p.meta["entry"]["metadata"]["num_terms"] == 3 for p in ps)
    with pytest.raises(ValueError, match="chain_sum: option config.*bogus"):
        get_task("chain_sum", config={"bogus": 1})
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        get_task("countdown", colour="red")


@pytest.mark.parametrize("name,levels", [("chain_sum", [0, 1]), ("knights_knaves", [2])])
def test_gym_problems_are_deterministic_and_splits_disjoint(name, levels):
    a = get_task(name).problems("train", 6, seed=3, levels=levels)
    b = get_task(name).problems("train", 6, seed=3, levels=levels)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    c = get_task(name).problems("train", 6, seed=4, levels=levels)
    assert [p.question for p in a] != [p.question for p in c]
    train = get_task(name).problems("train", 30, seed=0, levels=levels)
    test = get_task(name).problems("test", 8, seed=0, levels=levels)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question) == "test" for p in test) and all(split_of(p.question) == "train" for p in train)
    assert len({p.id for p in train + test}) == 38


def test_entries_survive_a_json_round_trip_with_their_python_types(gym_problems):
    p = roundtrip(get_task("arc_agi").problems("train", 1, seed=0)[0])  # its scorer compares tuples of tuples
    assert isinstance(p.meta["entry"]["metadata"]["output"], list)  # JSON has no tuples
    assert registry_verify(p, tagged(p.answer))
    assert not registry_verify(p, tagged(("9" if p.answer[0] != "9" else "8") + p.answer[1:]))
    q = gym_problems["chain_sum"][0]  # without the seed to regenerate from, the stored entry is used
    legacy = Problem(q.id, q.task, q.question, q.answer, q.difficulty, {"entry": q.meta["entry"]})
    assert registry_verify(legacy, tagged(q.answer)) and not registry_verify(legacy, tagged(wrong_answer(q)))


def test_model_output_is_never_run_as_code(tmp_path, gym_problems):
    mark = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(mark)!r}).touch()"
    p = gym_problems["countdown"][0]  # countdown's scorer hands the answer to sympy.parse_expr (an eval)
    assert not registry_verify(p, tagged(payload))
    assert not registry_verify(p, tagged(f"{p.answer} + 0*({payload})"))
    assert not registry_verify(p, tagged(f"{payload}!"))  # parse_expr would rewrite x! into factorial(x)
    si = roundtrip(get_task("string_insertion").problems("train", 1, seed=0)[0])  # its scorer calls eval()
    assert registry_verify(si, tagged(si.answer))
    assert not registry_verify(si, tagged(payload))
    assert not mark.exists()


def test_arithmetic_whitelist():
    for ok in ["99 - 8 + 60", "(3 + 4) * 5 / 2", "x**2 + sin(x)/3 + C", "-x**(3/2)", "2.5*exp(-x)"]:
        assert is_plain_arithmetic(ok), ok
    for bad in ["9**9**9", "(2**50)**50", "x**1000", "'1'", "().__class__", "_x + 1", "open('f')", "x.real",
                "[1, 2]", "lambda: 1", "sin(x, evaluate=False)", "x!", "2^3", "12345678901 + 1", "1j"]:
        assert not is_plain_arithmetic(bad), bad


def test_the_list_of_evaluating_scorers_is_complete():
    from reasoning_gym.factory import DATASETS

    evaluating = {name for name, (cls, _) in DATASETS.items()
                  if re.search(r"\beval\(|parse_expr|sympify|parse_latex", inspect.getsource(cls.score_answer))}
    assert evaluating and evaluating <= SYMPY_SCORERS | EVAL_SCORERS


def test_registry_knows_the_families():
    names = task_names()
    assert {"math", "knights_knaves", "chain_sum", "countdown", "gsm_symbolic"} <= set(names)
    assert set(gym_names()) <= set(names)
    assert type(get_task("knights_knaves")).__name__ == "KnightsKnavesTask"


@pytest.fixture
def extra_family(tmp_path, monkeypatch):
    """A second folder of task modules in the package's path, as a new file in tasks/ would be;
    the registry and the modules it imports are put back afterwards."""
    import sys

    import tasks

    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    monkeypatch.setattr(tasks, "REGISTRY", dict(tasks.REGISTRY))

    names = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        tasks._family_modules.cache_clear()  # the folder is read once per process

    yield write
    for name in names:
        sys.modules.pop(f"tasks.{name}", None)
        tasks.__dict__.pop(name, None)
    tasks._family_modules.cache_clear()


def test_a_new_module_in_the_folder_is_a_family(extra_family):
    import tasks

    extra_family("echo_fixture", "from tasks import register\nfrom tasks.toy_arith import ToyArith\n\n"
                                 "@register('echo_fixture')\ndef make(**options):\n    return ToyArith(**options)\n")
    assert tasks.is_task("echo_fixture") and type(get_task("echo_fixture")).__name__ == "ToyArith"
    assert "echo_fixture" in task_names()


def test_a_task_name_registered_twice_is_refused_with_one_line(extra_family):
    import tasks

    assert tasks.is_task("math")
    with pytest.raises(ValueError) as e:
        tasks.register("math")(lambda **options: None)
    assert "'math' is registered twice: by tasks.math." in str(e.value) and "\n" not in str(e.value)
    extra_family("dupe_fixture", "from tasks import register\n\n@register('toy_arith')\ndef make(**options):\n"
                                 "    return None\n")
    with pytest.raises(ValueError, match=r"^tasks: task name 'toy_arith' is registered twice: by tasks\.toy_arith\.\S+ "
                                         r"and tasks\.dupe_fixture\.make \(give one of them another name\)$"):
        tasks.is_task("toy_arith")


def test_a_registered_name_is_found_without_importing_reasoning_gym():
    import subprocess
    import sys

    code = ("import sys, tasks; assert tasks.is_task('toy_arith') and tasks.is_task('math'); "
            "print('reasoning_gym' in sys.modules, 'tasks.knights_knaves' in sys.modules); "
            "assert tasks.is_task('knights_knaves'); print('tasks.knights_knaves' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


# ---- bounded checks -------------------------------------------------------------------------
def endless() -> None:
    while True:  # swallows every timeout signal: only killing the worker stops it
        try:
            time.sleep(1)
        except BaseException:
            pass


def test_bounded_check_from_a_thread_kills_a_stuck_worker_and_recovers():
    assert isinstance(in_thread(lambda: _catch(run_bounded, endless, timeout=0.5)), CheckTimeout)
    assert in_thread(run_bounded, check_answer, "\\frac{7}{12}", "7/12", timeout=5) is True
    with pytest.raises(CheckTimeout):
        run_bounded(time.sleep, 30, timeout=0.2)  # main thread: the in-process timer


def _catch(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except CheckTimeout as e:
        return e


def test_math_verify_from_a_thread_is_right_and_bounded():
    assert in_thread(run_bounded, check_answer, "5\\sqrt{2}", "\\sqrt{50}", timeout=5) is True
    assert in_thread(run_bounded, check_answer, "5\\sqrt{2}", "5\\sqrt{3}", timeout=5) is False
    bomb = "9^{9^{9^{9}}}"  # math-verify would compute this for ever without a bound
    assert isinstance(in_thread(lambda: _catch(run_bounded, check_answer, "42", bomb, timeout=1)), CheckTimeout)
    task = get_task("math", timeout=1)
    p = Problem("m", "math", "q", "42")
    assert in_thread(task.verify, p, tagged(bomb)) is False
    assert in_thread(task.verify, p, tagged("42")) is True


# ---- math ------------------------------------------------------------------------------------
def test_gsm8k_fixture_verify():
    task = get_task("math", **GSM)
    probs = {p.answer: roundtrip(p) for p in task.problems("test", 4)}
    assert set(probs) == {"37", "210", "360", "32"}
    p = probs["37"]
    assert p.task == "math" and p.meta["layout"] == "gsm8k" and p.difficulty is None
    for good in [tagged("37"), tagged("$37$"), tagged("37 apples"), "so the answer is \\boxed{37}."]:
        assert registry_verify(p, good), good
    for bad in [tagged("38"), tagged("3.7"), "\\boxed{38}", "no number here", tagged(""), "He has 37 left."]:
        assert not registry_verify(p, bad), bad  # strict by default: a bare number in prose is no answer
    big = [roundtrip(q) for q in task.problems("train", 5) if q.answer == "1200"][0]  # gold "#### 1,200"
    assert registry_verify(big, tagged("1,200")) and not registry_verify(big, "The total is 1,200 pencils")
    lenient = get_task("math", extraction="lenient", **GSM)
    assert lenient.verify(p, "He has 37 left.") and lenient.verify(big, "The total is 1,200 pencils")
    assert task.verify_lenient(p, "He has 37 left.") and not task.verify(p, "He has 37 left.")


def test_math500_fixture_verify_and_levels():
    task = get_task("math", **MATH500)
    probs = {p.answer: roundtrip(p) for p in task.problems("test", 6)}
    cases = {"5\\sqrt{2}": (["\\sqrt{50}", "5\\sqrt 2"], ["5\\sqrt{3}", "7"]),
             "(-\\infty, 3]": (["(-\\infty, 3]"], ["(-\\infty, 3)", "3"]),
             "(2, 3)": (["(2, 3)"], ["(3, 2)", "3"]),
             "\\frac{7}{12}": (["7/12", "\\dfrac{7}{12}"], ["\\frac{7}{13}"])}
    for gold, (goods, bads) in cases.items():
        for good in goods:
            assert registry_verify(probs[gold], tagged(good)), (gold, good)
        for bad in bads:
            assert not registry_verify(probs[gold], tagged(bad)), (gold, bad)
    assert {p.difficulty for p in task.problems("test", 3, levels=[1])} == {1}
    assert sorted(p.difficulty for p in task.problems("test", 4, levels=[1, 3])) == [1, 1, 3, 3]
    train = {p.answer: p for p in task.pool("train")}
    assert train["720"].difficulty == 2  # "Level 2", gold taken from the solution's last \boxed{}


def test_math_extraction_order():
    task = get_task("math")
    assert task.extract("\\boxed{1} then <answer>2</answer> and 3") == "2"
    assert task.extract("first \\boxed{1}, finally \\boxed{\\frac{a}{b}} and 3") == "\\frac{a}{b}"
    assert task.extract("it is 1,234 or maybe -5.5") is None  # strict: only <answer> or \\boxed{}
    assert get_task("math", extraction="lenient").extract("it is 1,234 or maybe -5.5") == "-5.5"
    assert task.extract("it is 1,234 or maybe -5.5", lenient=True) == "-5.5"
    assert task.extract("no answer") is None
    with pytest.raises(ValueError, match="option extraction: expected 'strict' or 'lenient'"):
        get_task("math", extraction="loose")


def test_math_problems_deterministic_and_splits_disjoint():
    for opts in (GSM, MATH500):
        task = get_task("math", **opts)
        assert [p.id for p in task.problems("test", 3, seed=1)] == [p.id for p in get_task("math", **opts).problems("test", 3, seed=1)]
        assert len({tuple(p.id for p in task.problems("test", 3, seed=s)) for s in range(5)}) > 1
        train, test = task.pool("train"), task.pool("test")
        assert not {p.question for p in train} & {p.question for p in test}
    # the fixtures repeat one test question in train: it is dropped from train
    assert len(get_task("math", **GSM).pool("train")) == 5 and len(get_task("math", **MATH500).pool("train")) == 3


def test_math_bad_input_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="option test_file: no such file"):
        get_task("math", test_file=str(tmp_path / "missing.jsonl")).problems("test", 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "42"}\n')
    with pytest.raises(ValueError, match=r"test_file .*bad.jsonl line 1: expected GSM8K layout"):
        get_task("math", test_file=str(bad)).problems("test", 1)
    with pytest.raises(ValueError, match="split 'train' needs option train_file"):
        get_task("math", test_file=GSM["test_file"]).problems("train", 1)
    with pytest.raises(ValueError, match="test split has only 4 problems"):
        get_task("math", **GSM).problems("test", 9)
    with pytest.raises(ValueError, match="unknown option 'file'"):
        get_task("math", file="x.jsonl")
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine with HF_HUB_OFFLINE=1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="option dataset='openai/gsm8k': could not load") as e:
        get_task("math", dataset="openai/gsm8k", dataset_config="main").problems("test", 1)
    assert "\n" not in str(e.value)


# ---- knights_knaves and the Logic-RL reward ----------------------------------------------------
def test_logic_rl_reward_values(gym_problems):
    p = gym_problems["knights_knaves"][0]
    task = get_task("knights_knaves", reward="logic_rl")
    right, wrong = p.answer, flip_roles(p.answer, p.meta["entry"]["metadata"])
    first = p.meta["entry"]["metadata"]["names"][0]
    cases = {
        tagged(right): 1 + 2,
        tagged(wrong): 1 - 1.5,
        tagged("I cannot tell."): 1 - 2,
        tagged(right.split(",")[0]): 1 - 2,  # one person named only: unparsable
        tagged(f"{right} {first} is not sure."): 3,  # extra words are fine
        f"<answer>{right}</answer>": -1 - 2,  # no think block
        tagged(right) + f"<answer>{right}</answer>": -1 - 2,  # two answer blocks
        f"<answer>{right}</answer><think>x</think>": -1 - 2,  # wrong order
        f"<think>a</think><think>b</think><answer>{right}</answer>": -1 - 2,
    }
    for completion, expected in cases.items():
        assert task.reward(p, completion) == expected, completion
        assert task.logic_rl_reward(p, completion) == expected
        parts = task.logic_rl_parts(p, completion)  # Logic-RL's format score and answer score
        assert parts["format_reward"] == (1 if expected > -3 else -1) and sum(parts.values()) == expected
    assert task.verify(p, f"<answer>{right}</answer>") is True  # verify stays the correctness check
    plain = get_task("knights_knaves")
    assert plain.reward(p, tagged(right)) == 1.0 and plain.reward(p, tagged(wrong)) == 0.0
    with pytest.raises(ValueError, match="option reward: expected one of"):
        get_task("knights_knaves", reward="shaped")


def test_logic_rl_template_prefills_think_and_scores_it(gym_problems, toyworld):
    """Logic-RL's prompt: its system message, the puzzle as the user turn, the assistant turn opened
    with "<think>"; the format score reads the prefilled tag as part of the response."""
    from transformers import AutoTokenizer

    from tasks.knights_knaves import LOGIC_RL_SYSTEM

    p = gym_problems["knights_knaves"][0]
    task = get_task("knights_knaves", reward="logic_rl", template="logic_rl")
    tok = AutoTokenizer.from_pretrained(str(toyworld / "base"))
    prompt = task.prompt(p, tok)
    assert prompt.endswith("<|assistant|><think>") and prompt.startswith("<|system|>" + LOGIC_RL_SYSTEM)
    assert p.question in prompt and "Think step by step" not in prompt
    assert task.prompt(p).endswith(f"{p.question}\n<think>")  # no chat template: plain text, still prefilled
    completion = f"the reasoning</think><answer>{p.answer}</answer>"
    assert task.logic_rl_parts(p, completion) == {"format_reward": 1.0, "answer_reward": 2.0}
    assert task.logic_rl_parts(p, "<think>" + completion)["format_reward"] == -1.0  # two <think>: malformed
    plain = get_task("knights_knaves", reward="logic_rl")  # the plain prompt prefills nothing
    assert plain.logic_rl_parts(p, completion)["format_reward"] == -1.0
    assert plain.prompt(p, tok).endswith("<|assistant|>") and task.verify(p, completion)
    with pytest.raises(ValueError, match="option template: expected one of"):
        get_task("knights_knaves", template="qwen")


def test_gym_lenient_extraction_takes_the_last_number():
    from tasks import get_task

    strict, lenient = get_task("chain_sum"), get_task("chain_sum", extraction="lenient")
    p = strict.problems("test", 1, seed=0, levels=[0])[0]
    plain = f"Adding them up, the final answer is {p.answer}."
    assert not strict.verify(p, plain) and strict.verify_lenient(p, plain)  # the evaluator records both graders
    assert lenient.verify(p, plain) and not lenient.verify(p, f"It is {int(p.answer) + 1}.")
    assert lenient.verify(p, f"<answer>{p.answer}</answer> and 12345")  # tags still win
    with pytest.raises(ValueError, match="option extraction: expected 'strict' or 'lenient', got 'loose'"):
        get_task("chain_sum", extraction="loose")
