"""Caliban 0.4.2, the original, in a scratch venv: the reference our output must equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

VERSION = "0.4.2"
ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("CALIBAN_REF_VENV", ROOT / ".cache" / f"caliban-{VERSION}"))

# Runs inside the reference venv: one JSON-encoded config text per stdin line, one JSON
# answer per stdout line. It calls Caliban's own loader, validator and expander.
_BATCH = r"""
import json, sys
import commentjson
import caliban.config.experiment as ce
for line in sys.stdin:
    text = json.loads(line)
    try:
        conf = ce.validate_experiment_config(commentjson.loads(text))
        expanded = ce.expand_experiment_config(conf)
        out = {"ok": True, "json": json.dumps(expanded),
               "flags": [" ".join(ce.experiment_to_args(m)) for m in expanded],
               "job_args": [ce.experiment_to_args(dict(sorted(m.items()))) for m in expanded]}
    except BaseException as e:
        out = {"ok": False, "error": type(e).__name__}
    print(json.dumps(out), flush=True)
"""


def bin_dir() -> Path:
    return VENV / "bin"


def ensure() -> Path:
    """Create the reference venv on first use; return its bin directory."""
    python = bin_dir() / "python"
    marker = VENV / ".caliban-installed"
    if not marker.exists():
        if not python.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"caliban=={VERSION}"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"installing caliban=={VERSION} failed:\n{done.stderr[-2000:]}")
        marker.write_text(VERSION)
    return bin_dir()


class Worker:
    """One long-lived Caliban process answering config after config (no start-up per config)."""

    def __init__(self) -> None:
        python = ensure() / "python"
        self._proc = subprocess.Popen(
            [str(python), "-c", _BATCH],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def expand(self, text: str) -> dict:
        self._proc.stdin.write(json.dumps(text) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the Caliban 0.4.2 reference process died")
        return json.loads(line)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


if __name__ == "__main__":
    print(ensure())
    sys.exit(0)
