"""What `caliban cluster pod ls` and `job ls` show: every Job or Pod of a namespace, or of all
namespaces as Caliban listed them, read as plain JSON pages (adapter.py says why)."""

from __future__ import annotations

import json
from functools import partial

from caliban_flows.platforms.kubernetes.adapter import CALL_TIMEOUT, PAGE_SIZE, Kubernetes

SYSTEM_NAMESPACE = "kube-system"  # the cluster's own pods, which Caliban's pod ls left out


def _pages(call) -> list[dict]:
    out: list[dict] = []
    token = None
    while True:
        answer = Kubernetes._retry(
            partial(
                call,
                limit=PAGE_SIZE,
                _continue=token,
                _preload_content=False,
                _request_timeout=CALL_TIMEOUT,
            )
        )
        try:
            page = json.loads(answer.data)
        finally:
            answer.release_conn()
        out.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return out


def jobs(platform: Kubernetes, namespace: str | None) -> list[dict]:
    """The Jobs of `namespace`, or of every namespace when None."""
    batch = platform.batch()
    if namespace:
        return _pages(partial(batch.list_namespaced_job, namespace))
    return _pages(batch.list_job_for_all_namespaces)


def pods(platform: Kubernetes, namespace: str | None) -> list[dict]:
    """The Pods of `namespace`; of every namespace but kube-system when None."""
    core = platform.core()
    if namespace:
        return _pages(partial(core.list_namespaced_pod, namespace))
    found = _pages(core.list_pod_for_all_namespaces)
    return [p for p in found if (p.get("metadata") or {}).get("namespace") != SYSTEM_NAMESPACE]
