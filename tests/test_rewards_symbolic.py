"""The symbolic (math-verify) check runs in a killable worker with a hard per-check limit, which
also holds when called from a non-main thread (signal-based timeouts cannot do that)."""

import threading
import time

from groupo.rewards import accuracy_reward
from groupo.rewards.symbolic import stats, symbolic_equal

PATHOLOGICAL = "9^{9^{9^{9}}}"      # sympy tries to expand this power tower


def test_symbolic_equal_basic():
    assert symbolic_equal("\\frac{14}{3}", "14/3") is True
    assert symbolic_equal("\\sqrt{2}", "\\frac{1}{2}") is False


def _timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def test_pathological_check_is_cut_off_in_main_thread():
    symbolic_equal("1", "1")                                           # worker started (not part of a check)
    before = stats["timeouts"]
    out, seconds = _timed(lambda: symbolic_equal(PATHOLOGICAL, "1", timeout_s=0.5))
    assert out is None and seconds < 0.5 + 0.5                           # cut off at the limit (+ kill time)
    assert stats["timeouts"] == before + 1
    assert symbolic_equal("\\frac{1}{2}", "0.5") is True                # a fresh worker takes over


def test_pathological_check_is_cut_off_in_a_thread():
    symbolic_equal("1", "1")
    result = {}

    def work():
        result["reward"], result["seconds"] = _timed(
            lambda: accuracy_reward([f"\\boxed{{{PATHOLOGICAL}}}"], ["\\frac{1}{2}"], timeout_s=0.5))

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert result["reward"] == [0.0] and result["seconds"] < 1.0


def _check_in_child(_):
    ok = accuracy_reward(["\\boxed{\\sqrt{4}}"], ["2"])
    t0 = time.monotonic()
    cut = symbolic_equal(PATHOLOGICAL, "1", timeout_s=0.5)
    return ok, cut, time.monotonic() - t0


def test_checks_work_in_forked_worker_processes():
    """A process forked after the parent started its worker gets its own worker (pipes and the
    reader thread do not survive fork), and its time limit holds there too."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    symbolic_equal("1", "1")
    with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
        ok, cut, seconds = pool.submit(_check_in_child, 0).result(timeout=60)
    assert ok == [1.0] and cut is None and seconds < 1.0
    assert symbolic_equal("\\sqrt{9}", "3") is True                    # the parent's worker still works
