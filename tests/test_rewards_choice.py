"""The `choice` reward: the option letter a completion chose, in the forms people and models write
it (English, Vietnamese, Chinese; tagged or not), and no reward for hedging between options."""

import pytest

from groupo.rewards import RewardError, resolve_rewards, score
from groupo.rewards.choice import choice_reward, extract_choice, gold_letter


@pytest.mark.parametrize(("text", "expected"), [
    ("(B)", "B"),
    ("B.", "B"),
    ("B.1", "B"),
    ("C", "C"),
    ("Answer: C", "C"),
    ("**Answer:** C", "C"),
    ("We add 3 and 4 to get 7, so the answer is D.", "D"),
    ("The correct option is (A) because 2 + 2 = 4.", "A"),
    ("Đáp án: C", "C"),
    ("Ta có 12 : 3 = 4. Vậy đáp án đúng là B.", "B"),
    ("Chọn A vì 5 + 5 = 10.", "A"),
    ("答案：B", "B"),                 # full-width colon, NFKC
    ("答案是Ｃ", "C"),                # full-width letter
    ("3×4=12，故选D", "D"),
    ("<answer>B</answer>", "B"),
    ("<answer>(c)</answer>", "C"),   # a lone lower-case letter in the tag
    ("<answer>D. 42</answer>", "D"),
    ("Reasoning... <answer>Answer: E</answer>", "E"),
    ("\\boxed{A}", "A"),
    ("The sum is 12, which is option B.", "B"),
    ("It cannot be A, since 3 > 2; the answer is C", "C"),
    ("the answer is not obvious. A farmer has 3 cows. The answer is B", "B"),  # an earlier phrase has no letter
])
def test_extract_choice_reads_the_usual_forms(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "I am not sure.",
    "A farmer has 12 apples.",                  # "A" as an article
    "Apples cost 3 dollars.",
    "<answer>42</answer> so the answer is B",   # the tag is the declared answer, and holds no letter
    "The answer is A or B.",                    # hedging
    "Đáp án A và B đều đúng",
    "<answer>B/C</answer>",
    "(A) 12 (B) 15 (C) 18 (D) 21",              # the options listed back, none chosen
    "A. 12\nB. 15\nC. 18",
    "The answer is F",                          # not an option letter (A-E)
])
def test_no_choice_or_several_is_none(text):
    assert extract_choice(text) is None


def test_letters_follow_the_rows_options():
    # four options: "E" is no option; five: it is
    four, five = ["1", "2", "3", "4"], ["1", "2", "3", "4", "5"]
    comps = [[{"role": "assistant", "content": "Answer: E"}]] * 2
    assert choice_reward(comps, answer=["E", "E"], options=[five, five]) == [1.0, 1.0]
    assert extract_choice("Answer: E", "ABCD") is None
    with pytest.raises(RewardError, match=r"sample 0 has reference answer 'E', not an option letter \(A-D\)"):
        choice_reward(comps[:1], answer=["E"], options=[four])


@pytest.mark.parametrize(("ref", "letter"), [("B", "B"), ("b", "B"), ("(C)", "C"), (" D. ", "D")])
def test_gold_letter_normalises(ref, letter):
    assert gold_letter(ref, 0) == letter


@pytest.mark.parametrize("ref", ["", None, "42", "AB", "Paris"])
def test_a_reference_that_is_no_letter_names_the_sample(ref):
    with pytest.raises(RewardError, match="choice_reward: sample 3 has reference answer"):
        gold_letter(ref, 3)


def test_choice_is_registered_and_scores_through_the_trainers_call():
    prompt = [{"role": "user", "content": "2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6"}]
    texts = ["<answer>B</answer>", "the answer is C", "Đáp án: B", "(A) or (B)"]
    rows = [{"question": "2 + 2 = ?", "answer": "B", "options": ["3", "4", "5", "6"]}] * 4
    total, per_fn = score(resolve_rewards({"choice": 1.0, "answer_format": 0.5}, {}), [prompt] * 4, texts, rows)
    assert per_fn["choice"] == [1.0, 0.0, 1.0, 0.0]
    assert total == [1.5, 0.0, 1.0, 0.0]


def test_adversarial_completions_stay_fast():
    import time

    texts = ["(" * 20000, "answer is " * 5000, "<answer>" * 5000 + "B", "A or " * 5000, "\n(B)" * 5000]
    start = time.perf_counter()
    for t in texts:
        extract_choice(t)
    assert time.perf_counter() - start < 2.0
