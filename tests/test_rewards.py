"""Answer extraction, number parsing, accuracy/format rewards, and the weighted combination."""

from fractions import Fraction

import pytest

from groupo.config import ConfigError, RewardsConfig
from groupo.rewards import REWARDS, RewardError, accuracy_reward, format_reward, resolve_rewards, score
from groupo.rewards.extract import extract_answer, parse_number
from groupo.rewards.format import answer_format_reward, soft_format_reward, tag_count_reward
from groupo.rewards.math import answer_key, is_equivalent

# --- parse_number: (text, expected Fraction or None) ------------------------------------------
PARSE_CASES = [
    ("18", 18), ("-5", -5), ("−5", -5), ("1,000", 1000), ("1,234,567", 1234567), ("1{,}000", 1000),
    ("$1,000.50", Fraction(2001, 2)), ("\\$18", 18), ("€12", 12), ("50%", 50), ("50\\%", 50),
    ("18 dollars", 18), ("5 km/h", 5), ("12 cm^2", 12), ("18元", 18), ("18 \\text{ dollars}", 18),
    ("１２３", 123), ("－７", -7), ("３．５", Fraction(7, 2)),           # full-width digits, minus, point
    ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)), ("\\dfrac34", Fraction(3, 4)),
    ("-\\frac{3}{4}", Fraction(-3, 4)), ("\\frac{-3}{4}", Fraction(-3, 4)), ("0.5", Fraction(1, 2)),
    (".5", Fraction(1, 2)), ("12.50", Fraction(25, 2)), ("18.", 18), ("90^\\circ", 90), ("(5)", 5),
    ("x = 5", 5), ("2 + 3 = 5", 5), ("1e3", 1000),
    # must NOT read as a number
    ("5x", None), ("\\sqrt{2}", None), ("1,00", None), ("12,5", None), ("3, 4", None), ("abc", None),
    ("", None), ("5 apples and 3", None), ("2^10", None), ("\\pi", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_number(text, expected):
    assert parse_number(text) == (None if expected is None else Fraction(expected))


# --- extract_answer with the default order (tag, boxed, ####, "answer is", last number) --------
EXTRACT_CASES = [
    ("so 7+9 = 16 <answer> 16 </answer>", "16"),
    ("<answer>3</answer> then <answer>4</answer>", "4"),                       # the last tag wins
    ("<answer>5", "5"),                                                        # unclosed tag: last number
    ("We get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # nested braces
    ("\\boxed{12", "12"),                                                      # cut-off box: last number
    ("16 - 3 - 4 = 9\n#### 1,000", "1,000"),
    ("The answer is 18 dollars. Then 20.", "18 dollars"),
    ("答案是１８。", "18"),
    ("所以她赚了１８美元。答案是：１８", "18"),                                  # full-width colon
    ("答案为 ２，５００ 元", "2,500 元"),                                      # full-width comma (2500)
    ("Final answer: $1,234.", "$1,234"),
    ("I think 16-3 = 13", "13"),                                               # binary minus, not -3
    ("temperature drops to -5", "-5"),
    ("no digits here", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_order_is_configurable():
    text = "The answer is 3. <answer>4</answer> and finally 5"
    assert extract_answer(text, ["last_number"]) == "5"
    assert extract_answer(text, ["answer_is", "answer_tag"]) == "3"
    assert extract_answer("no tag, 7", ["answer_tag"]) is None
    with pytest.raises(ValueError, match="valid: answer_tag"):
        extract_answer("x", ["tags"])


# --- equivalence (numbers in-process; LaTeX via math-verify) ----------------------------------
EQUIV_CASES = [
    ("18", "18", True), ("18.0", "18", True), ("1,000", "1000", True), ("$18", "18", True),
    ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("2/6", "1/3", True), ("-3", "-3", True),
    ("１８", "18", True), ("18 apples", "18", True), ("50%", "50", True),
    ("17", "18", False), ("-18", "18", False), ("0.33", "1/3", False), ("7 + 9", "16", False),
    ("eighteen", "18", False), ("181", "18", False), ("1.8", "18", False),
    ("\\sqrt{4}", "2", True), ("\\frac{14}{3}", "\\frac{14}{3}", True), ("14/3", "\\frac{14}{3}", True),
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True), ("x^2+2x+1", "(x+1)^2", True),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}", False), ("A", "a", True), ("B", "A", False),
]


@pytest.mark.parametrize(("pred", "ref", "expected"), EQUIV_CASES)
def test_is_equivalent(pred, ref, expected):
    assert is_equivalent(pred, ref) is expected


def test_answer_key_groups_equal_numbers():
    assert answer_key("1,000") == answer_key("1000.0") == "1000"
    assert answer_key("\\frac{1}{2}") == answer_key("0.5") == "1/2"
    assert answer_key("Paris ") == answer_key("paris") == "paris"
    assert answer_key(None) is None


# --- accuracy_reward --------------------------------------------------------------------------
def test_accuracy_reward_trl_style():
    completions = ["<answer>42</answer>", "It is 41.", "The sum is 42", "", "<answer>forty-two</answer>",
                   [{"role": "assistant", "content": "\\boxed{42}"}]]       # TRL conversational format
    assert accuracy_reward(completions=completions, answer=["42"] * 6) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_accuracy_reward_tag_beats_last_number():
    # the tag holds 12 though 13 is the last number: the tag is credited first
    assert accuracy_reward(["<answer>12</answer> (not 13)"], ["12"]) == [1.0]
    assert accuracy_reward(["<answer>12</answer> (not 13)"], ["13"]) == [0.0]
    assert accuracy_reward(["<answer>12</answer> (not 13)"], ["13"], extract_order=["last_number"]) == [1.0]


def test_accuracy_reward_never_raises_on_model_output():
    junk = ["<answer></answer>", "\\boxed{", "}}}{{{", "#### ", "\x00\uffff", "9" * 5000, "1/0", "-" * 100]
    assert accuracy_reward(junk, ["1"] * len(junk)) == [0.0] * len(junk)


def test_accuracy_reward_bad_reference_names_sample():
    with pytest.raises(RewardError, match="sample 1"):
        accuracy_reward(["1", "2"], ["1", ""])
    with pytest.raises(RewardError, match="2 completions but 1 answers"):
        accuracy_reward(["1", "2"], ["1"])


# --- format rewards ---------------------------------------------------------------------------
FORMAT_CASES = [
    # text, strict, soft, tag_count, answer_format
    ("<think>7+9=16</think><answer>16</answer>", 1.0, 1.0, 1.0, 1.0),
    ("<think>\nx\n</think>\n\n<answer>\n16\n</answer>\n", 1.0, 1.0, 1.0, 1.0),
    ("Sure! <think>x</think><answer>16</answer>", 0.0, 1.0, 1.0, 1.0),     # text outside the blocks
    ("<think>x</think><answer>16</answer> done", 0.0, 1.0, 1.0, 1.0),
    ("<answer>16</answer><think>x</think>", 0.0, 0.0, 1.0, 1.0),           # wrong order
    ("<think>x</think>", 0.0, 0.0, 0.5, 0.0),                              # 2 of 4 tags
    ("<think>x</think><answer>1</answer><answer>2</answer>", 0.0, 1.0, 0.5, 0.0),
    ("<think>x<think>y</think><answer>1</answer>", 0.0, 1.0, 0.75, 1.0),   # <think> twice
    ("<answer> </answer>", 0.0, 0.0, 0.5, 0.0),
    ("16", 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("text", "strict", "soft", "tags", "answer_fmt"), FORMAT_CASES)
def test_format_rewards(text, strict, soft, tags, answer_fmt):
    assert format_reward([text]) == [strict]
    assert soft_format_reward([text]) == [soft]
    assert tag_count_reward([text]) == [tags]
    assert answer_format_reward([text]) == [answer_fmt]


# --- score: weighted sum, None skipped, broken rewards named -----------------------------------
def _const(values):
    return lambda prompts, completions, **kw: list(values)


def test_score_weighted_sum_and_none():
    fns = {"a": (_const([1.0, 0.0, None]), 1.0), "b": (_const([0.5, None, None]), 0.2)}
    total, per_fn = score(fns, [[]] * 3, ["x", "y", "z"], [{"answer": "1"}] * 3)
    # sample 0: 1.0*1 + 0.2*0.5 = 1.1; sample 1: 0.0 (b skipped); sample 2: nothing scores -> 0.0
    assert total == pytest.approx([1.1, 0.0, 0.0])
    assert per_fn == {"a": [1.0, 0.0, None], "b": [0.5, None, None]}


def test_score_passes_columns_and_lengths():
    seen = {}

    def spy(prompts, completions, **kw):
        seen.update(kw)
        return [0.0] * len(completions)

    score({"spy": (spy, 1.0)}, [[{"role": "user", "content": "q"}]] * 2, ["a", "b"],
          [{"answer": "1", "level": 3}, {"answer": "2", "level": 4}], completion_ids=[[5, 6, 7], [8]])
    assert seen["answer"] == ["1", "2"] and seen["level"] == [3, 4]
    assert seen["completion_ids"] == [[5, 6, 7], [8]] and seen["completion_lengths"] == [3, 1]


def test_score_names_the_raising_function_and_sample():
    def picky(prompts, completions, **kw):
        return [1.0 / (len(c) - 3) for c in completions]        # ZeroDivisionError on "abc"

    with pytest.raises(RewardError, match=r"'picky'.*ZeroDivisionError on sample 2"):
        score({"picky": (picky, 1.0)}, [[]] * 3, ["a", "ab", "abc"], [{}] * 3)


@pytest.mark.parametrize(("values", "message"), [
    ([1.0], "returned 1 values for 2 completions"),
    ([1.0, float("nan")], "returned nan for sample 1"),
    ([float("inf"), 1.0], "returned inf for sample 0"),
    (["1", 1.0], "returned str '1' for sample 0"),
])
def test_score_rejects_bad_reward_output(values, message):
    with pytest.raises(RewardError, match=message):
        score({"bad": (_const(values), 1.0)}, [[]] * 2, ["a", "b"], [{}] * 2)


# --- resolve_rewards --------------------------------------------------------------------------
def test_resolve_registry_module_and_file(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def short(prompts, completions, **kw):\n"
                 "    return [1.0 if len(c) < 3 else 0.0 for c in completions]\n")
    fns = resolve_rewards({"accuracy": 1.0, "groupo.rewards.format:format_reward": 0.5,
                           f"{f}:short": 0.1}, {})
    assert [w for _, w in fns.values()] == [1.0, 0.5, 0.1]
    total, _ = score(fns, [[]] * 2, ["<answer>7</answer>", "7"], [{"answer": "7"}] * 2)
    # accuracy 1,1; format 0,0; short 0,1 -> totals 1.0 and 1.0 + 0.1
    assert total == pytest.approx([1.0, 1.1])


def test_resolve_uses_task_defaults_and_binds_config():
    cfg = RewardsConfig(extract_order=["last_number"])
    fns = resolve_rewards(cfg, {"accuracy": 1.0})
    fn, w = fns["accuracy"]
    assert w == 1.0 and fn(completions=["<answer>3</answer> 4"], answer=["4"]) == [1.0]


def test_resolve_overlong_from_config():
    cfg = RewardsConfig(overlong_buffer=4, overlong_penalty=0.5)
    fns = resolve_rewards(cfg, {"accuracy": 1.0}, max_completion_length=10)
    fn, w = fns["overlong"]
    # L_max 10, buffer 4: lengths 6 -> 0, 8 -> (6-8)/4 = -0.5, 11 -> -1
    assert w == 0.5 and fn(completions=["a"] * 3, completion_lengths=[6, 8, 11]) == [0.0, -0.5, -1.0]


@pytest.mark.parametrize(("name", "message"), [
    ("acuracy", "valid: accuracy"), ("no_such_module_x:f", "cannot import module"),
    ("groupo.rewards.format:nope", "has no function 'nope'"), ("/nonexistent/r.py:f", "file not found"),
])
def test_resolve_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_rewards({name: 1.0}, {})


def test_registry_names():
    assert {"accuracy", "format", "soft_format", "tag_count", "answer_format", "overlong", "cosine",
            "countdown"} <= set(REWARDS)


def test_adversarial_completions_stay_linear():
    """Repeated tags and long runs once made backtracking regexes take seconds to minutes; a
    generous bound catches such a regression without timing anything fine-grained."""
    import time

    nasty = ["<think>" * 3000, "<think></think>" * 1500 + "<answer>" * 1500, "<answer>" * 4000,
             "1" + " a" * 3000 + "!", "(" * 5000, "\\boxed{" * 3000, "the answer is " * 2000, "(1+" * 3000]
    t0 = time.monotonic()
    for fn in (accuracy_reward, format_reward, soft_format_reward, tag_count_reward, answer_format_reward):
        assert fn(completions=nasty, answer=["5"] * len(nasty)) == [0.0] * len(nasty)
    assert time.monotonic() - t0 < 5.0
