"""One holder at a time: a one-slot Prefect concurrency limit held by a lease that is renewed
while the work goes on, so a long round never loses it and a crashed holder frees it when the
lease lapses (Prefect's shortest lease is 60 s).

Used for a group's submission (two `caliban cloud` of one group never submit at once) and for
a --max_running pool's round. The limits show on the UI's Concurrency page.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from caliban_flows.state import prefect_api

LEASE_SECONDS = 60.0  # Prefect's shortest lease
RENEW_EVERY = LEASE_SECONDS / 4


class LeaseBusy(RuntimeError):
    """Another holder kept the lease for longer than we would wait: one line."""


def _ensure_lock(http, name: str) -> None:
    # Looked up first: the server logs a traceback for each create that finds it there.
    if http.get(f"/v2/concurrency_limits/{name}").status_code == 200:
        return
    made = http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1})
    if made.status_code != 409:  # 409: made meanwhile by another holder
        made.raise_for_status()


@contextlib.contextmanager
def held(
    http,
    name: str,
    *,
    wait: float,
    on_wait: Callable[[], None] | None = None,
    busy: Callable[[], Exception] | None = None,
) -> Iterator[None]:
    """Hold the one-slot limit `name` (created if missing) for the block's duration; wait up
    to `wait` seconds for it (calling `on_wait` once, when it is taken), else raise `busy()`
    (LeaseBusy by default)."""
    _ensure_lock(http, name)
    body = {"names": [name], "slots": 1, "lease_duration": LEASE_SECONDS}
    deadline = time.monotonic() + wait
    told = False
    while True:
        got = http.post("/v2/concurrency_limits/increment-with-lease", json=body)
        if got.status_code != 423:
            got.raise_for_status()
            break
        if time.monotonic() > deadline:
            raise busy() if busy else LeaseBusy(f"{name!r} stayed taken for {wait:g} s")
        if not told and on_wait is not None:
            on_wait()
            told = True
        # Prefect says when to come back; never longer than a second.
        time.sleep(min(1.0, float(got.headers.get("Retry-After", "0.2") or 0.2)))
    lease = got.json()["lease_id"]
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(str(http.base_url), lease, stop), daemon=True, name=f"lease {name}"
    )
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        http.post("/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease})


def _renew(url: str, lease: str, stop: threading.Event) -> None:
    """Keep the lease alive until `stop`; a failed renewal is tried again next time (the lease
    has four renewal periods in it)."""
    with prefect_api.client(url.rstrip("/")) as http:
        while not stop.wait(RENEW_EVERY):
            with contextlib.suppress(Exception):
                http.post(
                    f"/v2/concurrency_limits/leases/{lease}/renew",
                    json={"lease_duration": LEASE_SECONDS},
                )
