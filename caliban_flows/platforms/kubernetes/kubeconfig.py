"""A kubeconfig's contexts read with PyYAML: what `--dry_run` and flag checks need, without
importing the `kubernetes` client (0.4-0.9 s). Submission still loads the kubeconfig with the
client's own loader, which also handles credentials."""

from __future__ import annotations

import os
from pathlib import Path


class KubeconfigError(ValueError):
    """The kubeconfig or the context asked for is not usable: one line."""


def _files(config_file: str | None) -> list[Path]:
    if config_file:
        return [Path(config_file).expanduser()]
    listed = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]


def contexts(config_file: str | None = None, config_dict: dict | None = None):
    """(the contexts as kubeconfig lists them, the current context's name or None)."""
    import yaml

    if config_dict is not None:
        docs = [config_dict]
    else:
        docs = []
        for path in _files(config_file):
            if not path.is_file():
                if config_file:
                    raise KubeconfigError(f"kubeconfig {str(path)!r} not found")
                continue
            try:
                docs.append(yaml.safe_load(path.read_text()) or {})
            except (OSError, yaml.YAMLError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise KubeconfigError(
                    f"kubeconfig {str(path)!r} is not readable: {first}"
                ) from None
    found: dict[str, dict] = {}
    current = None
    for doc in docs:  # the first file to name a context (or the current one) wins
        for entry in doc.get("contexts") or []:
            found.setdefault(entry.get("name"), entry)
        current = current or doc.get("current-context") or None
    return list(found.values()), current


def choose(
    entries: list[dict], current: str | None, context: str | None, namespace: str | None
) -> tuple[str | None, str]:
    """The context and namespace a submission goes to, from what `contexts()` read: flags,
    else the kubeconfig's current context and its namespace, else `default`."""
    name = context or current
    chosen = next((c for c in entries if c.get("name") == name), None)
    if context and chosen is None:
        names = ", ".join(str(c.get("name")) for c in entries) or "none"
        raise KubeconfigError(f"kubeconfig has no context {context!r} (it has: {names})")
    default = ((chosen or {}).get("context") or {}).get("namespace")
    return name, namespace or default or "default"
