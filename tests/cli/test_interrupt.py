"""Ctrl-C ends the command even when something (Prefect, once in CI) will not let go."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

CHILD = """
import sys, threading
from pathlib import Path
from caliban_flows.flows.interrupt import exit_even_if_stuck

marker = Path(sys.argv[1])
hang = sys.argv[2] == "hang"
said = threading.Event()  # on a busy machine the grace may end before the main thread prints


def on_stuck():
    said.wait(60)
    marker.write_text("stopped")


with exit_even_if_stuck(on_stuck, grace=1.0):
    if hang:  # what a wedged API call looks like: a thread that never ends, joined at exit
        threading.Thread(target=threading.Event().wait).start()
    try:  # "ready" inside: on a busy machine the Ctrl-C can come right after it is printed
        print("ready", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        said.set()
sys.exit(3)
"""


def interrupt(tmp_path, mode: str) -> tuple[int, str, float, bool, str]:
    marker = tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "ready\n"
    start = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    return child.returncode, out, time.monotonic() - start, marker.exists(), err


def test_a_process_that_ends_in_time_ends_as_it_would(tmp_path):
    code, out, _, stopped, err = interrupt(tmp_path, "ends")
    assert (code, out, stopped, err) == (3, "interrupted\n", False, "")


def test_a_process_stuck_after_ctrl_c_is_stopped_and_exits_130(tmp_path):
    code, out, took, stopped, err = interrupt(tmp_path, "hang")
    assert (code, out, stopped) == (130, "interrupted\n", True)
    assert err == "caliban: still here 1 s after Ctrl-C; stopping directly\n"
    assert took >= 1.0  # the grace was given first
