"""Headless Chromium driven over the DevTools protocol: pages that need local storage first.

`--dump-dom` (devtools.browser) cannot log in. A Prefect server with an auth string makes its
UI ask for that string, which the UI then keeps in the page's local storage
(`prefect-password`, base64). Here one Chromium, with a throwaway profile, opens the origin,
sets the storage, then renders the page and reads it:

    with Session() as page:
        page.open(url, local_storage={"prefect-password": b64})
        dom = page.dom_when(["Retry"], timeout=90)

Uses the `websockets` package (a Prefect dependency) for the protocol's socket.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from devtools.browser import DEFAULT_SIZE, FLAGS, BrowserError, ensure_chromium, visible_text

START_TIMEOUT = 60.0


class Session:
    """One headless Chromium and one page in it, closed on exit."""

    def __init__(self, size: tuple[int, int] = DEFAULT_SIZE) -> None:
        self.size = size
        self._next_id = 0

    def __enter__(self) -> Session:
        from websockets.sync.client import connect

        self._profile = tempfile.TemporaryDirectory(prefix="caliban-cdp-")
        width, height = self.size
        argv = [ensure_chromium(), *FLAGS, f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "--remote-debugging-port=0",
                "about:blank"]  # fmt: skip
        quiet = subprocess.DEVNULL
        self._proc = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet,
                                      start_new_session=True)  # fmt: skip
        try:
            port, path = self._endpoint(Path(self._profile.name) / "DevToolsActivePort")
            self._ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = {"targetId": target, "flatten": True}
            self._session = self._call("Target.attachToTarget", attached)["sessionId"]
            self._call("Page.enable", session=True)
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()
        self._kill()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._profile.cleanup()

    def _endpoint(self, active_port: Path) -> tuple[str, str]:
        """Chromium writes its port and browser path to the profile once it listens."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with code {self._proc.returncode}")
            with contextlib.suppress(FileNotFoundError):
                lines = active_port.read_text().split()
                if len(lines) == 2:
                    return lines[0], lines[1]
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port within {START_TIMEOUT:g} s")

    def _call(self, method: str, params: dict | None = None, *, session: bool = False) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        while True:  # events arrive in between; the answer carries our id
            answer = json.loads(self._ws.recv(timeout=START_TIMEOUT))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                return answer.get("result", {})

    def evaluate(self, expression: str):
        asked = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self._call("Runtime.evaluate", asked, session=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, local_storage: dict[str, str] | None = None) -> None:
        """Go to `url`, with `local_storage` set for its origin before its scripts run."""
        if local_storage:
            parts = urlsplit(url)
            self._call("Page.navigate", {"url": f"{parts.scheme}://{parts.netloc}/"}, session=True)
            self._wait_for("document.readyState === 'complete'")
            for key, value in local_storage.items():
                self.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})")
        self._call("Page.navigate", {"url": url}, session=True)

    def _wait_for(self, condition: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            if time.monotonic() >= deadline:
                raise BrowserError(f"the page never met {condition!r}")
            time.sleep(0.1)

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML") or ""

    def dom_when(self, expect: Iterable[str], *, timeout: float, within: str | None = None) -> str:
        """The DOM once every string of `expect` is in the visible text, or when `timeout`
        seconds passed (the caller's assertion then shows what did render)."""
        expect = list(expect)
        deadline = time.monotonic() + timeout
        shown_before = False
        while True:
            dom = self.dom()
            text = visible_text(dom, within=within)
            shown = all(e in text for e in expect)
            # Twice in a row: not a frame the app is about to replace.
            if (shown and shown_before) or time.monotonic() >= deadline:
                return dom
            shown_before = shown
            time.sleep(0.5)

    def screenshot(self, path: str | Path) -> Path:
        data = self._call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out


def prefect_login(auth_string: str) -> dict[str, str]:
    """The local storage with which the Prefect UI is logged in (what its login form keeps)."""
    return {"prefect-password": base64.b64encode(auth_string.encode()).decode()}
