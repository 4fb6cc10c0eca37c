"""The values of secret script args (`--api_key X`) in Prefect Secret blocks, encrypted at rest
by the server: kept by the process that plans a group, read back by whatever starts its jobs
(the first run, `caliban resubmit`, Retry in the UI, a --max_running round). What a group
records holds only their names (spec.secret_args).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import SecretStr

from caliban_flows.spec.errors import CalibanError
from caliban_flows.spec.secret_args import references


class SecretGone(CalibanError):
    """A job's secret arg has no block any more (deleted by hand): one line."""


def keep(values: Mapping[str, SecretStr]) -> None:
    """Save each value under its name (Prefect's Secret block; the same name, the same value)."""
    if not values:
        return
    from prefect.blocks.system import Secret

    for name, value in values.items():
        Secret(value=value).save(name, overwrite=True)


def values_for(jobs: Iterable[Mapping], http=None) -> dict[str, str]:
    """{name: value} for every secret the jobs' args refer to; {} when none does (no call)."""
    names = list(dict.fromkeys(name for job in jobs for name in references(job["args"])))
    if not names:
        return {}
    if http is None:
        from prefect.settings import PREFECT_API_URL

        from caliban_flows.state import prefect_api

        with prefect_api.client(PREFECT_API_URL.value()) as own:
            return _read(own, names)
    return _read(http, names)


def _read(http, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        got = http.get(
            f"/block_types/slug/secret/block_documents/name/{name}",
            params={"include_secrets": "true"},
        )
        if got.status_code == 404:
            raise SecretGone(
                f"the Prefect Secret block {name!r} that holds a secret script arg is gone: "
                "submit the group again with the value"
            )
        got.raise_for_status()
        out[name] = got.json()["data"]["value"]
    return out
