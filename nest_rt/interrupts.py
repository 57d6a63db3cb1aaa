"""Ctrl-C and SIGTERM stop a command where it is, or else at the next block an encode run
writes, or when the command ends: a stop asked for is never lost.

Python delivers a signal by raising KeyboardInterrupt wherever the main thread happens to be.
When that is a finaliser (``__del__``, which Ray's streams of results have), Python prints
"Exception ignored" with a traceback and carries on, and the stop would be lost. So the handlers
also note the signal; the encode loop calls ``raise_if_stopped()`` after every block it writes
(and the Ray driver before each wait), the command line once the command has ended, and the
dropped KeyboardInterrupt is not printed (it is acted on, not an error).

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
    """Within: SIGINT and SIGTERM raise KeyboardInterrupt and are noted. A signal the process was
    started ignoring (a non-interactive shell's ``cmd &`` ignores SIGINT) stays ignored. Only the
    outermost use in the main thread acts (signal handlers belong to the main thread); an inner
    one, or one in another thread, changes nothing."""
    global _listening
    if _listening or threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()  # a process may run more than one command (tests, benchmarks)
    previous_handlers, previous_hook = {}, sys.unraisablehook

    def quiet_about_dropped_stops(unraisable):
        if not (_received and unraisable.exc_type is KeyboardInterrupt):
            previous_hook(unraisable)

    try:
        _listening = True
        sys.unraisablehook = quiet_about_dropped_stops
        for number in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(number)
            if handler is not None and handler is not signal.SIG_IGN:  # None: set outside Python, left alone
                previous_handlers[number] = handler
                signal.signal(number, _on_signal)
        yield
    finally:
        for number, handler in previous_handlers.items():  # first: a second signal may land in here
            signal.signal(number, handler)
        sys.unraisablehook = previous_hook
        _listening = False


def received() -> int | None:
    """The first signal noted within the last ``stop_on_signals``, or None."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Within ``stop_on_signals``: raise KeyboardInterrupt if a stop was asked for, in case its
    own was swallowed."""
    if _listening and _received:
        raise KeyboardInterrupt
