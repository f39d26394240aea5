"""A small fake Hugging Face Hub over real HTTP, for offline tests of `push_to_hub` / `from_pretrained`.

It implements the endpoints that ``huggingface_hub`` (2.x) calls for ``create_repo``, ``upload_folder`` /
``upload_file`` / ``create_commit``, ``repo_info`` / ``model_info``, ``list_repo_files`` / ``list_repo_tree``,
``whoami`` and downloads (``hf_hub_download`` / ``snapshot_download``: HEAD + GET on ``/{repo}/resolve/{rev}/{path}``
with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``). The preupload endpoint answers ``"regular"`` for every
file, so content arrives base64-encoded inside the NDJSON commit body and neither LFS nor Xet storage is needed;
an ``lfsFile`` commit entry is rejected with a clear error.

Storage is content addressed under ``root``: ``blobs/<git sha1>`` holds every uploaded file, and each repository's
current ``main`` branch is also checked out under ``root/<type>s/<namespace>/<name>/`` so tests can read the
uploaded bytes directly. Commits and refs are kept in memory (``FakeHub.repos``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
USER = "local-user"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as a regular file's ``oid``/``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    commits: dict[str, dict] = field(default_factory=dict)  # sha -> {"tree": {path: blob}, "parent", "title", "date"}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha

    def resolve(self, revision: str) -> str:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Revision {revision!r} not found in {self.repo_id}.", "RevisionNotFound")


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 (random port) storing repositories under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection helpers for tests ------------------------------------------------------------------------
    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """Checkout of the ``main`` branch (updated at every commit to ``main``)."""
        return self.root / f"{repo_type}s" / repo_id

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: bytes}`` of a revision."""
        with self.lock:
            repo = self._repo(repo_type, repo_id)
            tree = repo.commits[repo.resolve(revision)]["tree"]
            return {path: self._blob(blob) for path, blob in sorted(tree.items())}

    def commit_titles(self, repo_id: str, repo_type: str = "model") -> list[str]:
        with self.lock:
            repo = self._repo(repo_type, repo_id)
            titles, sha = [], repo.refs.get("main")
            while sha:
                titles.append(repo.commits[sha]["title"])
                sha = repo.commits[sha]["parent"]
            return titles

    # -- storage ---------------------------------------------------------------------------------------------
    def _blob(self, blob: str) -> bytes:
        return (self.root / "blobs" / blob).read_bytes()

    def _put_blob(self, data: bytes) -> str:
        blob = git_blob_sha1(data)
        path = self.root / "blobs" / blob
        if not path.exists():
            path.write_bytes(data)
        return blob

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found.", "RepoNotFound") from None

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_id, repo_type, private)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", {}, "initial commit", None)
            return repo

    def _commit(self, repo: Repo, branch: str, tree: dict[str, str], title: str, parent: str | None) -> str:
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        payload = json.dumps({"tree": tree, "parent": parent, "title": title, "n": len(repo.commits)}, sort_keys=True)
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo.commits[sha] = {"tree": dict(tree), "parent": parent, "title": title, "date": date}
        repo.refs[branch] = sha
        if branch == "main":
            self._checkout(repo, tree)
        return sha

    def _checkout(self, repo: Repo, tree: dict[str, str]) -> None:
        base = self.repo_dir(repo.repo_id, repo.repo_type)
        if base.exists():
            for path in sorted(base.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
        base.mkdir(parents=True, exist_ok=True)
        for rel, blob in tree.items():
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._blob(blob))

    def apply_commit(self, repo_type: str, repo_id: str, revision: str, lines: list[dict]) -> str:
        """Apply an NDJSON commit body (header, file, deletedFile, deletedFolder) to ``revision``."""
        with self.lock:
            repo = self._repo(repo_type, repo_id)
            if revision not in repo.refs:
                raise HubError(404, f"Branch {revision!r} not found in {repo_id}.", "RevisionNotFound")
            head = repo.refs[revision]
            tree = dict(repo.commits[head]["tree"])
            header = next((line["value"] for line in lines if line.get("key") == "header"), None)
            if header is None:
                raise HubError(400, "Commit body has no header line.")
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, f"parentCommit {parent} is not the head {head} of {revision!r}.")
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "header":
                    continue
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}.")
                    tree[path] = self._put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    tree = {p: b for p, b in tree.items() if not p.startswith(prefix)}
                elif key == "lfsFile":
                    raise HubError(422, f"{path}: the fake Hub only accepts regular (inline base64) uploads.")
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}.")
            return self._commit(repo, revision, tree, header.get("summary", ""), head)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing --------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json"
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self):
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, url.path))
        try:
            self._route(url.path, parse_qs(url.query))
        except HubError as e:
            headers = {"X-Error-Code": e.code} if e.code else {}
            self._json(e.status, {"error": e.message}, {**headers, "X-Error-Message": e.message})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routes ----------------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        method = self.command
        if parts[:2] == ["api", "whoami-v2"]:
            return self._json(200, {"type": "user", "name": USER, "fullname": USER, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(self._body() or b"{}"))
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(self._body() or b"{}"))
        if len(parts) >= 4 and parts[0] == "api" and parts[1].rstrip("s") in REPO_TYPES:
            return self._api_repo(parts[1].rstrip("s"), f"{parts[2]}/{parts[3]}", parts[4:], query)
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0].rstrip("s"), parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"The fake Hub does not implement {method} {path}.")

    def _validate_yaml(self, payload: dict):
        import yaml

        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", payload.get("content", ""), flags=re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                return self._json(400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "Metadata must be a mapping."}], "warnings": []})
        return self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        private = payload.get("private") or payload.get("visibility") == "private"
        self.hub.create_repo(repo_id, repo_type, bool(private))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(200, {"url": f"{self.hub.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def _api_repo(self, repo_type: str, repo_id: str, rest: list[str], query: dict):
        hub, method = self.hub, self.command
        with hub.lock:
            repo = hub._repo(repo_type, repo_id)
        if rest[:1] == ["preupload"] and method == "POST":
            payload = json.loads(self._body())
            with hub.lock:
                tree = repo.commits[repo.resolve(unquote(rest[1]) if len(rest) > 1 else "main")]["tree"]
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": tree.get(f["path"])}
                for f in payload.get("files", [])
            ]
            return self._json(200, {"files": files, "commitOid": repo.refs.get("main")})
        if rest[:1] == ["commit"] and method == "POST":
            if query.get("create_pr", ["0"])[0] not in ("0", "", "false", "False"):
                raise HubError(400, "The fake Hub does not support create_pr=True.")
            revision = unquote(rest[1]) if len(rest) > 1 else "main"
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            sha = hub.apply_commit(repo_type, repo_id, revision, lines)
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            return self._json(200, {"success": True, "commitOid": sha, "pullRequestUrl": None,
                                    "commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{sha}"})
        if rest[:1] == ["tree"] and method == "GET":
            return self._tree(repo, unquote(rest[1]) if len(rest) > 1 else "main", "/".join(rest[2:]), query)
        if not rest or (rest[0] == "revision" and len(rest) >= 2):
            return self._info(repo, "/".join(rest[1:]) if rest else "main")
        raise HubError(404, f"The fake Hub does not implement {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}.")

    def _info(self, repo: Repo, revision: str):
        with self.hub.lock:
            sha = repo.resolve(revision)
            commit = repo.commits[sha]
            tree = commit["tree"]
            blobs = {p: b for p, b in tree.items()}
        siblings = [
            {"rfilename": p, "blobId": b, "size": (self.hub.root / "blobs" / b).stat().st_size}
            for p, b in sorted(blobs.items())
        ]
        self._json(200, {
            "id": repo.repo_id, "_id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": sha,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": commit["date"], "createdAt": commit["date"], "siblings": siblings,
        })

    def _tree(self, repo: Repo, revision: str, prefix: str, query: dict):
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.hub.lock:
            tree = dict(repo.commits[repo.resolve(revision)]["tree"])
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        if prefix and prefix not in tree and not any(p.startswith(base) for p in tree):
            raise HubError(404, f"{prefix} does not exist in {repo.repo_id}@{revision}.", "EntryNotFound")
        entries, folders = [], set()
        for path, blob in sorted(tree.items()):
            if not path.startswith(base):
                continue
            rel_parts = path[len(base):].split("/")
            for depth in range(1, len(rel_parts)):
                if recursive or depth == 1:
                    folders.add(base + "/".join(rel_parts[:depth]))
            if recursive or len(rel_parts) == 1:
                size = (self.hub.root / "blobs" / blob).stat().st_size
                entries.append({"type": "file", "oid": blob, "size": size, "path": path})
        for folder in sorted(folders):
            entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                            "path": folder})
        self._json(200, sorted(entries, key=lambda e: e["path"]))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        with self.hub.lock:
            repo = self.hub._repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            blob = repo.commits[sha]["tree"].get(path)
        if blob is None:
            raise HubError(404, f"{path} not found in {repo_id}@{revision}.", "EntryNotFound")
        data = self.hub._blob(blob)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Accept-Ranges": "bytes"}
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")


def start_fake_hub(root: str | Path) -> FakeHub:
    """Start a fake Hub storing under ``root``; call ``.stop()`` (or use it as a context manager) when done."""
    return FakeHub(root).start()
