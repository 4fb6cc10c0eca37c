"""A Cloud Storage JSON API emulator on loopback that serves a host folder as buckets.

`root/BUCKET/<object name>`: every bucket is a folder and every object a plain file, so a folder
a container wrote into (Vertex's /gcs mount, the GKE Cloud Storage FUSE volume) is served as it
is. Like Google it speaks TLS only (devtools.test_pki's CA) and refuses a request without a valid
credential of a service-account key it trusts, in either form google-auth sends one:

- an OAuth access token from the key's `token_uri`: what `google.cloud.storage.Client` does with
  a key file. The keys `new_key()` writes name this emulator's `/token` as their token_uri, and
  it answers the JWT-bearer grant as Google's token endpoint does;
- a self-signed JWT (`always_use_jwt_access`), as caliban sends with any trusted key (offline).

    with StorageEmulator(tmp_path, latency=0.02) as emu:
        os.environ.update(emu.client_env(emu.new_key()))
        client = storage.Client(client_options={"api_endpoint": emu.url})

It serves what google-cloud-storage uses: buckets.get, objects.list (prefix, delimiter,
matchGlob, maxResults/pageToken paging, fields), objects.get and media downloads, uploads
(media, multipart, resumable) and objects.delete. Every request is counted by kind (`calls()`);
`latency` seconds are added to each one.

    python -m devtools.storage_emulator --root DIR [--port N] [--latency S]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import google_crc32c

from devtools import storage_tokens, test_pki
from devtools.bucket_folders import open_folder
from devtools.storage_wire import (
    API,
    Reply,
    b64,
    error,
    list_page,
    multipart,
    parse_fields,
    request_kind,
    select,
)

PROJECT = "emu-project"
AUDIENCES = ("https://storage.googleapis.com/",)


class StorageEmulator(test_pki.GoogleService):
    """Cloud Storage on https://127.0.0.1:`port` (0 = a free port) over `root`."""

    project = PROJECT

    def __init__(self, root: str | Path, port: int = 0, *, latency: float = 0.0):
        test_pki.GoogleService.__init__(self, AUDIENCES)
        self.root = Path(root)
        self.port = port
        self.latency = latency  # a plain attribute: tests may change it while it serves
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._tokens = storage_tokens.Tokens(self._keys)
        self._uploads: dict[str, dict[str, Any]] = {}  # resumable session id -> its state
        self._hashes: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._server: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    endpoint = url

    def client_env(self, key_path: str | Path) -> dict[str, str]:
        """What a process needs to reach this emulator as caliban reaches Cloud Storage."""
        return {
            "CALIBAN_STORAGE_ENDPOINT": self.url,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_path),
        }

    def new_key(
        self, path: str | Path | None = None, *, trusted: bool = True, email: str | None = None
    ) -> Path:
        """A key file whose token_uri is this emulator's token endpoint; trusted if `trusted`."""
        if self._server is None:
            raise RuntimeError("start() the storage emulator before minting keys")
        info = test_pki.new_service_account_key(self.project, email)
        info["token_uri"] = f"{self.url}/token"
        if trusted:
            self._keys.trust(info)
        path = path or test_pki.scratch_dir() / f"storage-key-{info['private_key_id'][:12]}.json"
        return test_pki.write_key(path, info)

    def start(self) -> StorageEmulator:
        self.root.mkdir(parents=True, exist_ok=True)
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain = test_pki.scratch_dir() / "storage-server.pem"
        chain.write_bytes(self._tls.server_cert + self._tls.server_key)
        context.load_cert_chain(chain)
        # The handshake happens in each connection's thread, not in the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        server.handleerror = lambda *_: None  # type: ignore[method-assign]
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(
            target=server.serve_forever, args=(0.05,), daemon=True, name="gcs-emu"
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StorageEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- inspection

    def calls(self) -> collections.Counter[str]:
        """Requests by kind: token, buckets.get, objects.list, objects.get, objects.media,
        objects.insert, objects.delete (refused ones included)."""
        with self._lock:
            return collections.Counter(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _count(self, kind: str) -> None:
        with self._lock:
            self._calls[kind] += 1

    # ----------------------------------------------------------------- credentials

    # ----------------------------------------------------------------- objects

    def _bucket(self, name: str) -> Path:
        folder = self.root / name
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]", name) or not folder.is_dir():
            raise error(404, "notFound", "The specified bucket does not exist.")
        return folder

    def _path(self, bucket: str, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("..", ".") for p in parts) or "\0" in name:
            raise error(400, "invalid", f"The object name {name!r} is not valid.")
        return self._bucket(bucket) / name

    def _hashes_of(self, path: Path, stat: os.stat_result) -> tuple[str, str]:
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            data = path.read_bytes()
            crc = google_crc32c.value(data).to_bytes(4, "big")
            known = b64(hashlib.md5(data).digest()), b64(crc)
            with self._lock:
                self._hashes[key] = known
        return known

    def _resource(self, bucket: str, name: str, path: Path, hashed: bool = True) -> dict:
        stat = path.stat()
        generation = str(stat.st_mtime_ns // 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stat.st_mtime)) + ".000Z"
        quoted = quote(name, safe="")
        out = {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{generation}",
            "selfLink": f"{self.url}/storage/v1/b/{bucket}/o/{quoted}",
            "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{quoted}"
            f"?generation={generation}&alt=media",
            "name": name,
            "bucket": bucket,
            "generation": generation,
            "metageneration": "1",
            "contentType": "application/octet-stream",
            "storageClass": "STANDARD",
            "size": str(stat.st_size),
            "timeCreated": stamp,
            "updated": stamp,
            "etag": f"CL{generation}",
        }
        if hashed:
            out["md5Hash"], out["crc32c"] = self._hashes_of(path, stat)
        return out

    def _object(self, bucket: str, name: str, query: dict[str, str]) -> Path:
        path = self._path(bucket, name)
        if not path.is_file():
            raise error(404, "notFound", f"No such object: {bucket}/{name}")
        wanted = query.get("generation")
        if wanted and wanted != str(path.stat().st_mtime_ns // 1000):
            raise error(404, "notFound", f"No such object: {bucket}/{name}#{wanted}")
        return path

    def _names(self, folder: Path, prefix: str) -> list[str]:
        """Every object name under `prefix`, in Cloud Storage's (byte) order."""
        start = folder / prefix.rpartition("/")[0] if "/" in prefix else folder
        names = []
        for top, _dirs, files in os.walk(start):
            rel = os.path.relpath(top, folder)
            head = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            names += [head + f for f in files if (head + f).startswith(prefix)]
        return sorted(names, key=lambda n: n.encode())

    def _list(self, bucket: str, query: dict[str, str]) -> dict[str, Any]:
        folder = self._bucket(bucket)
        fields = parse_fields(query["fields"]) if query.get("fields") else None
        items_spec = (fields or {}).get("items")
        hashed = fields is None or items_spec is None or bool({"md5Hash", "crc32c"} & {*items_spec})
        names, prefixes, token = list_page(self._names(folder, query.get("prefix", "")), query)
        out: dict[str, Any] = {"kind": "storage#objects"}
        if names:
            out["items"] = [self._resource(bucket, n, folder / n, hashed) for n in names]
        if prefixes:
            out["prefixes"] = prefixes
        if token:
            out["nextPageToken"] = token
        return select(out, fields)

    def _store(self, bucket: str, name: str, data: bytes) -> dict:
        path = self._path(bucket, name)
        open_folder(path.parent)  # a container may write into it next
        # Whole or not at all, as a finished upload appears in Cloud Storage.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return self._resource(bucket, name, path)

    def _upload(self, bucket: str, query: dict[str, str], headers, body: bytes) -> Reply:
        self._bucket(bucket)
        kind = query.get("uploadType", "")
        if kind == "media":
            return Reply(200, self._store(bucket, query.get("name", ""), body))
        if kind == "multipart":
            meta, data = multipart(headers.get("Content-Type", ""), body)
            name = meta.get("name") or query.get("name", "")
            return Reply(200, self._store(bucket, name, data))
        if kind == "resumable" and "upload_id" not in query:
            meta = json.loads(body or b"{}")
            session = secrets.token_urlsafe(16)
            with self._lock:
                self._uploads[session] = {
                    "name": meta.get("name") or query.get("name", ""),
                    "data": bytearray(),
                }
            where = f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
            return Reply(200, {}, {"Location": f"{where}&upload_id={session}"})
        raise error(400, "invalid", f"uploadType {kind!r} is not supported here")

    def _chunk(self, bucket: str, query: dict[str, str], headers, body: bytes) -> Reply:
        with self._lock:
            state = self._uploads.get(query.get("upload_id", ""))
        if state is None:
            raise error(404, "notFound", "No such upload session.")
        data: bytearray = state["data"]
        span = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", headers.get("Content-Range", ""))
        if span is None:
            raise error(400, "invalid", "Bad Content-Range.")
        if span[1] is not None:
            if int(span[1]) != len(data):
                raise error(400, "invalid", "Chunk does not start where the upload stands.")
            data += body
        if span[3] != "*" and int(span[3]) == len(data):
            with self._lock:
                self._uploads.pop(query["upload_id"], None)
            return Reply(200, self._store(bucket, state["name"], bytes(data)))
        extra = {"Range": f"bytes=0-{len(data) - 1}"} if data else {}
        return Reply(308, b"", extra)

    # ----------------------------------------------------------------- dispatch

    def handle(self, method: str, target: str, headers, body: bytes) -> Reply:
        split = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if split.path == "/token" and method == "POST":
            self._count("token")
            form = parse_qs(body.decode(errors="replace"))
            return Reply(200, self._tokens.grant(form))
        found = API.match(split.path)
        kind = request_kind(method, found, query)
        self._count(kind)
        if self.latency:
            time.sleep(self.latency)
        self._tokens.authorize(headers)
        if found is None or kind == "unknown":
            raise error(404, "notFound", f"Not Found: {method} {split.path}")
        bucket = unquote(found[2])
        name = unquote(found[3]) if found[3] else ""
        if kind == "buckets.get":
            self._bucket(bucket)
            return Reply(200, {"kind": "storage#bucket", "id": bucket, "name": bucket,
                                "location": "US", "storageClass": "STANDARD"})  # fmt: skip
        if kind == "objects.list":
            return Reply(200, self._list(bucket, query))
        if kind == "objects.insert":
            return self._upload(bucket, query, headers, body)
        if kind == "objects.chunk":
            return self._chunk(bucket, query, headers, body)
        path = self._object(bucket, name, query)
        if kind == "objects.delete":
            path.unlink()
            return Reply(204, b"")
        if kind == "objects.get":
            fields = parse_fields(query["fields"]) if query.get("fields") else None
            return Reply(200, select(self._resource(bucket, name, path), fields))
        return self._media(bucket, name, path, headers)

    def _media(self, bucket: str, name: str, path: Path, headers) -> Reply:
        data = path.read_bytes()
        resource = self._resource(bucket, name, path)
        extra = {
            "x-goog-hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}",
            "x-goog-generation": resource["generation"],
            "x-goog-stored-content-length": str(len(data)),
            "Content-Type": resource["contentType"],
        }
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", ""))
        if wanted:
            first = int(wanted[1])
            last = int(wanted[2]) if wanted[2] else len(data) - 1
            extra["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return Reply(206, data[first : last + 1], extra)
        return Reply(200, data, extra)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    emulator: StorageEmulator

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.emulator.handle(self.command, self.path, self.headers, body)
        except Reply as answer:
            reply = answer
        except Exception as err:  # a bug here must still answer, as a 500
            reply = error(500, "backendError", f"emulator error: {err!r}")
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.code)
        headers = {"Content-Type": "application/json; charset=UTF-8", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.storage_emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", required=True, help="folder of buckets: ROOT/BUCKET/object")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with StorageEmulator(args.root, args.port, latency=args.latency) as emulator:
        # The URL, then the environment a client needs, as NAME=value lines for a shell.
        env = emulator.client_env(emulator.new_key())
        lines = [emulator.url, *(f"{name}={shlex.quote(v)}" for name, v in env.items())]
        print("\n".join(lines), flush=True)
        while not done.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
