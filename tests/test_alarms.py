"""Health alarms on constructed histories: each one fires where it should and stays quiet otherwise."""

import math
from dataclasses import replace

import pytest
from histories import healthy, record

from groupo.config import AlarmsConfig, load_config
from groupo.report.alarms import CHECKS, fired, loss_note

CFG = AlarmsConfig()


def names(history, cfg=CFG):
    return [a.name for a in fired(history, cfg, "accuracy")]


def with_values(key, values, start=1, **other):
    """Healthy steps whose `key` takes `values` in turn."""
    return [record(start + i, **{key: v}, **other) for i, v in enumerate(values)]


def test_a_healthy_200_step_run_raises_no_alarm_at_any_step():
    h = healthy(200)
    assert [names(h[:n]) for n in range(1, 201)] == [[]] * 200


@pytest.mark.parametrize("key", ["loss/total", "reward/mean", "optim/grad_norm", "rollout/logprob_mismatch",
                                 "loss/entropy"])
def test_nan_or_inf_stops_and_names_the_quantity_and_step(key):
    h = [*healthy(4), record(5, **{key: math.nan if key != "optim/grad_norm" else math.inf})]
    (alarm,) = fired(h, CFG)
    assert alarm.name == "nan" and alarm.action == "stop" and alarm.step == 5
    assert key in alarm.message and "step 5" in alarm.message and "checkpoint" in alarm.advice
    assert names(h[:4]) == []
    assert names([*h, record(6, **{key: math.nan})]) == ["nan"]  # unlike the others: on every step it holds


def test_kl_above_the_threshold_fires_once_and_below_it_is_quiet():
    h = with_values("loss/kl", [0.01, 0.02, 1.5, 1.6])
    assert [names(h[:n]) for n in (2, 3, 4)] == [[], ["kl"], []]  # at onset, not while it persists
    (alarm,) = fired(h[:3], CFG)
    assert "1.5" in alarm.message and "kl_max" in alarm.message and alarm.action == "warn"
    assert names(with_values("loss/kl", [0.01, 0.02, 0.9])) == []


def test_kl_rising_steadily_fires_and_noise_around_a_level_does_not():
    rising = with_values("loss/kl", [0.01 * 1.25**i for i in range(10)])  # x7.5 over 10 steps, always up
    (alarm,) = fired(rising, CFG)
    assert alarm.name == "kl" and "rose steadily over 10 steps" in alarm.message
    assert names(rising[:9]) == []  # a window of 10 steps is needed
    noisy = with_values("loss/kl", [0.01, 0.03, 0.012, 0.035, 0.011, 0.04, 0.013, 0.038, 0.02, 0.05])
    assert names(noisy) == []  # x5, but up only half the time
    tiny = with_values("loss/kl", [1e-6 * 1.5**i for i in range(10)])
    assert names(tiny) == []  # steady but at rounding level


def test_no_learning_signal_fires_with_the_defaults_after_three_steps_of_zero_variance_in_every_group():
    h = with_values("rollout/zero_var_group_frac", [0.5, 1.0, 1.0, 1.0, 1.0])
    assert [names(h[:n]) for n in range(1, 6)] == [[], [], [], ["no_signal"], []]
    (alarm,) = fired(h[:4], CFG)
    assert "no learning signal" in alarm.message and "every group" in alarm.message
    assert "group_size" in alarm.advice and "dynamic_sampling" in alarm.advice


def test_no_learning_signal_is_quiet_with_some_signal_or_a_break():
    assert names(with_values("rollout/zero_var_group_frac", [0.875, 0.875, 0.875])) == []  # 7 of 8 groups
    assert names(with_values("rollout/zero_var_group_frac", [1.0, 1.0, 0.5, 1.0, 1.0])) == []


def test_reward_hacking_format_rising_while_accuracy_falls():
    acc = [0.6] * 5 + [0.3] * 5
    fmt = [0.2] * 5 + [0.8] * 5
    h = [record(i + 1, **{"accuracy/train": a, "reward/fn/accuracy": a, "reward/fn/answer_format": f})
         for i, (a, f) in enumerate(zip(acc, fmt, strict=True))]
    (alarm,) = fired(h, CFG)
    assert alarm.name == "reward_hacking" and "reward/fn/answer_format" in alarm.message
    assert "0.20 -> 0.80" in alarm.message and "0.60 -> 0.30" in alarm.message


def test_reward_hacking_is_quiet_when_format_and_accuracy_rise_together():
    h = [record(i + 1, **{"accuracy/train": 0.3 + 0.05 * i, "reward/fn/answer_format": 0.2 + 0.06 * i})
         for i in range(10)]
    assert names(h) == []


def test_length_collapse_and_always_truncated():
    collapse = with_values("completion/len_mean", [30.0, 30.0, 30.0, 20.0, 5.0, 5.0, 5.0])
    assert [names(collapse[:n]) for n in (6, 7)] == [[], ["length"]]
    assert "collapsed to 5.0 tokens" in fired(collapse, CFG)[0].message
    limit = with_values("completion/truncated_frac", [0.5, 1.0, 0.97, 1.0])
    (alarm,) = fired(limit, CFG)
    assert "length limit" in alarm.message and "max_new_tokens" in alarm.advice


def test_length_is_quiet_for_a_gradual_shortening_and_occasional_truncation():
    assert names(with_values("completion/len_mean", [30, 28, 26, 24, 22, 20, 18, 16])) == []
    assert names(with_values("completion/truncated_frac", [1.0, 1.0, 0.9, 1.0, 1.0])) == []


def test_several_answer_tags_per_completion():
    assert names(with_values("completion/multi_answer_frac", [0.0, 0.5])) == ["answer_tags"]
    assert names(with_values("completion/multi_answer_frac", [0.0, 0.1])) == []


@pytest.mark.parametrize(("key", "value", "words"), [
    ("reward/none_frac/answer_format", 0.6, "'answer_format' returned None"),
    ("reward/timeout_frac", 0.5, "timed out on 50%"),
    ("reward/gold_unparsed_frac", 0.25, "25% of the step's reference answers"),
])
def test_reward_function_failing_quietly(key, value, words):
    (alarm,) = fired(with_values(key, [0.0, value]), CFG)
    assert alarm.name == "reward_fn" and words in alarm.message
    assert names(with_values(key, [0.0, 0.01])) == []


def test_entropy_collapse_while_accuracy_is_flat_but_not_while_it_rises():
    ent = [0.8, 0.8, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02]
    flat = [record(i + 1, **{"loss/entropy": e, "accuracy/train": 0.3}) for i, e in enumerate(ent)]
    (alarm,) = fired(flat, CFG)
    assert alarm.name == "entropy" and "0.02" in alarm.message and "temperature" in alarm.advice
    learning = [record(i + 1, **{"loss/entropy": e, "accuracy/train": 0.3 + 0.05 * i}) for i, e in enumerate(ent)]
    assert names(learning) == []


def test_each_alarm_can_be_turned_off_or_made_to_stop():
    h = with_values("rollout/zero_var_group_frac", [1.0, 1.0, 1.0])
    assert names(h, replace(CFG, no_signal="off")) == []
    assert [a.action for a in fired(h, replace(CFG, no_signal="stop"))] == ["stop"]
    assert set(CHECKS) == {f for f in vars(CFG) if getattr(CFG, f) in ("stop", "warn", "off")}


def test_run_alarms_off_and_thresholds_are_config_keys():
    cfg = load_config(None, ["run.alarms=off", "alarms.kl_max=0.2", "alarms.kl=stop", "alarms.entropy=off"])
    assert cfg.run.alarms is False and cfg.alarms.kl_max == 0.2 and cfg.alarms.kl == "stop"
    assert cfg.alarms.entropy == "off"  # a bare YAML off is a bool; the alarm's action reads it as "off"
    assert load_config().run.alarms is True


def test_the_loss_note_is_given_exactly_where_the_loss_is_zero_by_construction():
    assert "~0 by construction" in loss_note(1, 0.0) and "reward/mean" in loss_note(1, 0.0)
    assert loss_note(2, 0.0) is None and loss_note(1, 0.04) is None


def test_the_history_a_run_keeps_is_bounded_and_fires_what_the_whole_history_fires():
    """The run keeps the first and the last records the alarms read (report.alarms.lookback), so a
    day-long run's memory does not grow with its steps; at every step of a 400-step history full of
    events (a KL rise, lost signal, length collapse, reward hacking, entropy collapse, NaN), the
    trimmed history fires exactly the alarms the whole one does."""
    import random

    from groupo.report.alarms import lookback

    rng = random.Random(0)
    cfg = replace(CFG, kl_rise_steps=6, hacking_window=8, hacking_delta=0.05, entropy_window=7)
    steps = []
    for s in range(1, 401):
        phase = (s // 40) % 5
        over = {"loss/kl": 0.01 * (1 + (s % 40)) if phase == 1 else 0.01,
                "rollout/zero_var_group_frac": 0.95 if phase == 2 else 0.25,
                "completion/len_mean": 3.0 if phase == 3 and s % 40 > 20 else 30.0,
                "reward/fn/answer_format": 0.1 + 0.02 * (s % 40) if phase == 4 else 0.5,
                "accuracy/train": 0.9 - 0.02 * (s % 40) if phase == 4 else 0.5,
                "loss/entropy": 0.8 * rng.choice([1.0, 0.05]) if phase == 0 and s > 40 else 0.8}
        if s == 333:
            over["loss/total"] = math.nan
        steps.append(record(s, **over))
    first, last = lookback(cfg)
    kept, seen = [], []
    for s in range(400):
        kept.append(steps[s])
        if len(kept) > 2 * (first + last):  # as trainer.runlog.RunLog.step trims it
            del kept[first:len(kept) - last]
        assert names(kept, cfg) == names(steps[:s + 1], cfg), s + 1
        seen += names(kept, cfg)
        assert len(kept) <= 2 * (first + last)
    assert {"kl", "no_signal", "length", "reward_hacking", "nan"} <= set(seen)  # the events did fire
