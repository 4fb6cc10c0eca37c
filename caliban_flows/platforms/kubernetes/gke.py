"""GKE cluster management: google-cloud-container's ClusterManager, and Compute Engine quotas.

Both go to Google unless $CALIBAN_GKE_ENDPOINT (host:port) or $CALIBAN_COMPUTE_ENDPOINT
(https://host:port) names another endpoint that speaks the API (a private one, an emulator);
either way over TLS, with the --cloud_key key or the user's application-default credentials.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.cloud.container_v1 import ClusterManagerClient

GKE_ENDPOINT_ENV = "CALIBAN_GKE_ENDPOINT"
COMPUTE_ENDPOINT_ENV = "CALIBAN_COMPUTE_ENDPOINT"
COMPUTE_API = "https://compute.googleapis.com"
CALL_TIMEOUT = 60.0


NO_CREDENTIALS = (
    "no Google credentials: run `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS (or pass --cloud_key) to a service-account key file"
)


class GkeError(RuntimeError):
    """A GKE or Compute Engine call failed: one line."""


def gke_error(error: BaseException, what: str = "") -> GkeError:
    """One line for a failed call; missing application-default credentials say what to do."""
    from google.auth.exceptions import DefaultCredentialsError

    if isinstance(error, DefaultCredentialsError):
        return GkeError(NO_CREDENTIALS)
    return GkeError(f"{what}{_first_line(error)}")


class Gke:
    """One project's GKE clusters."""

    def __init__(self, project: str, *, credentials=None) -> None:
        self.project = project
        self.credentials = credentials
        self.endpoint = os.environ.get(GKE_ENDPOINT_ENV) or None
        self.compute = os.environ.get(COMPUTE_ENDPOINT_ENV) or None
        self._client: ClusterManagerClient | None = None

    def client(self):
        if self._client is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import container_v1

            # One path for Google and anything else that speaks the API (a private endpoint,
            # an emulator): TLS with the system's CA roots or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.
            try:
                self._client = container_v1.ClusterManagerClient(
                    credentials=self.credentials,
                    client_options={"api_endpoint": self.endpoint} if self.endpoint else None,
                )
            except DefaultCredentialsError as e:  # the application default is looked up here
                raise gke_error(e) from None
        return self._client

    def _path(self, location: str, name: str | None = None) -> str:
        path = f"projects/{self.project}/locations/{location}"
        return f"{path}/clusters/{name}" if name else path

    def clusters(self, location: str = "-") -> list:
        """container_v1.Cluster messages; location "-" means every location."""
        return list(self._call(self.client().list_clusters, parent=self._path(location)).clusters)

    def cluster(self, location: str, name: str):
        return self._call(self.client().get_cluster, name=self._path(location, name))

    def node_pools(self, location: str, name: str) -> list:
        """The cluster's node pools (container_v1.NodePool), autoprovisioned ones included."""
        listed = self._call(self.client().list_node_pools, parent=self._path(location, name))
        return list(listed.node_pools)

    def find(self, name: str | None, location: str | None = None):
        """The named cluster (or the project's only one), wherever it is unless told."""
        found = [c for c in self.clusters(location or "-") if name is None or c.name == name]
        if not found:
            where = f" in {location}" if location else ""
            what = f"no cluster named {name!r}" if name else "no cluster"
            raise GkeError(f"{what} in project {self.project!r}{where}")
        if len(found) > 1:
            names = ", ".join(f"{c.name} ({c.location})" for c in found)
            raise GkeError(f"several clusters match, name one with --cluster_name: {names}")
        return found[0]

    def create(self, request: dict):
        from google.cloud import container_v1

        return self._call(
            self.client().create_cluster, request=container_v1.CreateClusterRequest(request)
        )

    def delete(self, location: str, name: str):
        return self._call(self.client().delete_cluster, name=self._path(location, name))

    def wait(
        self,
        location: str,
        operation,
        *,
        timeout: float = 1800.0,
        on_tick: Callable[[float], None] = lambda elapsed: None,
        interval: float = 2.0,
    ):
        """Poll the operation until DONE; raise GkeError when it ends in error."""
        from google.cloud import container_v1

        start = time.monotonic()
        name = f"{self._path(location)}/operations/{operation.name}"
        while operation.status != container_v1.Operation.Status.DONE:
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                raise GkeError(f"operation {operation.name} not done after {timeout:g} s")
            on_tick(elapsed)
            time.sleep(min(interval, max(0.05, timeout - elapsed)))
            operation = self._call(self.client().get_operation, name=name)
        if operation.error and operation.error.message:
            raise GkeError(f"operation {operation.name} failed: {operation.error.message}")
        return operation

    def region(self, region: str) -> dict:
        """Compute Engine's regions.get: {"quotas": [{metric, limit, usage}], "zones": [...]}."""
        url = f"{self.compute or COMPUTE_API}/compute/v1/projects/{self.project}/regions/{region}"
        try:
            from google.auth.transport.requests import AuthorizedSession

            from caliban_flows.platforms.gcp_credentials import for_rest

            answer = AuthorizedSession(for_rest(self.credentials)).get(url, timeout=CALL_TIMEOUT)
            status, body = answer.status_code, answer.json()
        except Exception as e:
            raise gke_error(e, f"cannot read the quotas of {region}: ") from None
        if status != 200:
            message = (body.get("error") or {}).get("message", status)
            raise GkeError(f"cannot read the quotas of {region}: {message}")
        return body

    def quotas(self, region: str) -> tuple[dict[str, float], list[str]]:
        """{metric: limit} and the zone names of a region."""
        body = self.region(region)
        quotas = {q["metric"]: q.get("limit", 0) for q in body.get("quotas") or []}
        zones = [z.rsplit("/", 1)[-1] for z in body.get("zones") or []]
        return quotas, zones

    @staticmethod
    def _call(method, **kwargs):
        from google.api_core import exceptions as gexc

        try:
            return method(**kwargs, timeout=CALL_TIMEOUT)
        except gexc.GoogleAPICallError as e:
            raise GkeError(_first_line(e)) from None
        except Exception as e:  # no credentials, unreachable endpoint ...
            raise gke_error(e) from None


def limits_of(cluster) -> dict[str, int]:
    """The cluster's node-autoprovisioning maxima: resource type -> maximum."""
    autoscaling = cluster.autoscaling
    if not autoscaling or not autoscaling.enable_node_autoprovisioning:
        return {}
    return {r.resource_type: int(r.maximum) for r in autoscaling.resource_limits}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
