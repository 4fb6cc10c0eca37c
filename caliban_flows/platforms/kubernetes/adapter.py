"""Jobs as Kubernetes batch/v1 Jobs, through the official `kubernetes` client.

Any cluster in the user's kubeconfig (or in a prefect-kubernetes KubernetesClusterConfig
block's copy of one): its context and namespace come from the flags, else the kubeconfig.

Submission is concurrent (threads under asyncio, paced by a token bucket) and idempotent: a
Job's name is derived from its key and attempt, so a create that is retried after a lost
answer is refused with 409 AlreadyExists and the existing Job is read instead. The batch loop
is shared with Vertex AI (`platforms/submit.py`). Lists go by label selector, paged, and are
parsed as plain JSON: the client's model deserializer costs about a millisecond per Job, which
1,000 Jobs would turn into a second.

A Job replaces a pod the cluster took away (preempted, evicted, its node gone) by itself when
its podFailurePolicy says so (--max_restarts), counting it against backoffLimit. When some Job
counted a failed pod, the group's failed pods, in one more list call, tell which pods each Job
replaced and why (`RemoteJob.restarts`), and why the infrastructure ended a Job that failed
(`RemoteJob.infra`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from caliban_flows.platforms.base import JobRequest, JobState, Platform, RemoteJob
from caliban_flows.platforms.kubernetes import DEFAULT_MAX_QPS
from caliban_flows.platforms.kubernetes import client as kube_client
from caliban_flows.platforms.kubernetes.client import describe, retry_policy
from caliban_flows.platforms.submit import SubmitError as SubmitError  # importable from here too
from caliban_flows.platforms.submit import submit_paced
from caliban_flows.spec import k8s_job as kj
from caliban_flows.spec.k8s_outputs import with_outputs
from caliban_flows.spec.labels import value_label

PLACEHOLDER_IMAGE = "<built from this folder and pushed to the registry>"  # dry runs show it
MAX_IN_FLIGHT = 8  # concurrent creates; the token bucket sets the pace
PAGE_SIZE = 500
CALL_TIMEOUT = 30.0
_GKE_CONTEXT = re.compile(r"gke_(?P<project>[^_]+)_(?P<location>[^_]+)_(?P<cluster>.+)")


def gke_of(context: str | None) -> dict | None:
    """GKE's context names are gke_PROJECT_LOCATION_CLUSTER (what `gcloud container clusters
    get-credentials` writes)."""
    found = _GKE_CONTEXT.fullmatch(context or "")
    return found.groupdict() if found else None


def console_url(gke: dict | None, namespace: str, name: str) -> str | None:
    if not gke:
        return None
    return (
        f"https://console.cloud.google.com/kubernetes/job/{gke['location']}/{gke['cluster']}/"
        f"{namespace}/{name}?project={gke['project']}"
    )


def job_state(job: dict) -> tuple[JobState, str | None]:
    """Our state and the platform's word on a failure, from a Job's JSON."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return JobState.SUCCEEDED, None
        if condition.get("type") == "Failed":
            why = ": ".join(filter(None, (condition.get("reason"), condition.get("message"))))
            return JobState.FAILED, why or "failed"
    if meta.get("deletionTimestamp"):
        return JobState.STOPPED, "deleted"
    if status.get("active"):
        return JobState.RUNNING, None
    return JobState.SUBMITTED, None


class Kubernetes:
    """A namespace of a Kubernetes cluster as a platform."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        context: str | None = None,
        namespace: str | None = None,
        config_file: str | None = None,
        config_dict: dict | None = None,
        resources: kj.Resources | None = None,
    ) -> None:
        self.config_file = config_file
        self.config_dict = config_dict
        self.resources = resources
        self.context, default_namespace = self._context_and_namespace(context)
        self.namespace = namespace or default_namespace or "default"
        self.gke = gke_of(self.context)
        self._api = None

    @classmethod
    def from_placement(cls, placement: dict, config_dict: dict | None = None) -> Kubernetes:
        """From a group's recorded placement (plan/placement.py wrote it)."""
        kept = placement.get("resources")
        return cls(
            context=placement.get("context"),
            namespace=placement.get("namespace"),
            config_file=placement.get("config_file"),
            config_dict=config_dict,
            resources=kj.Resources(**kept) if kept else None,
        )

    def _context_and_namespace(self, context: str | None) -> tuple[str | None, str | None]:
        """The same resolution as --dry_run's (kubeconfig.choose), but a kubeconfig with no
        context to use is an error here: jobs must go somewhere."""
        from caliban_flows.platforms.kubernetes import kubeconfig as kc

        try:
            entries, current = kc.contexts(self.config_file, self.config_dict)
            chosen, namespace = kc.choose(entries, current, context, None)
        except kc.KubeconfigError as e:
            raise RuntimeError(str(e)) from None
        if not entries or chosen is None:
            where = self.config_file or "$KUBECONFIG or ~/.kube/config"
            raise RuntimeError(
                f"no usable kubeconfig: {where} names no current context; pass --context"
            )
        return chosen, namespace

    def api(self):
        if self._api is None:
            config = kube_client.config()
            if self.config_dict is not None:
                client = config.new_client_from_config_dict(self.config_dict, context=self.context)
            else:
                client = config.new_client_from_config(self.config_file, context=self.context)
            client.configuration.connection_pool_maxsize = MAX_IN_FLIGHT
            client.rest_client.pool_manager.connection_pool_kw["maxsize"] = MAX_IN_FLIGHT
            self._api = client
        return self._api

    def batch(self):
        return kube_client.batch_api(self.api())

    def core(self):
        return kube_client.core_api(self.api())

    # -- the platform protocol -------------------------------------------------------------

    def poll(self, xgroup: str) -> list[RemoteJob]:
        """Every Job of the group: one paged list call, and one list of the group's failed pods
        when a Job has some (it failed, or counted a failed pod)."""
        jobs = self._list_jobs(f"{kj.XGROUP_ID_LABEL}={kj.xgroup_id(xgroup)}")
        pods = self._failed_pods(xgroup) if any(_may_have_failed_pods(j) for j in jobs) else {}
        return [self._remote(job, pods) for job in jobs]

    def cancel(self, remote_ids: Sequence[str]) -> None:
        api_exception = kube_client.api_exception()

        for remote_id in remote_ids:
            namespace, name = remote_id.split("/", 1)
            delete = partial(
                self.batch().delete_namespaced_job,
                name,
                namespace,
                propagation_policy="Background",  # the pods, so the containers, go too
                _request_timeout=CALL_TIMEOUT,
                _preload_content=False,
            )
            try:
                self._retry(delete)
            except api_exception as e:
                if e.status != 404:  # already gone: nothing to stop
                    raise

    def logs(self, remote_id: str, *, follow: bool = False) -> Iterator[bytes]:
        namespace, name = remote_id.split("/", 1)
        pods = self._pods(namespace, f"job-name={name}")
        if not pods:
            yield f"no pod of job {name} in namespace {namespace} (not scheduled yet?)\n".encode()
            return
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        pod = pods[-1]["metadata"]["name"]
        response = self.core().read_namespaced_pod_log(
            pod, namespace, follow=follow, _preload_content=False
        )
        try:
            yield from response.stream(4096)
        finally:
            response.release_conn()

    def submit(self, request: JobRequest) -> RemoteJob:
        return asyncio.run(self.submit_all([request]))[0]

    # -- manifests ---------------------------------------------------------------------------

    def manifest(self, request: JobRequest) -> dict:
        if self.resources is None:
            raise ValueError("submitting needs resources (cpu, memory, accelerators ...)")
        return manifest_for(request, self.resources, self.namespace)

    def create_manifest(self, manifest: dict, *, dry_run: bool = False) -> dict:
        """A user's own Job, as given (`submit_file`); with `dry_run` the API server only
        validates it (dryRun=All)."""
        namespace = (manifest.get("metadata") or {}).get("namespace") or self.namespace
        extra = {"dry_run": "All"} if dry_run else {}
        create = partial(
            self.batch().create_namespaced_job,
            namespace,
            manifest,
            _preload_content=False,
            _request_timeout=CALL_TIMEOUT,
            **extra,
        )
        # A fixed name makes a retried create safe (409); generateName would make a second Job.
        named = bool((manifest.get("metadata") or {}).get("name"))
        return self._json(self._retry(create) if named else create())

    # -- batched submission ----------------------------------------------------------------

    async def submit_all(
        self,
        requests: Sequence[JobRequest],
        *,
        max_qps: float = DEFAULT_MAX_QPS,
        on_job: Callable[[RemoteJob, bool], None] = lambda job, new: None,
        budgets: object = None,  # a cluster has no per-minute quota: its own client-side pace
    ) -> list[RemoteJob]:
        """Create what the group lacks; every request's remote job, in order."""
        # Its own threads: asyncio's default pool has only cores + 4 (6 here).
        threads = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="k8s-create")
        try:
            return await submit_paced(
                requests,
                list_group=self._group_jobs,
                create=partial(self._create, threads),
                max_qps=max_qps,
                max_in_flight=MAX_IN_FLIGHT,
                on_job=on_job,
                describe=describe,
            )
        finally:
            threads.shutdown(wait=False)

    async def _group_jobs(self, limiter, xgroup: str) -> list[RemoteJob]:
        async with limiter:  # one token for the whole paged list
            return await asyncio.to_thread(self.poll, xgroup)

    async def _create(self, threads, limiter, request: JobRequest) -> RemoteJob:
        from tenacity import AsyncRetrying

        api_exception = kube_client.api_exception()

        body = self.manifest(request)
        name = body["metadata"]["name"]

        def create() -> dict:
            try:
                made = self.batch().create_namespaced_job(
                    self.namespace, body, _preload_content=False, _request_timeout=CALL_TIMEOUT
                )
                return self._json(made)
            except api_exception as e:
                if e.status != 409:
                    raise
            # Ours already: made by a create whose answer was lost, or by an earlier run.
            there = self._json(
                self.batch().read_namespaced_job(
                    name, self.namespace, _preload_content=False, _request_timeout=CALL_TIMEOUT
                )
            )
            labels = (there.get("metadata") or {}).get("labels") or {}
            mine = (labels.get(kj.JOB_KEY_LABEL), labels.get(kj.ATTEMPT_LABEL))
            if mine != (request.key, str(request.attempt)):
                raise RuntimeError(
                    f"a Job named {name} that caliban did not make for this job already exists in "
                    f"namespace {self.namespace}"
                )
            return there

        async for attempt in AsyncRetrying(**retry_policy()):
            with attempt:
                async with limiter:
                    job = await asyncio.get_running_loop().run_in_executor(threads, create)
        return self._remote(job, {})

    # -- reading -----------------------------------------------------------------------------

    def _list_jobs(self, selector: str) -> list[dict]:
        out: list[dict] = []
        token = None
        while True:
            listing = partial(
                self.batch().list_namespaced_job,
                self.namespace,
                label_selector=selector,
                limit=PAGE_SIZE,
                _continue=token,
                _preload_content=False,
                _request_timeout=CALL_TIMEOUT,
            )
            page = self._json(self._retry(listing))
            out.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out

    def _failed_pods(self, xgroup: str) -> dict[tuple[str, int], list[kj.FailedPod]]:
        """The failed pods of each job (key, attempt) of the group, oldest first."""
        pods = self._pods(
            self.namespace,
            f"{kj.XGROUP_ID_LABEL}={kj.xgroup_id(xgroup)}",
            fields="status.phase=Failed",
        )
        pods.sort(key=kj.pod_age)
        out: dict[tuple[str, int], list[kj.FailedPod]] = {}
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            if kj.JOB_KEY_LABEL in labels:
                key = (labels[kj.JOB_KEY_LABEL], int(labels.get(kj.ATTEMPT_LABEL, 0)))
                out.setdefault(key, []).append(kj.failed_pod(pod))
        return out

    def _pods(self, namespace: str, selector: str, fields: str | None = None) -> list[dict]:
        listing = partial(
            self.core().list_namespaced_pod,
            namespace,
            label_selector=selector,
            field_selector=fields,
            _preload_content=False,
            _request_timeout=CALL_TIMEOUT,
        )
        return self._json(self._retry(listing)).get("items") or []

    def _remote(
        self, job: dict, pods: Mapping[tuple[str, int], Sequence[kj.FailedPod]]
    ) -> RemoteJob:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        key = labels.get(kj.JOB_KEY_LABEL, "")
        attempt = int(labels.get(kj.ATTEMPT_LABEL, "0") or 0)
        state, detail = job_state(job)
        failed = list(pods.get((key, attempt), ()))
        # A Job that ended without success ended with its newest failed pod; every other failed
        # pod was replaced inside the Job (a running or successful Job has a newer pod).
        last = failed.pop() if failed and state in (JobState.FAILED, JobState.STOPPED) else None
        exit_code = 0 if state is JobState.SUCCEEDED else (last.exit_code if last else None)
        if state is JobState.FAILED and exit_code is not None:
            detail = f"exit code {exit_code}; {detail}"
        namespace = meta.get("namespace") or self.namespace
        return RemoteJob(
            key=key,
            attempt=attempt,
            remote_id=f"{namespace}/{meta.get('name')}",
            state=state,
            exit_code=exit_code,
            console_url=console_url(self.gke, namespace, meta.get("name", "")),
            detail=detail,
            infra=last.infra if last is not None and state is JobState.FAILED else None,
            restarts=tuple(pod.why for pod in failed),
        )

    @staticmethod
    def _json(response) -> dict:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    @staticmethod
    def _retry(call):
        from tenacity import Retrying

        return Retrying(**retry_policy())(call)


def manifest_for(request: JobRequest, resources: kj.Resources, namespace: str) -> dict:
    """The Job one request becomes (also what --dry_run prints). Its docker_image label names
    the image it runs, as on Vertex AI, unless that is a dry run's PLACEHOLDER_IMAGE."""
    shown = dict(request.labels)
    if "docker_image" in shown and request.image != PLACEHOLDER_IMAGE:
        shown["docker_image"] = value_label(request.image)
    labels = kj.job_labels(shown, xgroup=request.xgroup, key=request.key, attempt=request.attempt)
    manifest = kj.job_manifest(name=kj.job_name(request.name, request.key, request.attempt),
                               image=request.image, args=request.command_args(), labels=labels,
                               resources=resources, namespace=namespace)  # fmt: skip
    return with_outputs(manifest, request.output_place(), request.output_folder())


def _may_have_failed_pods(job: dict) -> bool:
    """caliban's podFailurePolicy counts every pod it replaces (Count, never Ignore)."""
    status = job.get("status") or {}
    return bool(status.get("failed")) or job_state(job)[0] is JobState.FAILED


# The registry entry's `open` hands Kubernetes out as a Platform: this line has mypy check the
# class against that protocol, so a missing or mistyped method fails `make lint`.
_CHECKED_AS_PLATFORM: type[Platform] = Kubernetes
