"""Talking to the Hugging Face Hub: which weight file a repo has, its etag, downloads.

Everything goes through `huggingface_hub` (its cache, progress bars,
`HF_ENDPOINT`, `HF_HUB_OFFLINE`, tokens). Its download functions are imported
with this module, not on first use: importing their module is start-up work,
which belongs with the imports, not inside the first load.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    FileMetadataError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsUnavailableError(OSError):
    """The weights can be found neither on the Hub nor in a local cache."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of one commit of a Hub repo, with the etag naming its content."""

    repo_id: str
    filename: str
    commit: str
    etag: str

    def as_dict(self):
        return {"repo_id": self.repo_id, "filename": self.filename, "revision": self.commit, "etag": self.etag}


def weight_files(tag):
    """Files to look for in a timm repo, safetensors first; open_clip files only for clip tags."""
    if ".clip" not in tag:
        return WEIGHT_FILES
    return WEIGHT_FILES[:1] + CLIP_WEIGHT_FILES[:1] + WEIGHT_FILES[1:] + CLIP_WEIGHT_FILES[1:]


def is_offline(local_files_only):
    """True when no request may be made (`local_files_only=True` or HF_HUB_OFFLINE=1)."""
    return bool(local_files_only) or constants.is_offline_mode()


def is_unreachable(error):
    """True for errors meaning "no answer from the Hub" (as opposed to "the Hub says no")."""
    if isinstance(error, (httpx2.TransportError, OfflineModeIsEnabled, FileMetadataError)):
        return True
    status = getattr(getattr(error, "response", None), "status_code", None)
    return isinstance(error, HfHubHTTPError) and status is not None and (status >= 500 or status == 429)


def locate(repo_id, filenames, revision, token=None):
    """The first of `filenames` present in `repo_id` at `revision` (one HEAD request per file tried).

    Raises the Hub's own errors (unknown repo or revision, no access), or
    WeightsUnavailableError when none of the files exists.
    """
    for filename in filenames:
        url = hf_hub_url(repo_id, filename, revision=revision)
        try:
            meta = get_hf_file_metadata(url, token=token)
        except EntryNotFoundError:
            continue
        if meta.commit_hash is None or meta.etag is None:
            raise FileMetadataError(f"{url}: the response lacks the commit or etag headers of a Hub endpoint")
        return RemoteFile(repo_id, filename, meta.commit_hash, meta.etag)
    raise WeightsUnavailableError(
        f"{repo_id} at revision {revision!r} has none of the weight files {', '.join(filenames)}"
    )


def download(remote, token=None):
    """Local path of `remote` (from huggingface_hub's cache, downloading it if needed)."""
    return hf_hub_download(remote.repo_id, remote.filename, revision=remote.commit, token=token)


def from_hf_cache(repo_id, filenames, revision):
    """`(RemoteFile, path)` for the first of `filenames` in huggingface_hub's cache, else None."""
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, local_files_only=True)
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue
        return RemoteFile(repo_id, filename, Path(path).parent.name, _etag_of_cached(path)), path
    return None


def sha256_file(path, chunk_bytes=8 << 20):
    """Hex sha256 of a file, read in chunks: the Hub's etag of an LFS file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _etag_of_cached(path):
    """The etag of a file in huggingface_hub's cache: the name of its blob (its sha256 if not a link)."""
    blob = Path(os.path.realpath(path))
    return blob.name if blob.parent.name == "blobs" else sha256_file(path)


def fetch_hint(repo_id, filename=None):
    """How to get `repo_id` into the local caches."""
    return (
        "Run the same call once with network access (without HF_HUB_OFFLINE=1 / local_files_only=True), "
        f"or fetch the file with `hf download {repo_id}{' ' + filename if filename else ''}` "
        "(`huggingface-cli download` in older huggingface_hub)."
    )
