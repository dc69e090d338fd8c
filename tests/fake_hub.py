"""A stand-in for the Hugging Face hub on 127.0.0.1: serves folders as model repos with the endpoints and
headers huggingface_hub uses (repo info, file tree, resolve with ETag/X-Repo-Commit/Range). Faults are set
per file: `stall` (send N bytes, then wait), `drop_once` (send N bytes, close the connection, once),
`sizes` (announce another size, e.g. one no disk has)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.requests: list[tuple[str, str, str]] = []  # (method, path in repo or API path, Range header)
        self.stall: dict[str, int] = {}
        self.drop_once: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def gets(self, name: str) -> list[str]:
        """The Range headers of every GET of a repo file (empty string: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p == name]

    def _entry(self, repo: str, name: str) -> dict:
        data = (self.repos[repo] / name).read_bytes()
        size = self.sizes.get(name, len(data))
        entry = {"type": "file", "path": name, "size": size, "oid": hashlib.sha1(data).hexdigest()}
        if name.endswith(".safetensors"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
        return entry

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _json(self, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self, method: str) -> None:
                path = unquote(urlparse(self.path).path)
                if path.startswith("/api/models/"):
                    hub.requests.append((method, path, ""))
                    parts = path[len("/api/models/"):].split("/")
                    repo = "/".join(parts[:2])
                    if repo not in hub.repos:
                        return self._missing()
                    if parts[2:3] == ["revision"]:
                        return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                           "siblings": [{"rfilename": f} for f in hub.files(repo)]})
                    if parts[2:3] == ["tree"]:
                        return self._json([hub._entry(repo, f) for f in hub.files(repo)])
                    return self._missing()
                parts = path.lstrip("/").split("/")
                repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                if repo not in hub.repos or parts[2:3] != ["resolve"] or not (hub.repos[repo] / name).is_file():
                    return self._missing()
                data = (hub.repos[repo] / name).read_bytes()
                entry = hub._entry(repo, name)
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    start = int(rng[len("bytes="):].split("-")[0])
                hub.requests.append((method, name, rng))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                etag = entry.get("lfs", {}).get("oid") or entry["oid"]
                self.send_header("ETag", f'"{etag}"')
                if "lfs" in entry:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(entry["size"]))
                body = data[start:]
                self.send_header("Content-Length", str(entry["size"] - start if method == "HEAD" else len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if method == "HEAD":
                    return
                if name in hub.stall:
                    self.wfile.write(body[: hub.stall[name]])
                    self.wfile.flush()
                    while not hub.release.wait(0.1):  # hold the connection open until the test ends
                        pass
                    return
                if name in hub.drop_once:
                    cut = hub.drop_once.pop(name)
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    time.sleep(0.05)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def do_HEAD(self):
                self._route("HEAD")

            def do_GET(self):
                self._route("GET")

        return Handler
