"""Ctrl-C always ends the command, even when Prefect does not let go.

Ctrl-C raises KeyboardInterrupt as usual, and the caller stops its jobs and records the stop.
But an interrupt that lands inside one of Prefect's own API calls can leave the process
waiting forever (seen once in CI: a `caliban run` never ended after Ctrl-C). So the first
Ctrl-C also starts a timer: if the process is still there `grace` seconds later, `on_stuck`
(stop the jobs, record the stop, with short timeouts) runs and the process exits 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

GRACE_SECONDS = 30.0
EXIT_CODE = 130  # 128 + SIGINT, as shells report it


@contextlib.contextmanager
def exit_even_if_stuck(on_stuck: Callable[[], None], grace: float = GRACE_SECONDS) -> Iterator:
    def stuck() -> None:
        print(f"caliban: still here {grace:g} s after Ctrl-C; stopping directly", file=sys.stderr)
        try:
            on_stuck()
        except BaseException as e:  # exiting is what matters now
            print(f"caliban: while stopping: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_CODE)

    def on_sigint(signum, frame) -> None:
        timer = threading.Timer(grace, stuck)
        timer.daemon = True  # a process that ends in time ends; this never holds it up
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: as usual
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)
