"""The embedded server's runner (`python -m caliban_flows.flows.runner --port P`).

It serves the group deployment, so that Retry in the Prefect UI on a group's run reruns its
failed and stopped jobs (flows.group_runs) with nobody at a terminal. The supervisor starts
it once the server is healthy and stops it with the server. With your own server,
`caliban serve` is this runner (and the reconcile service).
"""

from __future__ import annotations

import os

from caliban_flows.server.health import HOST


def serve_groups(port: int) -> int:
    os.environ["PREFECT_API_URL"] = f"http://{HOST}:{port}/api"
    from prefect import serve

    from caliban_flows.flows.group_runs import group_deployment

    # Not paused on the way out: the next server's runner serves the same deployment.
    # Polled every 2 s, not 10: a sweep queued for the background submitter starts soon.
    serve(group_deployment(), pause_on_shutdown=False, print_starting_message=False,
          query_seconds=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m caliban_flows.flows.runner")
    parser.add_argument("--port", type=int, required=True)
    raise SystemExit(serve_groups(parser.parse_args().port))
