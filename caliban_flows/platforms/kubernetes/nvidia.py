"""The NVIDIA driver installer DaemonSet that GPU nodes of a GKE cluster need, applied after
`caliban cluster create` as Caliban did: on each node with a GPU (and no driver GKE installs
itself) it installs the driver before any job's pod runs there.

Fetched when applied, from Google's URL for Container-Optimized OS nodes (GKE's default
image), as Caliban did, rather than embedded: Google moves it with GKE releases (its installer
images are pinned by digest), and a copy kept here would go stale and break GPU nodes
silently. Where that URL is out of reach (offline, air-gapped), $CALIBAN_NVIDIA_DRIVER_DAEMONSET
names another URL or a local file with the same manifest.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

DAEMONSET_URL = (
    "https://raw.githubusercontent.com/GoogleCloudPlatform/container-engine-accelerators/"
    "master/nvidia-driver-installer/cos/daemonset-preloaded.yaml"
)
DAEMONSET_ENV = "CALIBAN_NVIDIA_DRIVER_DAEMONSET"
FETCH_TIMEOUT = 30.0


class DriverError(RuntimeError):
    """The DaemonSet was not applied: one line."""


def source() -> str:
    return os.environ.get(DAEMONSET_ENV) or DAEMONSET_URL


def manifest(where: str | None = None) -> dict:
    """The DaemonSet manifest at a URL or in a file, checked to be one."""
    import yaml

    where = where or source()
    try:
        if where.startswith(("https://", "http://")):
            import urllib.request

            with urllib.request.urlopen(where, timeout=FETCH_TIMEOUT) as answer:
                text = answer.read().decode()
        else:
            text = Path(where).expanduser().read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except Exception as e:  # unreachable, not found, not YAML
        raise DriverError(f"cannot read {where}: {_first_line(e)}") from None
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "DaemonSet":
        raise DriverError(f"{where} does not hold one DaemonSet")
    return docs[0]


def apply(cluster, credentials=None, where: str | None = None) -> str:
    """Create the DaemonSet in a GKE cluster (a container_v1.Cluster), reached at its endpoint
    with Google credentials as GKE's control plane accepts them; "NAMESPACE/NAME". One
    already there (of that name) is left as it is."""
    from caliban_flows.platforms.kubernetes import client as kube_client

    body = manifest(where)
    namespace = (body.get("metadata") or {}).get("namespace") or "default"
    name = (body.get("metadata") or {}).get("name", "")
    with tempfile.TemporaryDirectory(prefix="caliban-gke-") as scratch:
        ca_file = Path(scratch) / "ca.pem"
        ca_file.write_bytes(base64.b64decode(cluster.master_auth.cluster_ca_certificate))
        api = kube_client.token_client(
            f"https://{cluster.endpoint}", str(ca_file), _google_token(credentials)
        )
        apps = kube_client.apps_api(api)
        try:
            made = apps.create_namespaced_daemon_set(  # type: ignore[attr-defined]
                namespace, body, _preload_content=False, _request_timeout=FETCH_TIMEOUT
            )
            made.release_conn()
        except kube_client.api_exception() as e:
            if e.status != 409:  # AlreadyExists: applied before
                raise DriverError(kube_client.describe(e)) from None
        except Exception as e:  # unreachable control plane, TLS ...
            raise DriverError(_first_line(e)) from None
        finally:
            api.close()  # type: ignore[attr-defined]
    return f"{namespace}/{name}"


def _google_token(credentials) -> str:
    """A bearer token of `credentials` (else the application default's)."""
    from google.auth.transport.requests import Request

    from caliban_flows.platforms.gcp_credentials import for_rest

    try:
        signed = for_rest(credentials)
        signed.refresh(Request())
    except Exception as e:
        from caliban_flows.platforms.kubernetes.gke import gke_error

        raise DriverError(str(gke_error(e, "no token for the cluster: "))) from None
    return signed.token


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
