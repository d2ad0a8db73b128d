"""A small HTTP server on 127.0.0.1 that answers the Hugging Face Hub's file protocol.

``GET/HEAD /{repo}/resolve/{revision}/{file}`` (and ``/datasets/{repo}/…``) with the headers
huggingface_hub reads (ETag, X-Repo-Commit, Content-Length) and its error codes (RepoNotFound,
RevisionNotFound, EntryNotFound); ``GET /api/models/{repo}/refs``; and a dataset's files as the tree API
lists them (``GET /api/datasets/{repo}/tree/{revision}?recursive=true``, ``tree_page`` entries a page,
the next page named in a Link header). A revision that is a 40-hex commit is its own commit. The real
huggingface_hub client code runs against it; faults can be planted: the next N requests fail with 503,
or the next download is cut short; ``bandwidth`` (bytes/s) throttles every body to one shared link, as a
real network would. ``black_hole`` is an endpoint that accepts connections and never answers.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, dict[str, bytes]]] = {}
        self.fail_next = 0
        self.fail_status = 503
        self.truncate_next = 0
        self.fail_share = 0.0  # a seeded share of all requests fails, alternately with 503 and 504 (gateway timeout)
        self._rng = random.Random(0)
        self.bandwidth: float | None = None
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._link = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.tree_page = 1000  # entries per page of the tree API, as the Hub pages it

    def add(self, repo: str, revision: str, files: dict[str, bytes], repo_type: str = "model") -> None:
        self.repos.setdefault((repo_type, repo), {})[revision] = files

    def add_folder(self, repo: str, revision: str, folder: Path) -> None:
        self.add(repo, revision, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _error(self, req: BaseHTTPRequestHandler, status: int, code: str | None, commit: str | None = None) -> None:
        req.send_response(status)
        if code:
            req.send_header("X-Error-Code", code)
            req.send_header("X-Error-Message", code)
        if commit:
            req.send_header("X-Repo-Commit", commit)
        req.send_header("Content-Length", "0")
        req.end_headers()

    def _answer(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(req.path.split("?", 1)[0]).lstrip("/")
        repo_type = "model"
        if path.startswith("datasets/"):
            repo_type, path = "dataset", path[len("datasets/"):]
        parts = path.split("/")
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.log.append((req.command, path, self.fail_status))
                return self._error(req, self.fail_status, None)
            if self.fail_share and self._rng.random() < self.fail_share:
                status = 503 if len(self.log) % 2 else 504
                self.log.append((req.command, path, status))
                return self._error(req, status, None)
            truncate = body and self.truncate_next > 0
            if truncate:
                self.truncate_next -= 1
        if path.startswith("api/models/") and path.endswith("/refs"):
            return self._refs(req, path[len("api/models/"):-len("/refs")])
        if path.startswith("api/datasets/") and "/tree/" in path:
            repo, revision = path[len("api/datasets/"):].split("/tree/", 1)
            return self._tree(req, repo, revision.strip("/"), req.path)
        if len(parts) < 5 or parts[2] != "resolve":
            self.log.append((req.command, path, 404))
            return self._error(req, 404, "RepoNotFound")
        repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        revisions = self.repos.get((repo_type, repo))
        if revisions is None:
            self.log.append((req.command, path, 401))
            return self._error(req, 401, "RepoNotFound")
        if revision == "main" and "main" not in revisions:
            revision = sorted(revisions, key=lambda r: int(r.removeprefix("step")) if r[4:].isdigit() else -1)[-1]
        if revision not in revisions:
            self.log.append((req.command, path, 404))
            return self._error(req, 404, "RevisionNotFound")
        commit = _commit(repo, revision)
        data = revisions[revision].get(filename)
        if data is None:
            self.log.append((req.command, path, 404))
            return self._error(req, 404, "EntryNotFound", commit)
        self.log.append((req.command, path, 200))
        req.send_response(200)
        req.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        req.send_header("X-Repo-Commit", commit)
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Content-Type", "application/octet-stream")
        req.end_headers()
        if body:
            self._send(req, data[: len(data) // 2] if truncate else data)
            if truncate:
                req.close_connection = True

    def _refs(self, req: BaseHTTPRequestHandler, repo: str) -> None:
        """``GET /api/models/{repo}/refs``: every revision as a branch (and main), as the Hub lists them."""
        revisions = self.repos.get(("model", repo))
        if revisions is None:
            self.log.append((req.command, f"api/models/{repo}/refs", 401))
            return self._error(req, 401, "RepoNotFound")
        names = sorted(set(revisions) | {"main"})
        body = json.dumps({"branches": [{"name": n, "ref": f"refs/heads/{n}",
                                         "targetCommit": hashlib.sha1(f"{repo}@{n}".encode()).hexdigest()}
                                        for n in names], "converts": [], "tags": []}).encode()
        self.log.append((req.command, f"api/models/{repo}/refs", 200))
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _tree(self, req: BaseHTTPRequestHandler, repo: str, revision: str, raw_path: str) -> None:
        """The files (and their folders) of a dataset revision, one page at a time from ``cursor``."""
        revisions = self.repos.get(("dataset", repo))
        if revisions is None or revision not in revisions:
            self.log.append((req.command, f"api/datasets/{repo}/tree/{revision}", 404 if revisions else 401))
            return self._error(req, 404 if revisions else 401, "RevisionNotFound" if revisions else "RepoNotFound")
        files = sorted(revisions[revision])
        folders = sorted({"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)})
        entries = [{"type": "directory", "path": d, "oid": _commit(repo, d), "size": 0} for d in folders]
        entries += [{"type": "file", "path": f, "size": len(revisions[revision][f]),
                     "oid": hashlib.sha1(revisions[revision][f]).hexdigest()} for f in files]
        entries.sort(key=lambda e: e["path"])
        query = raw_path.split("?", 1)[1] if "?" in raw_path else ""
        cursor = int(dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv).get("cursor", 0))
        page = entries[cursor:cursor + self.tree_page]
        body = json.dumps(page).encode()
        self.log.append((req.command, f"api/datasets/{repo}/tree/{revision}", 200))
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        if cursor + self.tree_page < len(entries):
            req.send_header("Link", f'<{self.url}/api/datasets/{repo}/tree/{revision}?recursive=true&cursor='
                                    f'{cursor + self.tree_page}>; rel="next"')
        req.end_headers()
        req.wfile.write(body)

    def _send(self, req: BaseHTTPRequestHandler, payload: bytes, chunk: int = 1 << 16) -> None:
        if not self.bandwidth:
            req.wfile.write(payload)
            return
        for start in range(0, len(payload), chunk):
            piece = payload[start:start + chunk]
            with self._link:  # one link: concurrent downloads share the bandwidth
                time.sleep(len(piece) / self.bandwidth)
            req.wfile.write(piece)


def _commit(repo: str, revision: str) -> str:
    """The commit a revision resolves to: itself when it is one, else a stable made-up one."""
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def black_hole() -> tuple[socket.socket, str]:
    """A server that accepts connections and never answers: the slowest way for an endpoint to be dead."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(server.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"
