"""The fake Hub (tests/hub_server.py) against the real huggingface_hub client."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import LocalHub, fast_retries, local_hub, set_offline  # noqa: F401

REPO = "org/tiny"
WEIGHTS = "model.safetensors"
CONFIG = b'{"depth": 2}'


def _weights(seed: int, size: int = 200_000) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def _snapshot_files(hub: LocalHub, repo_id: str = REPO) -> list[Path]:
    folder = hub.cache_dir / f"models--{repo_id.replace('/', '--')}"
    return [p for p in folder.glob("snapshots/*/**/*") if p.is_file()]


def test_download_then_served_from_cache(local_hub):
    sha = local_hub.add_commit(REPO, {"config.json": CONFIG, WEIGHTS: _weights(0)})

    path = hf_hub_download(REPO, WEIGHTS)
    assert Path(path).read_bytes() == _weights(0)
    assert f"/snapshots/{sha}/" in path and Path(path).resolve().parent.name == "blobs"
    assert len(local_hub.file_requests(WEIGHTS, "GET")) == 1

    local_hub.clear_log()
    assert hf_hub_download(REPO, WEIGHTS) == path
    # Second call: one HEAD to check `main`, no GET of the weights.
    assert local_hub.request_log == [("HEAD", f"/{REPO}/resolve/main/{WEIGHTS}")]

    # A commit sha already in the cache is not even checked.
    local_hub.clear_log()
    assert hf_hub_download(REPO, WEIGHTS, revision=sha) == path
    assert local_hub.request_log == []


def test_pinned_revision_after_new_commit(local_hub):
    old = local_hub.add_commit(REPO, {WEIGHTS: _weights(1)}, "v1")
    assert Path(hf_hub_download(REPO, WEIGHTS)).read_bytes() == _weights(1)
    new = local_hub.add_commit(REPO, {WEIGHTS: _weights(2)}, "v2")
    assert [c.sha for c in local_hub.commits(REPO)] == [old, new]

    assert Path(hf_hub_download(REPO, WEIGHTS, revision=old)).read_bytes() == _weights(1)
    assert Path(hf_hub_download(REPO, WEIGHTS)).read_bytes() == _weights(2)
    # An old commit that was never cached is fetched from the server too.
    other_cache = local_hub.cache_dir.parent / "other"
    assert Path(hf_hub_download(REPO, WEIGHTS, revision=old, cache_dir=other_cache)).read_bytes() == _weights(1)

    local_hub.create_tag(REPO, "v1", old)
    local_hub.create_branch(REPO, "dev", old)
    assert Path(hf_hub_download(REPO, WEIGHTS, revision="v1")).read_bytes() == _weights(1)
    assert Path(hf_hub_download(REPO, WEIGHTS, revision="dev")).read_bytes() == _weights(1)


def test_client_offline_mode(local_hub, monkeypatch):
    local_hub.add_commit(REPO, {"config.json": CONFIG, WEIGHTS: _weights(0)})
    path = hf_hub_download(REPO, WEIGHTS)
    local_hub.clear_log()

    set_offline(monkeypatch, True)
    assert hf_hub_download(REPO, WEIGHTS) == path
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")
    assert local_hub.request_log == []

    set_offline(monkeypatch, False)
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == CONFIG


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_server_unreachable_falls_back_to_cache(local_hub, monkeypatch, mode):
    fast_retries(monkeypatch)  # without it, the uncached case backs off for ~23 s
    local_hub.add_commit(REPO, {"config.json": CONFIG, WEIGHTS: _weights(0)})
    path = hf_hub_download(REPO, WEIGHTS)

    local_hub.set_offline(True, mode=mode)
    assert hf_hub_download(REPO, WEIGHTS) == path
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")
    assert Path(snapshot_download(REPO, allow_patterns=[WEIGHTS])).is_dir()

    local_hub.set_offline(False)
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == CONFIG


def test_connection_reset_is_not_treated_as_offline(local_hub):
    # Documents huggingface_hub's behaviour: only ConnectError/timeouts/HTTP errors fall back to the cache.
    local_hub.add_commit(REPO, {WEIGHTS: _weights(0)})
    hf_hub_download(REPO, WEIGHTS)
    local_hub.set_offline(True, mode="reset")
    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
        hf_hub_download(REPO, WEIGHTS)


def test_interrupted_download_is_resumed_with_range(local_hub, monkeypatch):
    import huggingface_hub.constants

    fast_retries(monkeypatch)
    # http_get only keeps whole DOWNLOAD_CHUNK_SIZE (10 MB) chunks of a cut download: shrink it so
    # that the 1000 bytes received before the cut are kept and the retry asks for the rest.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 500)
    local_hub.add_commit(REPO, {WEIGHTS: _weights(3)})
    local_hub.fail_next_download(WEIGHTS, after_bytes=1000)

    assert Path(hf_hub_download(REPO, WEIGHTS)).read_bytes() == _weights(3)
    gets = local_hub.file_requests(WEIGHTS, "GET")
    assert [r.headers.get("range") for r in gets] == [None, "bytes=1000-"]


def test_failed_download_leaves_no_file_and_retry_succeeds(local_hub, monkeypatch):
    fast_retries(monkeypatch)
    local_hub.add_commit(REPO, {WEIGHTS: _weights(4)})
    local_hub.fail_next_download(WEIGHTS, after_bytes=0, times=6)  # http_get: 1 try + 5 retries

    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, WEIGHTS)
    assert _snapshot_files(local_hub) == []
    assert list(local_hub.cache_dir.glob("models--*/blobs/*")) == []  # no .incomplete left behind

    assert Path(hf_hub_download(REPO, WEIGHTS)).read_bytes() == _weights(4)


def test_missing_repo_revision_entry(local_hub):
    local_hub.add_commit(REPO, {"config.json": CONFIG})
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/nope")


def test_model_info_and_tree(local_hub):
    sha = local_hub.add_commit(REPO, {"config.json": CONFIG, WEIGHTS: _weights(0), "sub/notes.txt": b"hi"})
    api = HfApi()

    info = api.model_info(REPO)
    assert info.id == REPO and info.sha == sha
    assert sorted(s.rfilename for s in info.siblings) == ["config.json", WEIGHTS, "sub/notes.txt"]

    info = api.model_info(REPO, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings[WEIGHTS].size == len(_weights(0)) and siblings[WEIGHTS].lfs.size == len(_weights(0))
    assert siblings["config.json"].lfs is None

    assert sorted(api.list_repo_files(REPO)) == ["config.json", WEIGHTS, "sub/notes.txt"]
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    assert top == {"sub": "RepoFolder", "config.json": "RepoFile", WEIGHTS: "RepoFile"}
    assert [r.name for r in api.list_repo_refs(REPO).branches] == ["main"]


def test_create_repo_and_upload_folder(local_hub, tmp_path):
    api = HfApi(token="hf_any_token_is_accepted")  # (other tests send none)
    url = api.create_repo("org/published", private=True)
    assert url.repo_id == "org/published"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/published")
    assert err.value.response.status_code == 409
    api.create_repo("org/published", exist_ok=True)
    assert api.create_repo("unscoped").repo_id == "local-user/unscoped"
    assert api.whoami()["name"] == "local-user"  # the client needs a token for this one
    assert local_hub.requests[-1].headers["authorization"] == "Bearer hf_any_token_is_accepted"

    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    files = {
        "config.json": json.dumps({"name": "tiny", "depth": 2}).encode(),
        "pytorch_model.bin": os.urandom(3 * 1024 * 1024),
        "sub/extra.txt": b"nested",
        "README.md": b"---\nlibrary_name: timm\n---\n# tiny\n",  # create_commit validates its YAML
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    info = api.upload_folder(repo_id="org/published", folder_path=folder, commit_message="Upload tiny")
    assert info.oid == local_hub.resolve("org/published").sha
    assert [c.message for c in local_hub.commits("org/published")] == ["initial commit", "Upload tiny"]
    assert api.model_info("org/published").private is True
    for name, data in files.items():
        assert local_hub.read_file("org/published", name) == data
        assert Path(hf_hub_download("org/published", name)).read_bytes() == data

    # Re-uploading identical files: the client skips them (preupload `oid`) => no new commit.
    api.upload_folder(repo_id="org/published", folder_path=folder)
    assert len(local_hub.commits("org/published")) == 2
    # A change makes a new commit on top of the previous snapshot.
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="sub/extra.txt", repo_id="org/published")
    assert local_hub.read_file("org/published", "sub/extra.txt") == b"v2"
    assert local_hub.read_file("org/published", "config.json") == files["config.json"]


def test_snapshot_download(local_hub):
    files = {"config.json": CONFIG, WEIGHTS: _weights(5), "sub/notes.txt": b"hi"}
    sha = local_hub.add_commit(REPO, files)

    folder = Path(snapshot_download(REPO))
    assert folder.name == sha
    assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files

    only_config = Path(snapshot_download(REPO, allow_patterns=["*.json"], cache_dir=local_hub.cache_dir / "x"))
    assert [p.name for p in only_config.rglob("*") if p.is_file()] == ["config.json"]


def test_subprocess_uses_env_vars_only(local_hub):
    local_hub.add_commit(REPO, {"config.json": CONFIG})
    code = "from huggingface_hub import hf_hub_download; print(hf_hub_download('org/tiny', 'config.json'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    path = Path(out.stdout.strip())
    assert path.read_bytes() == CONFIG and path.is_relative_to(local_hub.cache_dir)
    assert local_hub.file_requests("config.json", "GET")
