"""A local stand-in for the Hugging Face Hub's file endpoints and for plain file hosting.

It serves, on 127.0.0.1 at a port the OS picks, what `huggingface_hub.hf_hub_download` asks for:

- `HEAD|GET /{repo_id}/resolve/{revision}/{filename}`: 200 with `X-Repo-Commit`, `ETag` (the
  sha256, as the Hub sends for LFS files) and `Content-Length`; byte ranges (206) for resumed
  downloads; the Hub's errors with its `X-Error-Code` header: 401 `RepoNotFound` for a missing or
  private repo, 404 `RevisionNotFound`, 404 `EntryNotFound` (with `X-Repo-Commit`).
- `GET /files/{name}` for plain-URL sources: 200/206, 404, and 401 under `/private/`.

Failures can be scripted per path: `cut_once` sends the full Content-Length but only half the
body, then closes; `fail_times` answers 503 to that many GETs. Every request is logged.
HTTP/1.0 keeps it simple: one request per connection, so a stopped server is really gone.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote, unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Repo:
    commit: str
    files: Dict[str, bytes]
    private: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str] = field(default_factory=dict)  # names in lower case


class HubServer:
    """Start with `with HubServer() as hub:` or `hub.start()`; `hub.url` is the endpoint."""

    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.plain: Dict[str, bytes] = {}
        self.cut_once: set = set()
        self.fail_times: Dict[str, int] = {}
        self.log: List[Request] = []
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._port: Optional[int] = None

    # -- content ------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Dict[str, bytes], *, private: bool = False) -> str:
        """Publish files in a model repo; returns the commit hash that `main` points to."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = Repo(commit=commit, files=dict(files), private=private)
        return commit

    def add_file(self, name: str, data: bytes) -> str:
        """Publish a plain file; returns its URL."""
        self.plain[f"/files/{name}"] = data
        return f"{self.url}/files/{quote(name)}"

    def resolve_path(self, repo_id: str, filename: str, revision: str = "main") -> str:
        return f"/{repo_id}/resolve/{revision}/{filename}"

    # -- scripted failures and the log ----------------------------------------------------------

    def requests(self, method: Optional[str] = None, path: Optional[str] = None) -> List[Request]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and (path is None or r.path == path)]

    def _take(self, path: str, method: str) -> Tuple[bool, bool]:
        """(answer 503 now, cut this body off) for a request."""
        with self._lock:
            if method == "GET" and self.fail_times.get(path, 0) > 0:
                self.fail_times[path] -= 1
                return True, False
            if method == "GET" and path in self.cut_once:
                self.cut_once.discard(path)
                return False, True
            return False, False

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port or 0), handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        raw_path = urlsplit(self.path).path
        path = unquote(raw_path)
        with self.hub._lock:
            self.hub.log.append(Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        fail, cut = self.hub._take(path, self.command)
        if fail:
            return self._reply(503, b"busy", {})
        m = _RESOLVE.match(raw_path)
        if m:
            return self._serve_hub(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), cut)
        if path.startswith("/private/"):
            return self._reply(401, b"login required", {})
        data = self.hub.plain.get(path)
        if data is None:
            return self._reply(404, b"not found", {})
        self._send_file(data, {}, cut)

    def _serve_hub(self, repo_id: str, revision: str, filename: str, cut: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or repo.private:  # the Hub does not tell missing from private without a token
            return self._reply(401, b"", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if revision not in ("main", repo.commit):
            return self._reply(404, b"", {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
        data = repo.files.get(filename)
        if data is None:
            return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                                          "X-Repo-Commit": repo.commit})
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._send_file(data, {"X-Repo-Commit": repo.commit, "ETag": etag}, cut)

    def _send_file(self, data: bytes, headers: Dict[str, str], cut: bool) -> None:
        start, status = 0, 200
        m = _RANGE.match(self.headers.get("Range", ""))
        if m and int(m[1]) < len(data):
            start, status = int(m[1]), 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        self.send_response(status)
        for k, v in {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body[: len(body) // 2] if cut else body)
        # With HTTP/1.0 the connection closes now: a cut body ends short of its Content-Length.

    def _reply(self, status: int, body: bytes, headers: Dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
