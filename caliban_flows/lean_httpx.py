"""httpx, imported without its command-line client.

httpx's package `__init__` imports `httpx._main`, and with it click, rich and pygments
(0.05-0.08 s here), whenever those are installed, as they are beside Prefect. caliban never runs
httpx's CLI, and httpx falls back to a stub when that import fails. An httpx that cannot do
without the module is imported again, the plain way.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules:
    sys.modules["httpx._main"] = None  # makes `from ._main import main` raise ImportError
    try:
        import httpx
    except ImportError:
        for name in [n for n in sys.modules if n == "httpx" or n.startswith("httpx.")]:
            del sys.modules[name]
        import httpx
    finally:
        if "httpx._main" in sys.modules and sys.modules["httpx._main"] is None:
            del sys.modules["httpx._main"]

import httpx

__all__ = ["httpx"]
