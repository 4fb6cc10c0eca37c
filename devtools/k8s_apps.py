"""apps/v1 DaemonSets for the Kubernetes emulator (devtools.k8s_emulator mixes this in).

Created, read, listed and deleted as the API server does it, with its checks: the selector
is required and must match the pod template's labels, the template needs containers with a
name and an image, `restartPolicy` may only be Always. The emulator has no nodes that match
a DaemonSet's affinity, so its status stays at zero scheduled pods (as on a GKE cluster
with no GPU node yet).
"""

from __future__ import annotations

from typing import Any

APPS = "apps/v1"
_NS = r"/namespaces/(?P<ns>[^/]+)"
UPDATE_STRATEGIES = ("RollingUpdate", "OnDelete")
ROUTES = [
    ("GET", r"/apis/apps", "get", "discovery", "_get_apps_group"),
    ("GET", r"/apis/apps/v1", "get", "discovery", "_get_apps_resources"),
    ("GET", r"/apis/apps/v1/daemonsets", "list", "daemonsets", "_list_daemonsets"),
    ("GET", rf"/apis/apps/v1{_NS}/daemonsets", "list", "daemonsets", "_list_daemonsets"),
    ("POST", rf"/apis/apps/v1{_NS}/daemonsets", "create", "daemonsets", "_create_daemonset"),
    (
        "GET",
        rf"/apis/apps/v1{_NS}/daemonsets/(?P<name>[^/]+)",
        "get",
        "daemonsets",
        "_get_daemonset",
    ),
    (
        "DELETE",
        rf"/apis/apps/v1{_NS}/daemonsets/(?P<name>[^/]+)",
        "delete",
        "daemonsets",
        "_delete_daemonset",
    ),
]
APPS_GROUP = {
    "name": "apps",
    "versions": [{"groupVersion": APPS, "version": "v1"}],
    "preferredVersion": {"groupVersion": APPS, "version": "v1"},
}


def _selector_matches(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (
            op == "NotIn" and present and labels[key] in values
        ):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def validate_daemonset(obj: dict, name: str) -> list:
    """The API server's checks of a DaemonSet that caliban and Google's manifests meet."""
    field = k8s._FieldError
    meta = k8s._as_dict(obj.get("metadata"), "metadata")
    errors = []
    if not name:
        errors.append(field.required("metadata.name", "name or generateName is required"))
    else:
        errors += [field.invalid("metadata.name", name, why) for why in k8s.name_errors(name)]
    errors += k8s._labels_errors(k8s._as_dict(meta.get("labels"), "metadata.labels"),
                                 "metadata.labels")  # fmt: skip
    spec = k8s._as_dict(obj.get("spec"), "spec")
    selector = k8s._as_dict(spec.get("selector"), "spec.selector")
    template = k8s._as_dict(spec.get("template"), "spec.template")
    labels = k8s._as_dict(
        k8s._as_dict(template.get("metadata"), "spec.template.metadata").get("labels"),
        "spec.template.metadata.labels",
    )
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        errors.append(field.required("spec.selector"))
    elif not _selector_matches(selector, labels):
        errors.append(field.invalid("spec.template.metadata.labels", labels,
                                    "`selector` does not match template `labels`"))  # fmt: skip
    pod = k8s._as_dict(template.get("spec"), "spec.template.spec")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        errors.append(field.required("spec.template.spec.containers"))
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(pod.get(kind) or []):
            path = f"spec.template.spec.{kind}[{i}]"
            for key in ("name", "image"):
                if not isinstance(container, dict) or not container.get(key):
                    errors.append(field.required(f"{path}.{key}"))
    if pod.get("restartPolicy", "Always") != "Always":
        errors.append(field(
            "spec.template.spec.restartPolicy", "FieldValueNotSupported",
            f'Unsupported value: "{pod["restartPolicy"]}": supported values: "Always"',
        ))  # fmt: skip
    strategy = k8s._as_dict(spec.get("updateStrategy"), "spec.updateStrategy").get("type")
    if strategy is not None and strategy not in UPDATE_STRATEGIES:
        errors.append(field.invalid("spec.updateStrategy.type", strategy,
                                    "must be RollingUpdate or OnDelete"))  # fmt: skip
    return errors


class DaemonSets:
    """The K8sEmulator's apps/v1 part: its store and handlers, under the emulator's lock."""

    _lock: Any
    _rv: int
    _daemonsets: dict
    _daemonset_keys: list

    def _get_apps_group(self, request) -> k8s._Reply:
        return k8s._json_reply(200, {"kind": "APIGroup", "apiVersion": "v1", **APPS_GROUP})

    def _get_apps_resources(self, request) -> k8s._Reply:
        verbs = ["create", "delete", "get", "list"]
        return k8s._json_reply(200, k8s._resource_list(APPS, [("daemonsets", "daemonset",
                                                               "DaemonSet", verbs)]))  # fmt: skip

    def _create_daemonset(self, request) -> k8s._Reply:
        ns = request.params["ns"]
        obj = request.json()
        if not isinstance(obj, dict):
            raise k8s._bad_request("the request body must be a DaemonSet object")
        if obj.get("kind", "DaemonSet") != "DaemonSet" or obj.get("apiVersion", APPS) != APPS:
            raise k8s._bad_request(
                f"expected apps/v1 DaemonSet, got {obj.get('apiVersion')} {obj.get('kind')}"
            )
        meta = k8s._as_dict(obj.get("metadata"), "metadata")
        if meta.get("namespace") not in (None, "", ns):
            raise k8s._bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        name = meta.get("name") or ""
        errors = validate_daemonset(obj, name)
        if errors:
            raise k8s._invalid("DaemonSet", "apps", name, errors)
        with self._lock:
            key = f"{ns}/{name}"
            if key in self._daemonsets:
                raise k8s._already_exists("daemonsets", "apps", name)
            self._rv += 1
            body = {
                **obj,
                "apiVersion": APPS,
                "kind": "DaemonSet",
                "metadata": {
                    **meta,
                    "namespace": ns,
                    "uid": self._uid(),  # type: ignore[attr-defined]
                    "resourceVersion": str(self._rv),
                    "generation": 1,
                    "creationTimestamp": k8s._now(),
                },
                "status": {
                    "currentNumberScheduled": 0,
                    "desiredNumberScheduled": 0,
                    "numberMisscheduled": 0,
                    "numberReady": 0,
                },
            }
            if k8s._dry_run(request.query):
                return k8s._json_reply(201, body)
            stored = k8s._Obj(key, body)
            self._insert(self._daemonsets, self._daemonset_keys, stored)  # type: ignore[attr-defined]
        return k8s._Reply(201, stored.encoded().encode())

    def _daemonset(self, ns: str, name: str) -> k8s._Obj:
        found = self._daemonsets.get(f"{ns}/{name}")
        if found is None:
            raise k8s._not_found("daemonsets", "apps", name)
        return found

    def _get_daemonset(self, request) -> k8s._Reply:
        with self._lock:
            found = self._daemonset(request.params["ns"], request.params["name"])
        return k8s._Reply(200, found.encoded().encode())

    def _list_daemonsets(self, request) -> k8s._Reply:
        fields = {name: k8s._meta_field(name.split(".")[1])
                  for name in ("metadata.name", "metadata.namespace")}  # fmt: skip
        return self._list(request, self._daemonsets, self._daemonset_keys,  # type: ignore[attr-defined]
                          fields, "DaemonSetList", APPS)  # fmt: skip

    def _delete_daemonset(self, request) -> k8s._Reply:
        with self._lock:
            found = self._daemonset(request.params["ns"], request.params["name"])
            if not k8s._dry_run(request.query):
                self._remove(self._daemonsets, self._daemonset_keys, found)  # type: ignore[attr-defined]
        return k8s._json_reply(200, found.body)

    def daemonsets(self) -> list[dict]:
        """The stored DaemonSets (copies), in namespace/name order."""
        import json

        with self._lock:
            return [json.loads(self._daemonsets[k].encoded()) for k in self._daemonset_keys]


def sample_daemonset(name: str = "nvidia-driver-installer") -> dict:
    """A DaemonSet shaped like Google's NVIDIA driver installer, for tests (caliban fetches
    Google's own): kube-system, an init container, and a pause container to stay."""
    labels = {"k8s-app": name}
    installer = {"name": "installer", "image": "cos-nvidia-installer:fixed"}
    return {
        "apiVersion": APPS,
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [installer],
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }


# Last: k8s_emulator imports this module part-way through its own import (its routes and its
# K8sEmulator class need what is above), and the handlers use its helpers only when called.
from devtools import k8s_emulator as k8s  # noqa: E402
