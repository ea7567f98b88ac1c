"""A Hugging Face hub for tests: a cache folder laid out exactly as huggingface_hub lays it out, and a small
HTTP server that answers the hub's API the way huggingface.co does (the endpoints snapshot_download uses).

Layout of a cached repo (huggingface_hub's "cache system"):

    models--org--name/
      blobs/<blob id>                 file contents; LFS files are named by their sha256, others by git blob sha1
      snapshots/<commit>/<file>       relative symlinks to ../../blobs/<blob id>
      refs/<branch or tag>            the commit hash, no newline
      trees/<commit>.json             (optional) the repo's file listing at that commit
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def blob_id(name: str, data: bytes) -> str:
    """The name huggingface_hub gives a blob: the etag, i.e. sha256 for LFS files, git sha1 for the others."""
    return hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_sha1(data)


def commit_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


@dataclass
class HubRepo:
    """One model repo: commits (hash -> files) and refs (branch/tag -> hash)."""

    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False

    def add_commit(self, files: dict[str, bytes], *, refs: tuple[str, ...] = ("main",), label: str | None = None) -> str:
        sha = commit_hash(label or f"{self.repo_id}:{len(self.commits)}")
        self.commits[sha] = dict(files)
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)

    def tree(self, sha: str) -> list[dict]:
        out = []
        for name, data in sorted(self.commits[sha].items()):
            entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
            if is_lfs(name):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return out


def model_files(folder: Path) -> dict[str, bytes]:
    """Every file of a local model folder, by relative name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def write_hub_cache(cache: Path, repo: HubRepo, *, only_commits: tuple[str, ...] | None = None,
                    with_trees: bool = True) -> Path:
    """Lay `repo` out in the hub cache folder `cache` (HF_HUB_CACHE); returns the repo's storage folder."""
    storage = Path(cache) / ("models--" + repo.repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for sha, files in repo.commits.items():
        if only_commits is not None and sha not in only_commits:
            continue
        snap = storage / "snapshots" / sha
        for name, data in files.items():
            blob = storage / "blobs" / blob_id(name, data)
            if not blob.exists():
                blob.write_bytes(data)
            link = snap / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(os.path.relpath(blob, link.parent), link)
        if with_trees:
            (storage / "trees").mkdir(exist_ok=True)
            entries = {e["path"]: {"size": e["size"], "blob_id": e["oid"],
                                   **({"lfs_sha256": e["lfs"]["oid"], "lfs_size": e["lfs"]["size"]} if "lfs" in e else {})}
                       for e in repo.tree(sha)}
            (storage / "trees" / f"{sha}.json").write_text(json.dumps({"format_version": 1, "files": entries}))
    (storage / "refs").mkdir(exist_ok=True)
    for ref, sha in repo.refs.items():
        if only_commits is None or sha in only_commits:
            path = storage / "refs" / ref
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(sha)
    return storage


class FakeHub:
    """An HTTP server speaking the hub API subset huggingface_hub's downloads use; point HF_ENDPOINT at `url`."""

    def __init__(self, repos: list[HubRepo], token: str = "hf_test_token") -> None:
        self.repos = {r.repo_id: r for r in repos}
        self.token = token
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, message: str = "") -> None:
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        if message:
            h.send_header("X-Error-Message", message)
        body = json.dumps({"error": message or code or "error"}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, data: object, head: bool) -> None:
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _authorised(self, h: BaseHTTPRequestHandler) -> bool:
        return h.headers.get("Authorization") == f"Bearer {self.token}"

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str) -> HubRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorised(h)):
            self._error(h, 401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and not self._authorised(h):
            self._error(h, 403, "GatedRepo", "Access to model is restricted")
            return None
        return repo

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        self.requests.append((h.command, url.path))
        # /api/models/{org}/{name}/revision/{rev} and /api/models/{org}/{name}/tree/{rev}
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo = self._repo(h, f"{parts[2]}/{parts[3]}")
            if repo is None:
                return
            sha = repo.resolve(parts[5])
            if sha is None:
                self._error(h, 404, "RevisionNotFound", "Invalid rev id")
                return
            if parts[4] == "revision":
                self._json(h, {"id": repo.repo_id, "sha": sha, "private": repo.private, "gated": repo.gated,
                               "siblings": [{"rfilename": n} for n in sorted(repo.commits[sha])]}, head)
            else:
                self._json(h, repo.tree(sha), head)
            return
        # /{org}/{name}/resolve/{rev}/{file...}
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(h, f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            sha = repo.resolve(parts[3])
            if sha is None:
                self._error(h, 404, "RevisionNotFound", "Invalid rev id")
                return
            name = "/".join(parts[4:])
            data = repo.commits[sha].get(name)
            if data is None:
                self._error(h, 404, "EntryNotFound", "Entry not found")
                return
            h.send_response(200)
            h.send_header("X-Repo-Commit", sha)
            etag = blob_id(name, data)
            h.send_header("ETag", f'"{etag}"')
            if is_lfs(name):
                h.send_header("X-Linked-Etag", f'"{etag}"')
                h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            if not head:
                h.wfile.write(data)
            return
        self._error(h, 404, None, f"no route for {url.path}")
