"""Length shaping (DAPO overlong, cosine) and the countdown reward, against hand-computed values."""

import math

import pytest

from groupo.rewards import RewardError, cosine_reward, countdown_reward, overlong_reward
from groupo.rewards.countdown import evaluate_expression
from groupo.rewards.length import cosine_scale, overlong_penalty


@pytest.mark.parametrize(("length", "expected"), [
    (0, 0.0), (15, 0.0),            # |y| <= L_max - L_cache = 20 - 5
    (16, -0.2), (18, -0.6),         # (15 - |y|) / 5
    (20, -1.0), (21, -1.0), (500, -1.0),
])
def test_overlong_penalty_dapo_eq13(length, expected):
    assert overlong_penalty(length, max_len=20, buffer=5) == pytest.approx(expected)


def test_overlong_reward_reads_lengths_or_ids():
    kw = {"max_completion_length": 20, "overlong_buffer": 5}
    assert overlong_reward(["a", "b"], completion_lengths=[16, 3], **kw) == pytest.approx([-0.2, 0.0])
    assert overlong_reward(["a", "b"], completion_ids=[[1] * 18, [1]], **kw) == pytest.approx([-0.6, 0.0])
    with pytest.raises(RewardError, match="completion_lengths= or completion_ids="):
        overlong_reward(["a"], **kw)
    with pytest.raises(RewardError, match="1 completions but 2 completion lengths"):
        overlong_reward(["a"], completion_lengths=[1, 2], **kw)


def test_cosine_scale_endpoints_and_midpoints():
    assert cosine_scale(0, 100, 1.0, 0.5) == pytest.approx(1.0)
    assert cosine_scale(50, 100, 1.0, 0.5) == pytest.approx(0.75)           # 0.5 + 0.25 * (1 + cos(pi/2))
    assert cosine_scale(25, 100, 1.0, 0.5) == pytest.approx(0.5 + 0.25 * (1 + math.sqrt(0.5)))
    assert cosine_scale(100, 100, 1.0, 0.5) == pytest.approx(0.5)


def test_cosine_reward():
    out = cosine_reward(["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>", "<answer>4</answer>"],
                        answer=["4"] * 4, completion_lengths=[0, 50, 50, 100], max_completion_length=100)
    # correct & empty: 1.0; correct at half: 0.75; wrong at half: -0.5 + (-0.25)(1 + 0) = -0.75;
    # at the length limit: the exceed value -1.0
    assert out == pytest.approx([1.0, 0.75, -0.75, -1.0])


@pytest.mark.parametrize(("text", "expected"), [
    ("<answer>30 - (100 - 93)</answer>", 1.0),
    ("so 30 - (100 - 93) = 23", 1.0),                              # no tag: the last expression
    ("<answer>(100 - 93) * 30</answer>", 0.0),                       # wrong value
    ("<answer>30 - 100 + 93</answer>", 1.0),
    ("<answer>30 - (100 - 93) + 0</answer>", 0.0),                   # uses a number not given
    ("<answer>30 - 7</answer>", 0.0),                                # misses numbers
    ("<answer>__import__('os').system('true')</answer>", 0.0),       # not arithmetic: never evaluated
    ("<answer>30 ** 100 - 93</answer>", 0.0),                        # power is not allowed
    ("<answer>30 / (100 - 100) + 93</answer>", 0.0),                 # division by zero
    ("nothing", 0.0), ("", 0.0),
])
def test_countdown_reward(text, expected):
    assert countdown_reward([text], target=[23], numbers=[[30, 100, 93]]) == [expected]


def test_countdown_exact_division():
    # 4 / 6 * 3 = 2 exactly (fractions, not floats)
    assert countdown_reward(["<answer>4 / 6 * 3</answer>"], target=[2], numbers=[[3, 6, 4]]) == [1.0]
    assert evaluate_expression("1 - - 1") is None                    # unary minus is not allowed
    assert evaluate_expression("2 × 3 ÷ 3")[0] == 2
