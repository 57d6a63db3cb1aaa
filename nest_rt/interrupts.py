"""Ctrl-C and SIGTERM stop a command where it is, and for certain at the next block it writes.

Python delivers a signal by raising KeyboardInterrupt wherever the main thread happens to be.
When that is a finaliser (``__del__``, which Ray's streams of results have), Python prints
"Exception ignored" with a traceback and carries on, and the stop would be lost. So the handlers
also note the signal, the encode loop calls ``raise_if_stopped()`` before every block it writes,
and the dropped KeyboardInterrupt is not printed (it is acted on, not an error).

SIGTERM (what Slurm and other schedulers send before killing a job) is handled as Ctrl-C and
told apart by the noted signal: an exception subclass would not survive Ray's blocking calls,
which turn any KeyboardInterrupt into a plain one.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

_received: list[int] = []  # the signals noted within the last stop_on_signals
_listening = False  # inside stop_on_signals: outside it (a library caller's encode_run) nothing is raised


def _on_signal(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGINT and SIGTERM raise KeyboardInterrupt and are noted. A signal the process
    was started ignoring (``nohup``, a shell's background job) stays ignored."""
    global _listening
    _received.clear()  # a process may run more than one command (tests, benchmarks)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # where Python allows handlers
        for number in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.signal(number, _on_signal)
    previous_hook = sys.unraisablehook

    def quiet_about_dropped_stops(unraisable):
        if not (_received and unraisable.exc_type is KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_about_dropped_stops
    _listening = True
    try:
        yield
    finally:
        _listening = False
        sys.unraisablehook = previous_hook
        for number, handler in previous.items():
            signal.signal(number, handler)


def received() -> int | None:
    """The first signal noted within the last ``stop_on_signals``, or None."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Within ``stop_on_signals``: raise KeyboardInterrupt if a stop was asked for, in case its
    own was swallowed."""
    if _listening and _received:
        raise KeyboardInterrupt
