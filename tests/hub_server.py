"""A small, Hub-compatible HTTP server for tests (standard library only).

The test machines cannot reach huggingface.co. ``LocalHub`` serves the subset of
the Hub's HTTP API that ``huggingface_hub`` (written against 2.4.0) uses to
download and publish model repos, so that project code runs *unmodified* against
it once ``HF_ENDPOINT`` points at ``LocalHub.endpoint``::

    def test_something(local_hub):          # fixture defined below
        sha = local_hub.add_commit("org/model", {"config.json": b"{}"})
        path = hf_hub_download("org/model", "config.json")

Other test modules use the fixture with ``from tests.hub_server import local_hub  # noqa: F401``.
For a server shared by a whole module, use ``LocalHub`` directly together with
``configure_hub_env(pytest.MonkeyPatch(), ...)`` (see ``configure_hub_env``).
Subprocesses only need the environment variables, which ``configure_hub_env``
also sets: a fresh interpreter reads them when it imports huggingface_hub.

Protocol notes (file / function of huggingface_hub that needs each detail):

* ``file_download.get_hf_file_metadata`` (HEAD ``/{repo}/resolve/{rev}/{file}``)
  needs ``X-Repo-Commit`` (else ``FileMetadataError``) and an ``ETag``; it prefers
  ``X-Linked-Etag`` / ``X-Linked-Size`` (set by the Hub for LFS files, whose ETag
  is their sha256) over ``ETag`` / ``Content-Length``. The etag names the blob in
  the cache (``blobs/<etag>``). We never redirect: a same-origin redirect would be
  *followed* by the client and the final response would then need the headers too.
* ``file_download.http_get`` resumes an interrupted GET with ``Range: bytes=N-``
  and reads the total size from ``Content-Range`` (206) or ``Content-Length``.
  It only keeps whole ``constants.DOWNLOAD_CHUNK_SIZE`` (10 MB) chunks, so N is a
  multiple of that (a cut inside the first 10 MB restarts from 0, without Range).
* ``hf_hub_download`` falls back to the cache when the HEAD fails with
  ``httpx2.ConnectError``/timeout/HTTP error, but *not* on a reset connection.
* ``utils._http.hf_raise_for_status`` maps 404s with ``X-Error-Code``
  ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` to the
  corresponding errors; an ``EntryNotFound`` response also carries
  ``X-Repo-Commit`` so the client can cache the non-existence (``.no_exist``).
* ``_commit_api._fetch_upload_modes`` (POST ``preupload``): we answer
  ``uploadMode: "regular"`` for every file, so the client sends contents inline
  (base64 in the NDJSON commit body) and never uses LFS batch or Xet uploads.
  ``oid`` (git blob sha1 of the file on the Hub) lets it skip unchanged files.
* ``hf_api.create_commit`` POSTs any ``README.md`` to ``/api/validate-yaml``
  first (model cards from timm / keras / ModelHubMixin pushes); we accept all.
* ``hf_api.create_repo`` expects 409 (with a JSON ``url``) for an existing repo
  and ignores it when ``exist_ok=True``. A new repo gets an initial commit with
  ``.gitattributes``, as on the real Hub.
* This server never sends ``X-Xet-*`` headers here and trees carry no ``xetHash``,
  so downloads stay plain HTTP even though ``hf_xet`` is installed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "local-user"  # whoami name; namespace of repos created without one
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses non-LFS files above 10 MB
# Patterns of the Hub's default .gitattributes: files the Hub stores in LFS.
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".keras",
    ".mlmodel", ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb",
    ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite", ".tgz",
    ".wasm", ".xz", ".zip", ".zst",
)  # fmt: skip
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
LFS_POINTER_SIZE = 134  # size of a git-lfs pointer file, reported as `pointerSize`


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_lfs(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class Blob:
    """File content, stored on disk under its sha256."""

    sha256: str
    git_oid: str  # sha1 of b"blob <size>\0" + content, i.e. what `git hash-object` gives
    size: int
    disk_path: Path

    def read(self) -> bytes:
        return self.disk_path.read_bytes()


@dataclass(frozen=True)
class Commit:
    """A full snapshot of a repo: path in repo -> Blob."""

    sha: str
    message: str
    parent: str | None
    files: Mapping[str, Blob]
    date: str

    def read(self, path: str) -> bytes:
        return self.files[path].read()


@dataclass
class _Repo:
    repo_id: str
    private: bool = False
    created_at: str = field(default_factory=_now_iso)
    commits: dict[str, Commit] = field(default_factory=dict)  # sha -> Commit, oldest first
    branches: dict[str, str] = field(default_factory=dict)  # name (incl. "refs/pr/N") -> sha
    tags: dict[str, str] = field(default_factory=dict)
    next_pr: int = 1

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", revision):
            sha = revision
        return self.commits.get(sha) if sha else None


@dataclass(frozen=True)
class Request:
    """One request received by the server (see `LocalHub.requests`)."""

    method: str
    path: str  # URL path, percent-decoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


# --------------------------------------------------------------------------- server


class LocalHub:
    """In-process fake of the Hugging Face Hub (model repos only).

    Blobs live on disk under ``root_dir``; repos, commits and refs in memory.
    Thread-safe: the server answers each connection in its own thread.
    """

    def __init__(self, root_dir: str | os.PathLike | None = None):
        self._tmp = None if root_dir is not None else tempfile.TemporaryDirectory(prefix="localhub-")
        self.root_dir = Path(root_dir if root_dir is not None else self._tmp.name)
        (self.root_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, Blob] = {}  # sha256 -> Blob
        self._requests: list[Request] = []
        self._failures: list[dict] = []  # see fail_next_download
        self._offline: str | None = None  # None, "refuse", "503" or "reset"
        self._counter = itertools.count()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._placeholder: socket.socket | None = None
        self.port: int | None = None
        self.cache_dir: Path | None = None  # HF_HUB_CACHE, set by the `local_hub` fixture

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalHub":
        self._listen(0)
        return self

    def stop(self) -> None:
        self._unlisten()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHub", daemon=True
        )
        self._thread.start()

    def _unlisten(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()  # stop accepting
        self._httpd.server_close()
        self._httpd.close_all_connections()  # end keep-alive connections held by the client's pool
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    # ---- failure injection

    def set_offline(self, offline: bool = True, mode: str = "refuse") -> None:
        """Simulate an unreachable / broken Hub.

        mode="refuse": nothing listens on the port any more (connection refused -> httpx2.ConnectError,
            what "no network" looks like). huggingface_hub falls back to its cache for this one.
        mode="503": every request gets HTTP 503 (Hub down). Also falls back to the cache.
        mode="reset": connections are reset without a response. huggingface_hub does *not* treat
            this as offline: hf_hub_download raises an httpx2 error even with the file cached.
        Without a cached file, hf_hub_download retries with back-off (~23 s; see `fast_retries`)
        and then raises LocalEntryNotFoundError.
        """
        if mode not in ("refuse", "503", "reset"):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            previous, self._offline = self._offline, (mode if offline else None)
        if previous == "refuse" and self._offline != "refuse":
            self._placeholder.close()
            self._placeholder = None
            self._listen(self.port)  # same port: HF_ENDPOINT stays valid
        elif self._offline == "refuse" and previous != "refuse":
            self._unlisten()
            # Keep the port bound (but not listening) so that nothing else grabs it meanwhile.
            self._placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._placeholder.bind(("127.0.0.1", self.port))
        elif self._offline is not None and self._httpd is not None:
            self._httpd.close_all_connections()  # pooled connections must see the new behaviour

    def fail_next_download(
        self, path: str, after_bytes: int = 0, *, times: int = 1, repo_id: str | None = None
    ) -> None:
        """Cut the next `times` GETs of file `path` (any repo unless `repo_id`) after `after_bytes`
        bytes of body: headers announce the full Content-Length, then the connection is closed.

        `file_download.http_get` retries a cut download 5 times (1 s apart, see `fast_retries`). It
        consumes the body in `constants.DOWNLOAD_CHUNK_SIZE` (10 MB) chunks, and only whole chunks count:
        after a cut past N full chunks it resumes with `Range: bytes=<N*chunk>-` and resets its retry
        budget, otherwise it starts again from byte 0. So times <= 5 still ends in a successful
        hf_hub_download, times >= 6 (with after_bytes below one chunk) makes it raise
        httpx2.RemoteProtocolError.
        """
        with self._lock:
            self._failures.append({"path": path, "repo_id": repo_id, "after": after_bytes, "left": times})

    def _take_failure(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule["path"] == path and rule["repo_id"] in (None, repo_id) and rule["left"] > 0:
                    rule["left"] -= 1
                    return rule["after"]
        return None

    # ---- request log

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """(method, decoded path) of every request received, e.g. ("GET", "/org/m/resolve/main/w.bin")."""
        return [(r.method, r.path) for r in self.requests]

    def file_requests(self, filename: str, method: str | None = None, repo_id: str | None = None) -> list[Request]:
        """Requests to `/{repo}/resolve/{rev}/{filename}` (any revision)."""
        pattern = re.compile(rf"^/(?P<repo>.+)/resolve/[^/]+/{re.escape(filename)}$")
        return [
            r
            for r in self.requests
            if (m := pattern.match(r.path))
            and (method is None or r.method == method)
            and (repo_id is None or m["repo"] == repo_id)
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    # ---- repos (Python API)

    def create_repo(self, repo_id: str, *, private: bool = False, gitattributes: bool = False) -> None:
        """Create an empty repo (no commit, no `main`) unless it exists. `gitattributes=True` adds the
        Hub's initial commit (what `HfApi.create_repo` gets)."""
        with self._lock:
            if repo_id not in self._repos:
                self._repos[repo_id] = _Repo(repo_id, private=private)
                if gitattributes:
                    self.add_commit(repo_id, {".gitattributes": GITATTRIBUTES}, "initial commit")

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | os.PathLike],
        message: str = "",
        *,
        branch: str = "main",
        update: bool = False,
        deletes: tuple[str, ...] = (),
    ) -> str:
        """Commit a full snapshot `files` (path in repo -> bytes, str (text) or pathlib.Path of a local
        file) on `branch`,
        creating the repo / branch as needed. With `update=True` the files are added to the branch's
        current snapshot (minus `deletes`) instead of replacing it. Returns the 40-hex commit sha."""
        blobs = {path: self._store(content) for path, content in files.items()}
        with self._lock:
            self.create_repo(repo_id)
            repo = self._repos[repo_id]
            parent = repo.branches.get(branch)
            if update and parent:
                blobs = {**{p: b for p, b in repo.commits[parent].files.items() if p not in deletes}, **blobs}
            return self._commit(repo, branch, blobs, message or f"Commit {len(repo.commits)}")

    def create_branch(self, repo_id: str, branch: str, revision: str = "main") -> None:
        with self._lock:
            repo = self._repo(repo_id)
            repo.branches[branch] = self._resolve(repo, revision).sha

    def create_tag(self, repo_id: str, tag: str, revision: str = "main") -> None:
        with self._lock:
            repo = self._repo(repo_id)
            repo.tags[tag] = self._resolve(repo, revision).sha

    def commits(self, repo_id: str) -> list[Commit]:
        """All commits of the repo, oldest first."""
        with self._lock:
            return list(self._repo(repo_id).commits.values())

    def resolve(self, repo_id: str, revision: str = "main") -> Commit:
        with self._lock:
            return self._resolve(self._repo(repo_id), revision)

    def read_file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.resolve(repo_id, revision).read(path)

    def repo_exists(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._repos

    # ---- internals

    def _repo(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _commit(self, repo: _Repo, branch: str, files: dict[str, Blob], message: str) -> str:
        parent = repo.branches.get(branch)
        h = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{message}\n{next(self._counter)}\n{time.time_ns()}".encode())
        for path in sorted(files):
            h.update(f"{path}\0{files[path].git_oid}\n".encode())
        commit = Commit(h.hexdigest(), message, parent, dict(sorted(files.items())), _now_iso())
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit.sha

    def _store(self, content: bytes | str | os.PathLike) -> Blob:
        """Hash and store content under its sha256 (streaming for files)."""
        if isinstance(content, str):
            content = content.encode()
        if isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
            size, chunks = len(data), lambda: iter([data])
        else:
            src = Path(content)
            size = src.stat().st_size

            def chunks() -> Iterator[bytes]:
                with open(src, "rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk

        sha256, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        for chunk in chunks():
            sha256.update(chunk)
            git.update(chunk)
        blob = Blob(sha256.hexdigest(), git.hexdigest(), size, self.root_dir / "blobs" / sha256.hexdigest())
        with self._lock:
            if blob.sha256 not in self._blobs:
                tmp = blob.disk_path.with_suffix(f".tmp{next(self._counter)}")
                with open(tmp, "wb") as f:
                    for chunk in chunks():
                        f.write(chunk)
                os.replace(tmp, blob.disk_path)
                self._blobs[blob.sha256] = blob
        return self._blobs[blob.sha256]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub

    def __init__(self, *args, **kwargs):
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Clients hanging up mid-response are expected (interrupted downloads, offline switches).
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


# --------------------------------------------------------------------------- HTTP handler

_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_API = rf"^/api/models/{_REPO}"
# (methods, regex on the still-quoted path, handler). Groups are unquoted before the call.
# Order matters: `/api/models/{repo}` (model_info) must come last.
_ROUTES = [
    (("HEAD", "GET"), rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "_resolve"),
    (("GET",), rf"{_API}/revision/(?P<rev>[^/]+)$", "_model_info"),
    (("GET",), rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "_tree"),
    (("GET",), rf"{_API}/refs$", "_refs"),
    (("GET",), rf"{_API}/commits/(?P<rev>[^/]+)$", "_list_commits"),
    (("POST",), rf"{_API}/preupload/(?P<rev>[^/]+)$", "_preupload"),
    (("POST",), rf"{_API}/commit/(?P<rev>[^/]+)$", "_commit"),
    (("POST", "DELETE"), rf"{_API}/branch/(?P<branch>[^/]+)$", "_branch"),
    (("POST",), rf"{_API}/tag/(?P<rev>[^/]+)$", "_tag"),
    (("POST",), r"^/api/repos/create$", "_create_repo"),
    (("DELETE",), r"^/api/repos/delete$", "_delete_repo"),
    (("GET",), r"^/api/whoami-v2$", "_whoami"),
    (("POST",), r"^/api/validate-yaml$", "_validate_yaml"),
    (("GET",), rf"{_API}$", "_model_info"),
]
_ROUTES = [(methods, re.compile(regex), name) for methods, regex, name in _ROUTES]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the client's connection pool expects
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence per-request stderr logging
        pass

    def do_HEAD(self):
        self._handle()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD

    # ---- plumbing

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _handle(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        self.query = parse_qs(url.query)
        self.body = body
        self.hub._record(
            Request(self.command, unquote(url.path), self.query, {k.lower(): v for k, v in self.headers.items()})
        )
        mode = self.hub._offline
        if mode == "reset":  # RST instead of a response
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        try:
            if mode == "503":
                raise _HttpError(503, "Service Unavailable (LocalHub.set_offline)")
            for methods, regex, name in _ROUTES:
                match = regex.match(url.path)
                if match and self.command in methods:
                    kwargs = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, name)(**kwargs)
                    return
            raise _HttpError(404, f"LocalHub: no route for {self.command} {url.path}")
        except _HttpError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            self._send_json(e.body if e.body is not None else {"error": e.message}, e.status, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # a bug in this server: make it visible in the test output
            traceback.print_exc()
            self.close_connection = True  # part of a response may already be out
            self._send_json({"error": f"LocalHub internal error: {e!r}"}, 500)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> Any:
        return json.loads(self.body or b"{}")

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")

    # ---- file download

    def _resolve(self, repo: str, rev: str, path: str) -> None:
        with self.hub._lock:
            commit = self.hub._resolve(self.hub._repo(repo), rev)
        blob = commit.files.get(path)
        if blob is None:
            # X-Repo-Commit lets _get_metadata_or_catch_error cache the miss under .no_exist/<commit>.
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        lfs = _is_lfs(path, blob.size)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.sha,  # mandatory, else FileMetadataError
            "ETag": f'"{blob.sha256 if lfs else blob.git_oid}"',  # names the cached blob
            "Accept-Ranges": "bytes",
        }
        if lfs:  # preferred over ETag / Content-Length by get_hf_file_metadata
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)}
        start, end, status = 0, blob.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if m is None or not (m[1] or m[2]):
                raise _HttpError(416, f"Bad range {range_header}", headers={"Content-Range": f"bytes */{blob.size}"})
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else blob.size - 1, blob.size - 1)
            else:  # suffix range: last N bytes
                start = max(blob.size - int(m[2]), 0)
            if start > end:
                raise _HttpError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{blob.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        length = end - start + 1
        headers["Content-Length"] = str(length)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.hub._take_failure(repo, path)
        to_send = length if cut is None else min(cut, length)
        with open(blob.disk_path, "rb") as f:
            f.seek(start)
            while to_send > 0:
                chunk = f.read(min(1 << 20, to_send))
                self.wfile.write(chunk)
                to_send -= len(chunk)
        if cut is not None:  # interrupted download: close with the body incomplete
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- read API

    def _model_info(self, repo: str, rev: str = "main") -> None:
        with self.hub._lock:
            r = self.hub._repo(repo)
            commit = self.hub._resolve(r, rev)
        siblings = []
        for path, blob in commit.files.items():
            sibling = {"rfilename": path}
            if self._flag("blobs"):  # HfApi.model_info(files_metadata=True)
                sibling |= {"size": blob.size, "blobId": blob.git_oid}
                if _is_lfs(path, blob.size):
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": LFS_POINTER_SIZE}
            siblings.append(sibling)
        self._send_json(
            {
                "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0] if "/" in repo else None,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": r.created_at,
                "private": r.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(b.size for b in commit.files.values()),
            }
        )

    def _tree(self, repo: str, rev: str, path: str = "") -> None:
        """list_repo_tree / list_repo_files / snapshot_download. One page (no Link header)."""
        with self.hub._lock:
            r = self.hub._repo(repo)
            commit = self.hub._resolve(r, rev)
        prefix = path.strip("/")
        recursive, expand = self._flag("recursive"), self._flag("expand")
        under = {p: b for p, b in commit.files.items() if not prefix or p.startswith(prefix + "/")}
        if prefix and not under:
            raise _HttpError(404, f"{prefix} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        folders: dict[str, None] = {}
        entries = []
        for p, blob in under.items():
            parts = p.split("/")
            depth = prefix.count("/") + 1 if prefix else 0
            for i in range(depth + 1, len(parts)):  # folders between `prefix` and the file
                folders.setdefault("/".join(parts[:i]))
                if not recursive:
                    break
            if recursive or len(parts) == depth + 1:
                entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": p}
                if _is_lfs(p, blob.size):
                    entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": LFS_POINTER_SIZE}
                if expand:
                    entry["lastCommit"] = self._last_commit(r, commit, p)
                entries.append(entry)
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(f"{commit.sha}:{d}".encode()).hexdigest(), "path": d}
            for d in folders
        ]
        self._send_json(dirs + entries)

    @staticmethod
    def _last_commit(repo: _Repo, commit: Commit, path: str) -> dict:
        blob, current = commit.files[path], commit
        while current.parent and repo.commits[current.parent].files.get(path) == blob:
            current = repo.commits[current.parent]
        return {"id": current.sha, "title": current.message, "date": current.date}

    def _refs(self, repo: str) -> None:
        with self.hub._lock:
            r = self.hub._repo(repo)
            branches = {n: s for n, s in r.branches.items() if not n.startswith("refs/pr/")}
            prs = {n: s for n, s in r.branches.items() if n.startswith("refs/pr/")}
            tags = dict(r.tags)
        self._send_json(
            {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in branches.items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in tags.items()],
                "converts": [],
                "pullRequests": [{"name": n, "ref": n, "targetCommit": s} for n, s in prs.items()],
            }
        )

    def _list_commits(self, repo: str, rev: str) -> None:
        with self.hub._lock:
            r = self.hub._repo(repo)
            commit: Commit | None = self.hub._resolve(r, rev)
            items = []
            while commit is not None:
                items.append(
                    {
                        "id": commit.sha,
                        "title": commit.message.split("\n")[0],
                        "message": commit.message,
                        "date": commit.date,
                        "authors": [{"user": USER}],
                    }
                )
                commit = r.commits.get(commit.parent) if commit.parent else None
        self._send_json(items)

    def _whoami(self) -> None:
        self._send_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Local Hub User",
                "email": f"{USER}@localhost",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _validate_yaml(self) -> None:
        """create_commit / ModelCard.validate check a README.md's metadata here; we accept anything."""
        self._send_json({"errors": [], "warnings": []})

    # ---- write API

    def _create_repo(self) -> None:
        payload = self._json_body()
        if payload.get("type") not in (None, "model"):
            raise _HttpError(400, "LocalHub only serves model repos")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        with self.hub._lock:
            if self.hub.repo_exists(repo_id):  # create_repo(exist_ok=True) ignores the 409, then reads `url`
                raise _HttpError(409, "You already created this model repo", body={"error": "exists", "url": url})
            self.hub.create_repo(repo_id, private=private, gitattributes=True)
        self._send_json({"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        payload = self._json_body()
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self.hub._lock:
            self.hub._repo(repo_id)
            del self.hub._repos[repo_id]
        self._send_json({})

    def _branch(self, repo: str, branch: str) -> None:
        with self.hub._lock:
            r = self.hub._repo(repo)
            if self.command == "DELETE":
                if r.branches.pop(branch, None) is None:
                    raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            elif branch in r.branches:
                raise _HttpError(409, f"Reference already exists: refs/heads/{branch}")
            else:
                r.branches[branch] = self.hub._resolve(r, self._json_body().get("startingPoint") or "main").sha
        self._send_json({})

    def _tag(self, repo: str, rev: str) -> None:
        tag = self._json_body()["tag"]
        with self.hub._lock:
            r = self.hub._repo(repo)
            if tag in r.tags:
                raise _HttpError(409, f"Tag reference {tag} already exists")
            r.tags[tag] = self.hub._resolve(r, rev).sha
        self._send_json({})

    def _preupload(self, repo: str, rev: str) -> None:
        """Every file is "regular": its content then travels base64-encoded in the commit body."""
        files = self._json_body()["files"]
        with self.hub._lock:
            r = self.hub._repo(repo)
            head = r.resolve(rev)
            if head is None and not self._flag("create_pr") and r.commits:
                raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        existing = head.files if head else {}
        out = []
        for f in files:
            info = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in existing:  # compared to the local git-sha1 to skip unchanged files
                info["oid"] = existing[f["path"]].git_oid
            out.append(info)
        self._send_json({"files": out, "commitOid": head.sha if head else None})

    def _commit(self, repo: str, rev: str) -> None:
        """NDJSON body: {"key": "header", "value": {"summary", "description", "parentCommit"?}}, then
        one line per operation: file (base64 content), lfsFile (sha256 of a blob we hold),
        deletedFile, deletedFolder."""
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self.hub._lock:
            r = self.hub._repo(repo)
            base = r.resolve(rev)
            if base is None and r.commits:
                raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if header.get("parentCommit") and base is not None and header["parentCommit"] != base.sha:
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files) if base else {}
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = self.hub._store(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    blob = self.hub._blobs.get(value["oid"])
                    if blob is None:
                        raise _HttpError(422, f"LFS object {value['oid']} was never uploaded to LocalHub")
                    files[value["path"]] = blob
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(folder)}
            message = header.get("summary") or "Upload files"
            if header.get("description"):
                message += "\n\n" + header["description"]
            branch, pr_url = rev, None
            if self._flag("create_pr"):
                num, r.next_pr = r.next_pr, r.next_pr + 1
                branch = f"refs/pr/{num}"
                if base is not None:
                    r.branches[branch] = base.sha
                pr_url = f"{self.hub.endpoint}/{repo}/discussions/{num}"
            elif base is not None and rev not in r.branches:
                raise _HttpError(400, f"Cannot commit to {rev}: not a branch")
            sha = self.hub._commit(r, branch, files, message)
        self._send_json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.hub.endpoint}/{repo}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )


# --------------------------------------------------------------------------- client-side configuration


@dataclass(frozen=True)
class HubEnv:
    endpoint: str
    cache_dir: Path  # HF_HUB_CACHE
    hf_home: Path  # HF_HOME (token file, xet and assets caches)


def configure_hub_env(
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    cache_dir: str | os.PathLike,
    *,
    hf_home: str | os.PathLike | None = None,
) -> HubEnv:
    """Point huggingface_hub at `endpoint` with a private cache, for this process and its children.

    Environment variables are enough for subprocesses (they import huggingface_hub afresh), but this
    process has already imported it, and huggingface_hub copies them into module globals at import:
    `constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE` (hf_hub_url), `constants.HF_URL_HOSTS`,
    `utils._http._HUB_ORIGINS` (redirect / auth decisions), the cache paths, `hf_api.api` (the HfApi behind
    `huggingface_hub.model_info`, `create_repo`, ... and timm's `model_info`, built with the import-time
    endpoint) and `hf_file_system.hffs`. All are patched here and restored by `monkeypatch`.

    `cache_dir` becomes HF_HUB_CACHE; HF_HOME defaults to its parent (pass e.g. `<tmp>/hf_home/hub`).
    HF_TOKEN is removed and the token file moved into HF_HOME, so no real credential leaks into a test.
    For a module-scoped setup use `mp = pytest.MonkeyPatch()` and call `mp.undo()` at the end.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api
    import huggingface_hub.utils._http as hf_http

    endpoint = endpoint.rstrip("/")
    cache_dir = Path(cache_dir)
    hf_home = Path(hf_home) if hf_home is not None else cache_dir.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": cache_dir,
        "HUGGINGFACE_HUB_CACHE": cache_dir,
        "HF_ASSETS_CACHE": hf_home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": hf_home / "assets",
        "HF_XET_CACHE": hf_home / "xet",
        "HF_TOKEN_PATH": hf_home / "token",
    }
    env = {
        "HF_ENDPOINT": endpoint,
        **{k: str(v) for k, v in paths.items() if k != "HUGGINGFACE_ASSETS_CACHE"},
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # plain HTTP: the fake Hub has no Xet storage
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # (HUGGINGFACE_CO_STAGING would make a subprocess ignore HF_ENDPOINT.)
    for key in (
        "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING"
    ):  # fmt: skip
        monkeypatch.delenv(key, raising=False)

    old = {name: getattr(constants, name) for name in ("ENDPOINT", "HF_HUB_CACHE", "HF_ASSETS_CACHE")}
    host = urlsplit(endpoint).hostname
    values: dict[str, Any] = {k: str(v) for k, v in paths.items()}
    values |= {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_http, "_HUB_ORIGINS", hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)})

    # Modules that did `from ..constants import ENDPOINT / HF_HUB_CACHE / HF_ASSETS_CACHE`
    # (utils._cache_manager, utils._cache_assets, utils._git_credential, cli.auth, ...).
    for mod_name, module in list(sys.modules.items()):
        if module is None or mod_name == constants.__name__ or not mod_name.startswith("huggingface_hub"):
            continue
        for name, old_value in old.items():
            if getattr(module, name, None) == old_value and isinstance(old_value, str):
                monkeypatch.setattr(module, name, values[name])

    # Objects built at import time with the old endpoint.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    hffs_module = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs_module is not None:
        hffs_module.HfFileSystem.clear_instance_cache()  # fsspec caches instances with their endpoint
        monkeypatch.setattr(hffs_module.hffs, "endpoint", endpoint)
    return HubEnv(endpoint, cache_dir, hf_home)


def set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Client-side HF_HUB_OFFLINE (read into `constants.HF_HUB_OFFLINE` at import, so the env var alone
    does not reach an already imported huggingface_hub). Not to be confused with
    `LocalHub.set_offline`, which makes the *server* unreachable."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


class _NoSleepTime:
    """Stand-in for the `time` module whose sleep() returns at once."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pass


def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make huggingface_hub's retry back-off instant (http_backoff: 1+2+4+8+8 s before giving up on an
    unreachable Hub; http_get: 1 s before each resume). Only huggingface_hub's modules are affected."""
    import huggingface_hub.file_download as file_download
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http, "time", _NoSleepTime())
    monkeypatch.setattr(file_download, "time", _NoSleepTime())


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A started LocalHub that huggingface_hub talks to, with a fresh cache in `local_hub.cache_dir`."""
    from huggingface_hub.utils import close_session

    with LocalHub(tmp_path / "localhub_store") as hub:
        hub.cache_dir = configure_hub_env(monkeypatch, hub.endpoint, tmp_path / "hf_home" / "hub").cache_dir
        yield hub
    close_session()  # drop pooled keep-alive connections to the stopped server
    shutil.rmtree(tmp_path / "localhub_store", ignore_errors=True)


# --------------------------------------------------------------------------- shared helpers for test modules


def timm_config_json(tag: str, num_classes: int = 1000) -> str:
    """The `config.json` of a timm Hub repo `timm/<tag>` (what `timm.models.push_to_hf_hub` writes, trimmed)."""
    arch, _, pretrained_tag = tag.partition(".")
    return json.dumps({"architecture": arch, "num_classes": num_classes, "pretrained_cfg": {"tag": pretrained_tag}})


def upload_timm_checkpoint(
    hub: LocalHub, tag: str, weights: str | os.PathLike, filename: str = "model.safetensors", num_classes: int = 1000
) -> str:
    """Commit `weights` (a local file) as `filename` plus a timm-style config.json to `timm/<tag>`; returns the sha."""
    return hub.add_commit(f"timm/{tag}", {filename: Path(weights), "config.json": timm_config_json(tag, num_classes)})


@contextlib.contextmanager
def running_hub(root: str | os.PathLike) -> Iterator[LocalHub]:
    """A started LocalHub that huggingface_hub (this process and its children) talks to, for a whole module.

    The fixture-free form of `local_hub`: `with running_hub(tmp_path_factory.mktemp("hub")) as hub: ...`
    inside a module-scoped fixture. Blobs live under `root/store`, the client cache in `hub.cache_dir`.
    """
    from huggingface_hub.utils import close_session

    root = Path(root)
    monkeypatch = pytest.MonkeyPatch()
    try:
        with LocalHub(root / "store") as hub:
            hub.cache_dir = configure_hub_env(monkeypatch, hub.endpoint, root / "hf_home" / "hub").cache_dir
            yield hub
    finally:
        monkeypatch.undo()
        close_session()
