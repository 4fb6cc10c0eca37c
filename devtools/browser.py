"""Headless Chromium for tests: render a page (such as the Prefect UI) and read or photograph it.

    python -m devtools.browser install                  # ensure_chromium(); prints its path
    python -m devtools.browser text URL [--within main] # the rendered page's visible text
    python -m devtools.browser dom URL [--wait-ms N]    # the rendered DOM as HTML
    python -m devtools.browser screenshot URL PATH [--size 1400x1000]

    from devtools import browser
    dom = browser.dump_dom(url)                         # after the page's scripts ran
    text = browser.visible_text(dom, within="main")     # one block per line
    rows = browser.table_rows(dom)                      # [[cell, ...], ...] per <tr>
    dom = browser.dump_dom_until(url, ["caliban_root_2"])  # render again until it shows
    browser.screenshot(url, "page.png", size=(1400, 1000))

Debian's `chromium` is used; without it, on Debian as root, `ensure_chromium()` installs it
with apt-get (about 50 s once; it waits for a dpkg lock another apt-get holds).
$CALIBAN_CHROMIUM names another binary. Each call starts a fresh headless Chromium with a
throwaway profile, so calls share no cookies, cache or local storage (nor the UI version a
Prefect UI remembers in a cookie).

Rendering uses `--dump-dom` / `--screenshot` with `--virtual-time-budget`: virtual time stops
while a request is in flight, so a single-page app's fetches finish before the DOM is read.
Without a budget, `--dump-dom` on an app that keeps polling never returns. Measured on the
Prefect 3.8 UI (2 busy cores): budgets from 0.5 to 30 s all gave complete pages, in 3-10 s
of wall time each, about 1 s of it Chromium's start.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import html.parser
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from devtools import engine

PACKAGE = "chromium"
NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--no-proxy-server",  # the pages we render are on loopback
)
DEFAULT_WAIT_MS = 10_000
DEFAULT_SIZE = (1400, 1000)
PROCESS_TIMEOUT = 120.0


class BrowserError(RuntimeError):
    """Chromium is missing and cannot be installed, or it failed to render a page."""


def work_dir() -> Path:
    return Path(os.environ.get("CALIBAN_BROWSER_DIR", "/var/tmp/caliban-browser")).resolve()


def _log(msg: str) -> None:
    print(f"browser: {msg}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One install at a time, across processes (apt-get would fail on its own lock)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "install.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- install


def _find() -> str | None:
    override = os.environ.get("CALIBAN_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> str:
    """The path of a Chromium binary; installs Debian's `chromium` (as root on Debian) if
    none is found. $CALIBAN_CHROMIUM names a binary to use instead."""
    found = _find()
    if found:
        return found
    if os.environ.get("CALIBAN_CHROMIUM"):
        raise BrowserError(f"CALIBAN_CHROMIUM={os.environ['CALIBAN_CHROMIUM']} is not executable")
    if not engine.is_root_on_debian():
        raise BrowserError(
            "Chromium is not installed and installing it needs root on Debian: run "
            "`apt-get install chromium`, or set CALIBAN_CHROMIUM to a Chromium binary"
        )
    work = work_dir()
    with _locked(work):
        found = _find()  # another process may have installed it while we waited
        if found is None:
            engine.apt_install([PACKAGE], work, error=BrowserError)
            found = _find()
    if found is None:
        raise BrowserError(f"apt-get installed {PACKAGE} but no {' or '.join(NAMES)} is on PATH")
    return found


# --------------------------------------------------------------------------- rendering


def _quiet(stderr: str) -> str:
    """Chromium's stderr without the D-Bus noise every headless start prints."""
    lines = [
        ln for ln in stderr.splitlines() if "dbus" not in ln and "unexpected operator" not in ln
    ]
    return "\n".join(lines[-15:])


def _run(args: list[str], *, what: str, timeout: float = PROCESS_TIMEOUT) -> str:
    """Run headless Chromium with a fresh profile; return its stdout."""
    binary = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="caliban-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        # Its own process group: on a timeout every Chromium process goes, and only those.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium did not finish {what} within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BrowserError(f"chromium failed {what} (exit code {proc.returncode}):\n{_quiet(err)}")
    return out


def _page_args(url: str, wait_ms: int, size: tuple[int, int]) -> list[str]:
    if int(wait_ms) < 1:
        # Without a budget --dump-dom waits for a quiet page, which an SPA that polls never is.
        raise ValueError("wait_ms must be at least 1")
    width, height = size
    return [f"--window-size={width},{height}", f"--virtual-time-budget={int(wait_ms)}", url]


def dump_dom(
    url: str,
    *,
    wait_ms: int = DEFAULT_WAIT_MS,
    size: tuple[int, int] = DEFAULT_SIZE,
    screenshot: str | Path | None = None,
) -> str:
    """The page's DOM as HTML, read after `wait_ms` of the page's virtual time.

    Virtual time stands still while a request is in flight and skips ahead when the page
    only waits on timers, so an SPA's fetches complete and its polling timers fire within
    the budget: a 10 s budget costs a few seconds of wall time, not ten. `screenshot`: a
    PNG path to write from the same render.
    """
    args = _page_args(url, wait_ms, size)
    out = None
    if screenshot is not None:
        out = _prepare(screenshot)
        args.insert(-1, f"--screenshot={out}")
    dom = _run([*args[:-1], "--dump-dom", args[-1]], what=f"rendering {url}")
    if out is not None:
        _check_png(out, url)
    return dom


def screenshot(
    url: str,
    path: str | Path,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    wait_ms: int = DEFAULT_WAIT_MS,
) -> Path:
    """A PNG of the page's viewport (`size` = width, height) after `wait_ms` of virtual time."""
    out = _prepare(path)
    args = _page_args(url, wait_ms, size)
    _run([*args[:-1], f"--screenshot={out}", args[-1]], what=f"taking a screenshot of {url}")
    return _check_png(out, url)


def _prepare(path: str | Path) -> Path:
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    return out


def _check_png(out: Path, url: str) -> Path:
    if not out.exists() or out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError(f"chromium wrote no PNG of {url} to {out}")
    return out


def dump_dom_until(
    url: str,
    expect: Iterable[str],
    *,
    timeout: float = 90.0,
    wait_ms: int = DEFAULT_WAIT_MS,
    within: str | None = None,
    screenshot: str | Path | None = None,
    local_storage: dict[str, str] | None = None,
) -> str:
    """dump_dom() again (with twice the budget each time) until every string of `expect` is
    in the page's visible text, or `timeout` seconds passed; returns the last DOM either
    way, so that the caller's assertion can show what did render. With `local_storage`
    (e.g. devtools.cdp.prefect_login: a UI that asks for a password), one Chromium driven
    over the DevTools protocol sets it first, then watches the page."""
    expect = list(expect)
    if local_storage is not None:
        from devtools import cdp

        with cdp.Session() as page:
            page.open(url, local_storage)
            dom = page.dom_when(expect, timeout=timeout, within=within)
            if screenshot is not None:
                page.screenshot(_prepare(screenshot))
            return dom
    deadline = time.monotonic() + timeout
    budget = wait_ms
    while True:
        dom = dump_dom(url, wait_ms=budget, screenshot=screenshot)
        text = visible_text(dom, within=within)
        missing = [e for e in expect if e not in text]
        if not missing or time.monotonic() >= deadline:
            return dom
        _log(f"{url}: {', '.join(map(repr, missing))} not rendered yet; rendering again")
        budget = min(budget * 2, 60_000)
        time.sleep(1.0)


# --------------------------------------------------------------------------- reading


class _Reader(html.parser.HTMLParser):
    """Visible text of a DOM, optionally only inside the first <within> element, plus the
    cells of every table row."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "title"})
    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}
    )  # fmt: skip
    BLOCK = frozenset(
        {"p", "div", "li", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section",
         "header", "footer", "nav", "main", "article", "ul", "ol", "pre", "td", "th", "button",
         "aside", "label"}
    )  # fmt: skip

    def __init__(self, within: str | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.within = within
        self.inside = 0 if within else 1
        self.done = False
        self.parts: list[str] = []
        self.skipping = 0
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag in self.VOID:
            if tag == "br" and self.inside:
                self.parts.append("\n")
            return
        if self.within and tag == self.within and not self.done:
            self.inside += 1
        if tag in self.SKIP:
            self.skipping += 1
        elif not self.inside:
            return
        elif tag in self.BLOCK:
            self.parts.append("\n")
        if self.inside and not self.skipping:
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th") and self.rows:
                self.cell = []

    def handle_endtag(self, tag) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif self.inside and tag in self.BLOCK:
            self.parts.append("\n")
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        if self.within and tag == self.within and self.inside:
            self.inside -= 1
            self.done = self.inside == 0

    def handle_data(self, data) -> None:
        if self.inside and not self.skipping:
            self.parts.append(data)
            if self.cell is not None:
                self.cell.append(data)


def _read(dom: str, within: str | None) -> _Reader:
    reader = _Reader(within)
    reader.feed(dom)
    reader.close()
    return reader


def visible_text(dom: str, *, within: str | None = None) -> str:
    """The text a reader sees in rendered HTML: no scripts or styles, one block per line.
    `within`: only inside the first element with that tag (e.g. "main")."""
    parts = "".join(_read(dom, within).parts)
    lines = (" ".join(line.split()) for line in parts.splitlines())
    return "\n".join(line for line in lines if line)


def table_rows(dom: str, *, within: str | None = None) -> list[list[str]]:
    """The text of each cell (<td> or <th>) of each table row (<tr>), in document order."""
    return [row for row in _read(dom, within).rows if row]


class _Elements(html.parser.HTMLParser):
    def __init__(self, tag: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tag = tag
        self.depth = 0
        self.found: list[list[str]] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == self.tag:
            if self.depth == 0:
                self.found.append([])
            self.depth += 1

    def handle_endtag(self, tag) -> None:
        if tag == self.tag and self.depth:
            self.depth -= 1

    def handle_data(self, data) -> None:
        if self.depth:
            self.found[-1].append(data)


def element_texts(dom: str, tag: str) -> list[str]:
    """The text of each (outermost) element with this tag, e.g. every "h1" of a page."""
    parser = _Elements(tag)
    parser.feed(dom)
    parser.close()
    return [" ".join("".join(parts).split()) for parts in parser.found]


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.browser", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install Chromium if missing; print its path")
    for name in ("dom", "text"):
        one = sub.add_parser(name)
        one.add_argument("url")
        one.add_argument("--wait-ms", type=int, default=DEFAULT_WAIT_MS)
        if name == "text":
            one.add_argument("--within", help="only inside the first element with this tag")
    shot = sub.add_parser("screenshot")
    shot.add_argument("url")
    shot.add_argument("path")
    shot.add_argument("--size", default="1400x1000", help="WIDTHxHEIGHT")
    shot.add_argument("--wait-ms", type=int, default=DEFAULT_WAIT_MS)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(ensure_chromium())
        elif args.command == "dom":
            print(dump_dom(args.url, wait_ms=args.wait_ms))
        elif args.command == "text":
            dom = dump_dom(args.url, wait_ms=args.wait_ms)
            print(visible_text(dom, within=args.within))
        else:
            width, height = (int(v) for v in args.size.lower().split("x"))
            print(screenshot(args.url, args.path, size=(width, height), wait_ms=args.wait_ms))
    except BrowserError as err:
        print(f"browser: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
