"""nest_rt.interrupts: what stop_on_signals changes, and puts back (the runs it stops are in
tests/test_run_faults.py and tests/test_ray.py)."""
from __future__ import annotations

import signal
import sys
import threading

import pytest

from nest_rt import interrupts


def current() -> tuple:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook


def test_a_signal_raises_and_is_noted_and_everything_is_put_back():
    before = current()
    with pytest.raises(KeyboardInterrupt):
        with interrupts.stop_on_signals():
            assert current()[:2] != before[:2]
            signal.raise_signal(signal.SIGTERM)
    assert interrupts.received() == signal.SIGTERM and current() == before
    interrupts.raise_if_stopped()  # outside the context it does nothing


def test_an_inner_use_neither_forgets_nor_puts_back_the_outer_one_s_stop():
    with interrupts.stop_on_signals():
        installed = current()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as if dropped in a finaliser: only the note is left
        with interrupts.stop_on_signals():
            pass
        assert current() == installed and interrupts.received() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_stopped()


def test_in_another_thread_it_changes_nothing():
    before, seen = current(), []

    def in_thread():
        with interrupts.stop_on_signals():
            seen.append(current())

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before] and current() == before


def test_a_signal_the_process_ignores_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # nothing happens
        assert interrupts.received() is None
    finally:
        signal.signal(signal.SIGINT, previous)
