"""How groupo calls reward functions beyond TRL's convention (tests/test_rewards_trl.py checks the
convention against TRL itself): plain-string completions on request, column aliases, errors."""

import pytest

from groupo.config import RewardsConfig
from groupo.rewards import RewardError, resolve_rewards, score

PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]
TEXTS = ["7", "<answer>7</answer>", "3 then 4"]
ROWS = [{"question": "What is 3 + 4?", "answer": "7"}] * 3


def test_text_completion_format_hands_user_functions_strings(tmp_path):
    (tmp_path / "lens.py").write_text("def lens(prompts, completions, **kw):\n"
                                      "    return [float(len(c)) for c in completions]\n")
    name = f"{tmp_path / 'lens.py'}:lens"
    # trl: each completion is a one-message list (length 1); text: the strings "7", "<answer>7</answer>", ...
    for fmt, expected in (("trl", [1.0, 1.0, 1.0]), ("text", [1.0, 18.0, 8.0])):
        fns = resolve_rewards(RewardsConfig(funcs={name: 1.0}, completion_format=fmt), {})
        assert score(fns, [PROMPT] * 3, TEXTS, ROWS)[1][name] == expected


def test_aliases_keep_the_built_in_rewards_settings_for_evaluation():
    from groupo.eval.evaluate import _extract_order

    cfg = RewardsConfig(column_aliases={"solution": "answer"}, extract_order=["last_number"])
    fns = resolve_rewards(cfg, {"accuracy": 1.0})
    assert _extract_order(fns, "accuracy") == ("last_number",)
    assert fns["accuracy"][0](completions=[[{"role": "assistant", "content": "3 then 4"}]], answer=["4"]) == [1.0]


def test_unknown_alias_column_is_a_clear_error():
    fns = resolve_rewards(RewardsConfig(funcs={"format": 1.0}, column_aliases={"solution": "gold"}), {})
    with pytest.raises(RewardError, match=r"'gold' is not a column of this task \(keywords: .*answer"):
        score(fns, [PROMPT] * 3, TEXTS, ROWS)


def test_built_in_rewards_read_both_completion_forms():
    fns = resolve_rewards(RewardsConfig(), {"accuracy": 1.0, "answer_format": 0.5})
    as_messages = score(fns, [PROMPT] * 3, TEXTS, ROWS)     # chat prompts: message-list completions
    as_strings = score(fns, [""] * 3, TEXTS, ROWS)          # text prompts: strings
    # accuracy: 7, 7, last number 4 -> 1, 1, 0; answer_format: only the tagged one
    assert as_messages == as_strings == ([1.0, 1.5, 0.0], {"accuracy": [1.0, 1.0, 0.0],
                                                          "answer_format": [0.0, 1.0, 0.0]})


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit("bye")])
def test_a_reward_raising_a_base_exception_is_named_not_an_exit(exc):
    def picky(prompts, completions, **kw):
        if any("then" in c[0]["content"] for c in completions):  # sample 2 of TEXTS
            raise exc
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=rf"reward 'picky' \(.*picky\) raised {type(exc).__name__} on sample 2 "
                                          rf"\(completion '3 then 4'\): {exc}"):
        score({"picky": (picky, 1.0)}, [PROMPT] * 3, TEXTS, ROWS)


def test_ctrl_c_in_a_reward_still_stops_the_run():
    def interrupted(prompts, completions, **kw):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score({"interrupted": (interrupted, 1.0)}, [PROMPT] * 3, TEXTS, ROWS)


def test_each_rewards_time_is_logged_and_a_slow_one_warned_about_once(monkeypatch, caplog):
    import time

    from groupo.rewards import combine
    from groupo.rewards.trl_compat import RewardLog

    def slow(prompts, completions, **kw):
        time.sleep(0.2)
        return [0.0] * len(completions)

    def quick(prompts, completions, **kw):
        return [1.0] * len(completions)

    monkeypatch.setattr(combine, "SLOW_REWARD_S", 0.1)
    monkeypatch.setattr(combine, "_warned_slow", set())
    log = RewardLog()
    fns = {"slow": (slow, 1.0), "quick": (quick, 1.0)}
    with caplog.at_level("WARNING", logger="groupo.rewards.combine"):
        score(fns, [PROMPT] * 3, TEXTS, ROWS, log=log)
        score(fns, [PROMPT] * 3, TEXTS, ROWS, log=log)
    times = log.time_metrics()
    assert set(times) == {"time/reward/slow", "time/reward/quick"}
    assert 0.4 <= times["time/reward/slow"] < 1.5  # two calls of 0.2 s, summed
    assert times["time/reward/quick"] < 0.05
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("reward 'slow' (") and "(over 0.1 s per call)" in warned[0]
    assert "took 0.2 s for 3 completions" in warned[0]


def test_a_file_rewards_metric_keys_carry_its_file_name_not_its_path(tmp_path):
    from groupo.config import ConfigError
    from groupo.report.keys import fn_key
    from groupo.rewards.trl_compat import RewardLog

    (tmp_path / "rewards.py").write_text("def slow6(completions, **kw):\n    return [1.0] * len(completions)\n")
    spec = f"{tmp_path}/rewards.py:slow6"
    log = RewardLog()
    score(resolve_rewards({spec: 1.0}, {}), [PROMPT] * 3, TEXTS, ROWS, log=log)
    assert list(log.time_metrics()) == ["time/reward/rewards.py:slow6"]  # before: time/reward//tmp/.../rewards.py:slow6
    assert fn_key(spec) == "reward/fn/rewards.py:slow6" and fn_key("trl.rewards:accuracy_reward") == (
        "reward/fn/trl.rewards:accuracy_reward")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "rewards.py").write_text((tmp_path / "rewards.py").read_text())
    with pytest.raises(ConfigError, match=r"would share the metric name 'rewards.py:slow6'; give the two files"):
        resolve_rewards({spec: 1.0, f"{tmp_path}/b/rewards.py:slow6": 1.0}, {})
