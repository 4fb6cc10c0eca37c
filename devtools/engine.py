"""A real Docker engine, a local registry and an offline Python base image, for tests and the demo.

    python -m devtools.engine up       # idempotent; prints KEY=value lines on stdout
    python -m devtools.engine status   # one line per part; exit code 1 if a part is missing
    python -m devtools.engine env      # DOCKER_HOST=... lines (eval-able, env-file friendly)
    python -m devtools.engine down     # stops only what `up` started

    from devtools import engine
    info = engine.up()                 # EngineInfo(docker_host=..., registry="127.0.0.1:5000", ...)
    client = info.client()

`up()` uses an engine that already answers (DOCKER_HOST, else /var/run/docker.sock). Without
one, on Debian as root, it installs Debian's docker.io and starts dockerd by hand with all its
data under one work folder (CALIBAN_ENGINE_DIR, default /var/tmp/caliban-engine). No image can
be pulled on these machines, so the base image our Dockerfiles name (python:3.11-slim) is made
offline with mmdebstrap from the mirror apt is configured with, and a tiny busybox image is made
from Debian's static busybox. A registry (Debian's docker-registry) listens on 127.0.0.1:5000.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import io
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import docker.errors

SOCKET = "/var/run/docker.sock"
SOCKET_URL = f"unix://{SOCKET}"
REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "python:3.11-slim"
BASE_ALIASES = ("caliban-base:offline",)
BUSYBOX_IMAGE = "busybox:latest"
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
STATE_FILE = "state.json"
ENGINE_START_TIMEOUT = 90.0
REGISTRY_START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineError(RuntimeError):
    """The engine, the registry or the base image could not be made ready."""


@dataclass(frozen=True)
class EngineInfo:
    """What `up()` made ready. A PID is set only for a process devtools.engine started (and
    `down()` will stop); an engine or registry found already running has PID None."""

    docker_host: str
    registry: str
    base_image: str
    busybox_image: str
    work_dir: str
    dockerd_pid: int | None
    registry_pid: int | None

    def env(self) -> dict[str, str]:
        return {
            "DOCKER_HOST": self.docker_host,
            "CALIBAN_REGISTRY": self.registry,
            "CALIBAN_ENGINE_DIR": self.work_dir,
        }

    def client(self, timeout: int = 600) -> docker.DockerClient:
        return _client_for(self.docker_host, timeout=timeout)


# --------------------------------------------------------------------------- small helpers


def work_dir() -> Path:
    return Path(os.environ.get("CALIBAN_ENGINE_DIR", "/var/tmp/caliban-engine")).resolve()


def _log(msg: str) -> None:
    print(f"engine: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(msg: str) -> Iterator[None]:
    start = time.monotonic()
    _log(f"{msg} ...")
    yield
    _log(f"{msg}: done in {time.monotonic() - start:.1f} s")


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One up()/down() at a time per work folder, across processes."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "engine.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_state(work: Path) -> dict:
    try:
        return json.loads((work / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save_state(work: Path, state: dict) -> None:
    tmp = work / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(work / STATE_FILE)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _proc_start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks, else None."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _ours_alive(entry: dict | None) -> bool:
    """The process recorded in a state entry still runs (same PID and same start time)."""
    if not entry:
        return False
    return _proc_start_time(entry["pid"]) == entry.get("start_time")


def _record(proc: subprocess.Popen, log: Path) -> dict:
    return {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "log": str(log)}


def _wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None, log: Path):
    """Poll `check()` until it returns a true value; fail fast if `proc` exits."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise EngineError(
                f"{what} exited with code {proc.returncode}; log {log}:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise EngineError(
                f"{what} did not answer within {timeout:.0f} s; log {log}:\n{_tail(log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _stop_pid(pid: int, start_time: int | None, name: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True if the process was running."""
    if start_time is None or _proc_start_time(pid) != start_time:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _proc_start_time(pid) == start_time:
        if time.monotonic() > deadline:
            _log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _proc_start_time(pid) == start_time and time.monotonic() < deadline:
                time.sleep(0.05)
            break
        time.sleep(0.05)
    return True


def is_root_on_debian() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and bool(which("apt-get"))


def which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _service_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "/usr/bin:/bin")
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in path.split(":"):
            path += ":" + extra
    env["PATH"] = path
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    env["NO_PROXY"] = env["no_proxy"] = ",".join(
        p for p in (no_proxy, "127.0.0.1", "localhost") if p
    )
    return env


# --------------------------------------------------------------------------- apt


def _dpkg_installed(pkg: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and done.stdout.strip().endswith("installed")


def _apt_has_candidates(pkgs: list[str]) -> bool:
    done = subprocess.run(
        ["apt-cache", "policy", *pkgs], capture_output=True, text=True, check=False
    )
    found = done.stdout.count("Candidate:") - done.stdout.count("Candidate: (none)")
    return done.returncode == 0 and found == len(pkgs)


APT_LOCK_TIMEOUT = 300  # seconds to wait for a dpkg lock that another apt-get holds


def apt_install(pkgs: list[str], work: Path, error: type[Exception] | None = None) -> None:
    """apt-get install what is missing (devtools' one way to install Debian packages).

    apt-get update runs first only if apt lacks a candidate, and once more if an install
    fails on stale lists; a dpkg lock held by another apt-get is waited for. Failures raise
    `error` (EngineError by default) with the tail of `work`/apt.log.
    """
    error = error or EngineError
    missing = [p for p in pkgs if not _dpkg_installed(p)]
    if not missing:
        return
    if not is_root_on_debian():
        raise error(
            f"need Debian packages {' '.join(missing)}, and installing them needs root on "
            "Debian: install them first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = work / "apt.log"

    def run(*args: str) -> bool:
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(args)}\n")
            fh.flush()
            done = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
        return done.returncode == 0

    wait = ("-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT}")
    update = ("apt-get", *wait, "update", "-q")
    install = ("apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *missing)
    with _step(f"apt-get install {' '.join(missing)}"):
        if not _apt_has_candidates(missing):
            with _step("apt-get update"):
                run(*update)
        if run(*install):
            return
        _log("apt-get install failed; running apt-get update and trying once more")
        if run(*update) and run(*install):
            return
    raise error(f"apt-get install {' '.join(missing)} failed; log {log}:\n{_tail(log)}")


# --------------------------------------------------------------------------- engine


def _client_for(url: str, timeout: int = 10) -> docker.DockerClient:
    if url == os.environ.get("DOCKER_HOST"):
        return docker.from_env(timeout=timeout)
    return docker.DockerClient(base_url=url, timeout=timeout)


def _ping(url: str) -> docker.DockerClient | None:
    if url.startswith("unix://") and not Path(url[len("unix://") :]).exists():
        return None
    try:
        client = _client_for(url, timeout=5)
        client.ping()
        return client
    except Exception:
        return None


def _candidate_hosts() -> list[str]:
    hosts = []
    if os.environ.get("DOCKER_HOST"):
        hosts.append(os.environ["DOCKER_HOST"])
    if SOCKET_URL not in hosts:
        hosts.append(SOCKET_URL)
    return hosts


def _find_engine() -> tuple[str, docker.DockerClient] | None:
    for url in _candidate_hosts():
        client = _ping(url)
        if client is not None:
            return url, client
    return None


def _paths(work: Path) -> dict[str, Path]:
    return {
        "data_root": work / "docker",
        "exec_root": work / "docker-exec",
        "pidfile": work / "dockerd.pid",
        "dockerd_log": work / "dockerd.log",
        "registry_dir": work / "registry",
        "registry_config": work / "registry.yml",
        "registry_log": work / "registry.log",
        "base_dir": work / "base",
    }


def _start_dockerd(work: Path, state: dict) -> docker.DockerClient:
    p = _paths(work)
    dockerd = which("dockerd")
    if dockerd is None:
        raise EngineError("dockerd is not installed")
    if os.environ.get("DOCKER_HOST") not in (None, "", SOCKET_URL):
        _log(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer; starting {SOCKET_URL}")
    cmd = [
        dockerd,
        "--host",
        SOCKET_URL,
        "--data-root",
        str(p["data_root"]),
        "--exec-root",
        str(p["exec_root"]),
        "--pidfile",
        str(p["pidfile"]),
        "--storage-driver",
        "overlay2",
    ]
    with _step("starting dockerd"):
        with open(p["dockerd_log"], "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_service_env(),
                start_new_session=True,
                close_fds=True,
            )
        state["dockerd"] = {**_record(proc, p["dockerd_log"]), "cmd": cmd}
        _save_state(work, state)
        client = _wait_until(
            lambda: _ping(SOCKET_URL), ENGINE_START_TIMEOUT, "dockerd", proc, p["dockerd_log"]
        )
    return client


# --------------------------------------------------------------------------- registry


def _registry_answers() -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{REGISTRY}/v2/", timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500  # 401 from an authenticating registry still answers
    except (OSError, ValueError):
        return False


def _start_registry(work: Path, state: dict) -> None:
    p = _paths(work)
    binary = which("docker-registry")
    if binary is None:
        raise EngineError("docker-registry is not installed")
    p["registry_dir"].mkdir(parents=True, exist_ok=True)
    p["registry_config"].write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {p['registry_dir']}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {REGISTRY}\n"
    )
    with _step(f"starting docker-registry on {REGISTRY}"):
        with open(p["registry_log"], "ab") as log:
            proc = subprocess.Popen(
                [binary, "serve", str(p["registry_config"])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_service_env(),
                start_new_session=True,
                close_fds=True,
                cwd=work,
            )
        state["registry"] = _record(proc, p["registry_log"])
        _save_state(work, state)
        _wait_until(_registry_answers, REGISTRY_START_TIMEOUT, "registry", proc, p["registry_log"])


# --------------------------------------------------------------------------- images


def _has_image(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only; enough here
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _static_busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and _is_static_elf(path):
            return path
    return None


def _import_busybox(client: docker.DockerClient, busybox: str) -> None:
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "root", "tmp"):
            add_dir(name, 0o1777 if name == "tmp" else 0o755)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(link)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    repo, tag = BUSYBOX_IMAGE.split(":")
    client.api.import_image_from_data(
        buf.getvalue(), repository=repo, tag=tag, changes=["ENV PATH=/bin", 'CMD ["sh"]']
    )


def apt_mirror() -> str:
    """The Debian mirror apt on this machine uses (read at run time, never stored)."""
    deb822 = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    preferred = "/etc/apt/sources.list.d/debian.sources"
    if preferred in deb822:
        deb822.remove(preferred)
        deb822.insert(0, preferred)
    for path in deb822:
        for stanza in Path(path).read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if (
                "deb" in fields.get("types", "").split()
                and fields.get("uris")
                and fields.get("enabled", "yes").lower() != "no"
                and any(not s.endswith("-security") for s in suites)
            ):
                return fields["uris"].split()[0]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = words[1:]
                if len(words) >= 2 and not words[1].endswith("-security"):
                    return words[0]
    raise EngineError("no Debian mirror found in /etc/apt/sources.list(.d)")


def _mmdebstrap_cmd(out: Path) -> list[str]:
    certs = sorted(str(c) for c in HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []
    ca_dir = '"$1"/usr/local/share/ca-certificates'
    hooks = [f"mkdir -p {ca_dir}"]
    if certs:
        hooks.append(f"cp {' '.join(shlex.quote(c) for c in certs)} {ca_dir}/")
    hooks += [
        'chroot "$1" update-ca-certificates --fresh >/dev/null',
        'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        'ln -sf pip3 "$1"/usr/bin/pip',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/*'
        ' "$1"/var/log/dpkg.log "$1"/var/cache/debconf/*-old',
    ]
    excludes = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*"]
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={BASE_PACKAGES}",
        '--aptopt=Acquire::Check-Valid-Until "false"',
    ]
    cmd += [f"--dpkgopt=path-exclude={e}" for e in excludes]
    cmd += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += [SUITE, str(out), apt_mirror()]
    return cmd


class _BaseBuild:
    """mmdebstrap of the Python rootfs tarball, run in the background."""

    def __init__(self, work: Path):
        base = _paths(work)["base_dir"]
        base.mkdir(parents=True, exist_ok=True)
        self.out = base / f"{SUITE}-python.tar"
        self.tmp = base / f"{SUITE}-python.part.tar"
        self.log = base / "mmdebstrap.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def cached(self) -> bool:
        return self.out.exists()

    def start(self) -> None:
        if self.cached() or self.proc is not None:
            return
        self.tmp.unlink(missing_ok=True)
        cmd = _mmdebstrap_cmd(self.tmp)
        _log(f"mmdebstrap {SUITE} + python3 in the background (log {self.log})")
        self.started = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp.parent,
            )

    def wait(self) -> Path:
        if self.cached():
            return self.out
        if self.proc is None:
            self.start()
        assert self.proc is not None
        with _step("waiting for mmdebstrap"):
            code = self.proc.wait()
        if code != 0:
            raise EngineError(f"mmdebstrap failed ({code}); log {self.log}:\n{_tail(self.log)}")
        self.tmp.replace(self.out)
        _log(f"base rootfs built in {time.monotonic() - self.started:.1f} s ({self.out})")
        return self.out

    def abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def _import_base(client: docker.DockerClient, tarball: Path) -> None:
    repo, tag = BASE_IMAGE.split(":")
    changes = [
        f"ENV PATH={IMAGE_PATH}",
        "ENV LANG=C.UTF-8",
        "LABEL org.caliban-flows.base=offline-debian-" + SUITE,
        'CMD ["python3"]',
    ]
    with _step(f"docker import {tarball.name} as {BASE_IMAGE}"), open(tarball, "rb") as fh:
        client.api.import_image_from_data(fh, repository=repo, tag=tag, changes=changes)


def _tag_aliases(client: docker.DockerClient) -> None:
    image = client.images.get(BASE_IMAGE)
    for alias in BASE_ALIASES:
        if not _has_image(client, alias):
            repo, tag = alias.split(":")
            image.tag(repo, tag)


# --------------------------------------------------------------------------- public API


def up() -> EngineInfo:
    """Make the engine, the registry and the images ready; idempotent. Returns EngineInfo."""
    work = work_dir()
    start = time.monotonic()
    with _locked(work):
        state = _load_state(work)
        base = _BaseBuild(work)
        try:
            info = _up(work, state, base)
        except BaseException:
            base.abort()
            raise
    _log(f"ready in {time.monotonic() - start:.1f} s: {info.docker_host}, registry {REGISTRY}")
    return info


def _up(work: Path, state: dict, base: _BaseBuild) -> EngineInfo:
    found = _find_engine()
    if found is None:
        if not is_root_on_debian():
            raise EngineError(
                "no Docker engine answers (DOCKER_HOST or /var/run/docker.sock), and starting "
                "one needs root on Debian; start an engine yourself and set DOCKER_HOST"
            )
        if which("dockerd") is None:
            # Fresh machine: build the base rootfs while apt installs the engine.
            if not base.cached():
                apt_install(["mmdebstrap", "busybox-static"], work)
                base.start()
            apt_install(["docker.io", "docker-registry", "busybox-static", "mmdebstrap"], work)
        if _ours_alive(state.get("dockerd")):
            # Ours, but not answering yet (e.g. still starting): wait for it.
            entry = state["dockerd"]
            client = _wait_until(
                lambda: _ping(SOCKET_URL), ENGINE_START_TIMEOUT, "dockerd", None, Path(entry["log"])
            )
        else:
            state.pop("dockerd", None)
            client = _start_dockerd(work, state)
        host = SOCKET_URL
    else:
        host, client = found
    client.api.timeout = 600
    dockerd_pid = None
    if _ours_alive(state.get("dockerd")):
        # Still ours to stop in down(), even when DOCKER_HOST points at another engine.
        dockerd_pid = state["dockerd"]["pid"] if host == SOCKET_URL else None
    elif state.pop("dockerd", None) is not None:
        _save_state(work, state)

    if not _registry_answers():
        state.pop("registry", None)
        apt_install(["docker-registry"], work)
        _start_registry(work, state)
    registry_pid = state["registry"]["pid"] if _ours_alive(state.get("registry")) else None

    if not _has_image(client, BUSYBOX_IMAGE):
        if _static_busybox() is None:
            apt_install(["busybox-static"], work)
        busybox = _static_busybox()
        if busybox is None:
            raise EngineError("no statically linked busybox found (install busybox-static)")
        with _step(f"docker import static busybox as {BUSYBOX_IMAGE}"):
            _import_busybox(client, busybox)

    if not _has_image(client, BASE_IMAGE):
        if not base.cached() and base.proc is None:
            apt_install(["mmdebstrap"], work)
        _import_base(client, base.wait())
    else:
        base.abort()
    _tag_aliases(client)

    return EngineInfo(
        docker_host=host,
        registry=REGISTRY,
        base_image=BASE_IMAGE,
        busybox_image=BUSYBOX_IMAGE,
        work_dir=str(work),
        dockerd_pid=dockerd_pid,
        registry_pid=registry_pid,
    )


def status() -> dict:
    """Each part: engine, registry, images. Starts nothing."""
    work = work_dir()
    state = _load_state(work)
    out: dict = {"work_dir": str(work)}
    found = _find_engine()
    engine: dict = {"running": found is not None, "host": found[0] if found else None}
    if found:
        version = found[1].version()
        engine["version"] = version.get("Version")
        engine["api_version"] = version.get("ApiVersion")
    ours = _ours_alive(state.get("dockerd"))
    engine["pid"] = state["dockerd"]["pid"] if ours else None
    engine["started_by_devtools"] = ours
    out["engine"] = engine
    reg_ours = _ours_alive(state.get("registry"))
    out["registry"] = {
        "running": _registry_answers(),
        "address": REGISTRY,
        "pid": state["registry"]["pid"] if reg_ours else None,
        "started_by_devtools": reg_ours,
    }
    images = {}
    for name in (BASE_IMAGE, *BASE_ALIASES, BUSYBOX_IMAGE):
        images[name] = None
        if found:
            with contextlib.suppress(docker.errors.ImageNotFound):
                images[name] = found[1].images.get(name).short_id
    out["images"] = images
    out["ready"] = bool(engine["running"] and out["registry"]["running"] and all(images.values()))
    return out


def env() -> dict[str, str]:
    """DOCKER_HOST and friends for the engine `up()` uses (starts nothing)."""
    found = _find_engine()
    host = found[0] if found else (os.environ.get("DOCKER_HOST") or SOCKET_URL)
    return {
        "DOCKER_HOST": host,
        "CALIBAN_REGISTRY": REGISTRY,
        "CALIBAN_ENGINE_DIR": str(work_dir()),
    }


def _mounts_under(root: Path) -> list[str]:
    points = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == str(root) or point.startswith(str(root) + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _leftover_pids(paths: list[Path]) -> list[tuple[int, int | None]]:
    """containerd and shims that still point into our folders after dockerd stopped."""
    needles = [str(p).encode() for p in paths]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if any(n in cmdline for n in needles):
                pid = int(entry.name)
                found.append((pid, _proc_start_time(pid)))
    return found


def down() -> list[str]:
    """Stop what up() started (never an engine or registry it found running). Keeps data."""
    work = work_dir()
    done: list[str] = []
    with _locked(work):
        state = _load_state(work)
        p = _paths(work)
        reg = state.pop("registry", None)
        if reg and _stop_pid(reg["pid"], reg.get("start_time"), "docker-registry"):
            done.append(f"stopped docker-registry (pid {reg['pid']})")
        ours = state.pop("dockerd", None)
        if ours:
            with _step("stopping dockerd"):
                if _stop_pid(ours["pid"], ours.get("start_time"), "dockerd"):
                    done.append(f"stopped dockerd (pid {ours['pid']})")
                for pid, started in _leftover_pids([p["exec_root"], p["data_root"]]):
                    if _stop_pid(pid, started, f"pid {pid}", timeout=10):
                        done.append(f"stopped leftover pid {pid}")
            for point in _mounts_under(work):
                ok = subprocess.run(["umount", point], capture_output=True, check=False)
                if ok.returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True, check=False)
                done.append(f"unmounted {point}")
            ip = which("ip")
            if ip and Path("/sys/class/net/docker0").exists():
                subprocess.run([ip, "link", "del", "docker0"], capture_output=True, check=False)
                done.append("deleted docker0")
        _save_state(work, state)
    if not done:
        done.append("nothing started by devtools.engine was running")
    for line in done:
        _log(line)
    return done


# --------------------------------------------------------------------------- CLI


def _print_env(values: dict[str, str]) -> None:
    for key, value in values.items():
        print(f"{key}={value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--json", action="store_true", help="status/up: print JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            info = up()
            if args.json:
                print(json.dumps(asdict(info), indent=2))
            else:
                _print_env(info.env())
        elif args.command == "down":
            down()
        elif args.command == "env":
            _print_env(env())
        else:
            report = status()
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                eng, reg = report["engine"], report["registry"]
                owner = (
                    f"pid {eng['pid']}, started by devtools.engine" if eng["pid"] else "external"
                )
                print(
                    f"engine:   {'running' if eng['running'] else 'not running'}"
                    + (
                        f" at {eng['host']} (dockerd {eng['version']}, {owner})"
                        if eng["running"]
                        else ""
                    )
                )
                owner = (
                    f"pid {reg['pid']}, started by devtools.engine" if reg["pid"] else "external"
                )
                state = "running" if reg["running"] else "not running"
                print(
                    f"registry: {state} at {reg['address']}"
                    + (f" ({owner})" if reg["running"] else "")
                )
                for name, image_id in report["images"].items():
                    print(f"image:    {name}: {image_id or 'missing'}")
                print(f"work dir: {report['work_dir']}")
            return 0 if report["ready"] else 1
    except EngineError as err:
        print(f"engine: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
