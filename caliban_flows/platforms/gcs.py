"""Job output folders in Cloud Storage, as caliban reads them: metrics and `caliban pull`.

One paged list call covers a whole group (only its metrics files, by matchGlob), then the files
are fetched concurrently, so a sweep of 1,000 jobs costs a few list pages and one round of
parallel downloads rather than a call per job. Requests go to Google's endpoint, or to
$CALIBAN_STORAGE_ENDPOINT (a URL) when set; credentials are the key file given (a Vertex
placement's `credentials_file` or `credentials_block`: see `access`), else the application
default. Every failure is one CalibanError line naming the bucket and the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from caliban_flows.spec.errors import CalibanError
from caliban_flows.spec.outputs import (
    METRICS_FILE,
    METRICS_FILES,
    METRICS_SERIES,
    OutputPlace,
    metrics_from_json,
    metrics_from_jsonl,
)

ENDPOINT_ENV = "CALIBAN_STORAGE_ENDPOINT"
WORKERS = 32  # concurrent downloads; also the connection pool's size
RETRY_SECONDS = 8.0  # how long transient failures (5xx, 429, dropped connections) are retried
TIMEOUT = (10.0, 60.0)  # connect, read
_PARSE = {METRICS_SERIES: metrics_from_jsonl, METRICS_FILE: metrics_from_json}


def access(placement: Mapping[str, Any]) -> dict[str, Any]:
    """How a group's placement reaches its bucket: read_metrics/copy_folder keyword arguments."""
    return {
        "credentials_file": placement.get("credentials_file") or None,
        "credentials_block": placement.get("credentials_block") or None,
        "project": placement.get("project") or None,
    }


def read_metrics(
    place: OutputPlace,
    folders: list[str],
    *,
    credentials_file: str | None = None,
    credentials_block: str | None = None,
    project: str | None = None,
) -> dict[str, dict[str, Any]]:
    """folder -> its metrics (`metrics.jsonl` read first, then `metrics.json` over it). Only a
    folder with a metrics file is in it; one caught half-written reads as no metrics."""
    if not folders:
        return {}
    wanted = {
        place.object_prefix(folder) + name: (folder, name)
        for folder in folders
        for name in METRICS_FILES
    }
    prefix = _common_folder(place.object_prefix(folder) for folder in folders)
    bucket = _Bucket(place, credentials_file, credentials_block, project)
    with bucket.failures("read metrics from"):
        glob = f"{prefix}**metrics.json*"  # ** crosses /; other names are dropped below
        found = [name for name in bucket.names(prefix, glob) if name in wanted]
        with ThreadPoolExecutor(min(WORKERS, len(found) or 1), "caliban-gcs") as pool:
            texts = dict(zip(found, pool.map(bucket.read, found)))
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(found, key=lambda n: METRICS_FILES.index(wanted[n][1])):
        folder, kind = wanted[name]
        text = texts[name]
        if text is not None:  # else it went between the list call and the download
            out.setdefault(folder, {}).update(_PARSE[kind](text.decode(errors="replace")))
    return out


def copy_folder(
    place: OutputPlace,
    folder: str,
    dest: Path,
    *,
    credentials_file: str | None = None,
    credentials_block: str | None = None,
    project: str | None = None,
) -> int:
    """Download every object under a job's folder into `dest` (its layout kept); the number of
    files copied."""
    prefix = place.object_prefix(folder)
    bucket = _Bucket(place, credentials_file, credentials_block, project)
    with bucket.failures("copy"):
        jobs = []
        for name in bucket.names(prefix):
            relative = PurePosixPath(name[len(prefix) :])
            if name.endswith("/") or not relative.parts or ".." in relative.parts:
                continue  # a folder placeholder, or a name that would leave `dest`
            jobs.append((name, dest.joinpath(*relative.parts)))
        with ThreadPoolExecutor(min(WORKERS, len(jobs) or 1), "caliban-gcs") as pool:
            copied = list(pool.map(lambda job: bucket.save(*job), jobs))
    return sum(copied)


def _common_folder(prefixes: Iterator[str]) -> str:
    """The longest folder (ending in /, or "") that every prefix starts with."""
    common = os.path.commonprefix(list(prefixes))  # noqa: RUF071 - a prefix, not a path
    return common[: common.rfind("/") + 1]


class _Bucket:
    """One bucket, through google-cloud-storage, with caliban's retries and error lines."""

    def __init__(
        self, place: OutputPlace, key_file: str | None, block: str | None, project: str | None
    ):
        self.place = place
        self.endpoint = os.environ.get(ENDPOINT_ENV) or ""
        if self.endpoint and "://" not in self.endpoint:
            self.endpoint = f"https://{self.endpoint}"
        with self.failures("open"):
            self._bucket = self._open(key_file, block, project)

    def _open(self, key_file: str | None, block: str | None, project: str | None) -> Any:
        import importlib

        import requests.adapters
        from google.api_core.retry import Retry, if_transient_error
        from google.auth.transport.requests import AuthorizedSession

        from caliban_flows.platforms.gcp_credentials import for_rest, from_key_file

        credentials = None
        if key_file:  # --cloud_key
            credentials = from_key_file(key_file)
        elif block:  # a key kept in a Vertex settings block
            from caliban_flows.blocks.vertex import credentials_from_block

            credentials = credentials_from_block(block)
        # A key signs its own JWTs (no token endpoint); None: the application default.
        credentials = for_rest(credentials)
        storage = importlib.import_module("google.cloud.storage")  # untyped: Any to mypy
        session = AuthorizedSession(credentials)
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=WORKERS)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        options = {"api_endpoint": self.endpoint} if self.endpoint else None
        # project=None: reading needs none, and looking for one may wait on a metadata server.
        client = storage.Client(
            project=project, credentials=credentials, _http=session, client_options=options
        )
        self._retry = Retry(predicate=if_transient_error, timeout=RETRY_SECONDS)
        self._session = session
        base = client._connection.API_BASE_URL.rstrip("/")
        self._media_base = f"{base}/download/storage/v1/b/{self.place.bucket}/o/"
        return client.bucket(self.place.bucket)

    def names(self, prefix: str, glob: str | None = None) -> list[str]:
        blobs = self._bucket.client.list_blobs(
            self._bucket,
            prefix=prefix,
            match_glob=glob,
            fields="items(name),nextPageToken",
            retry=self._retry,
            timeout=TIMEOUT,
        )
        return [blob.name for blob in blobs]

    def read(self, name: str) -> bytes | None:
        """A small object's bytes; None if it went between the list call and now. One plain
        media GET: Blob.download_as_bytes costs about twice the CPU per object, which is what
        bounds reading a thousand small files."""
        from google.api_core import exceptions as api

        url = f"{self._media_base}{quote(name, safe='')}?alt=media"
        response = self._retry(self._session.get)(url, timeout=TIMEOUT)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise api.from_http_response(response)
        return response.content

    def save(self, name: str, path: Path) -> int:
        """Download to `path` (whole or not at all); 1 if copied, 0 if the object is gone."""
        from google.api_core.exceptions import NotFound

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.caliban-partial")
        try:
            self._bucket.blob(name).download_to_filename(
                str(partial), retry=self._retry, timeout=TIMEOUT
            )
        except NotFound:
            partial.unlink(missing_ok=True)
            return 0
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        return 1

    @contextlib.contextmanager
    def failures(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CalibanError:
            raise
        except Exception as err:
            where = f"gs://{self.place.bucket}"
            raise CalibanError(f"cannot {doing} {where}: {self._reason(err)}") from None

    def _reason(self, err: Exception) -> str:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        text = " ".join(str(err).split())[:300]
        if isinstance(err, api.NotFound) and "bucket" in text.lower():
            return f"the bucket does not exist (404) - {_message(err)}"
        if isinstance(err, api.Forbidden):
            return f"permission denied (403) - {_message(err)}"
        if isinstance(err, api.Unauthorized):
            return f"credentials refused (401) - {_message(err)}"
        if isinstance(err, api.GoogleAPICallError):
            return f"{err.code} - {_message(err)}"
        if isinstance(err, auth.DefaultCredentialsError):
            return (
                "no Google credentials: run `gcloud auth application-default login` or give a "
                "service-account key (--cloud_key)"
            )
        if isinstance(err, auth.RefreshError):
            return f"credentials refused - {text}"
        if isinstance(err, (api.RetryError, OSError)):
            cause = getattr(err, "cause", None) or err
            endpoint = self.endpoint or "https://storage.googleapis.com"
            why = f"{type(cause).__name__}, retried for {RETRY_SECONDS:g} s"
            return f"cannot reach {endpoint} ({why})"
        return f"{type(err).__name__}: {text}"


def _message(err: Any) -> str:
    """The service's own words, without the request line google-cloud-core puts first."""
    errors = getattr(err, "errors", None) or [{}]
    text = errors[0].get("message") if isinstance(errors[0], dict) else None
    text = text or str(getattr(err, "message", err)).split(": ", 1)[-1]
    return " ".join(text.split())[:300]
