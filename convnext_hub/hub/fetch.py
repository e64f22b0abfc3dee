"""Talking to the Hugging Face Hub: which weight file a repo has, its etag, downloads.

Everything goes through `huggingface_hub` (its cache, progress bars,
`HF_ENDPOINT`, `HF_HUB_OFFLINE`, tokens). Its download functions are imported
with this module, not on first use: importing their module is start-up work,
which belongs with the imports, not inside the first load.
"""

import hashlib
import logging
import mmap
import os
import re
import threading
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


class SourceHashMismatchError(ValueError):
    """A checkpoint's bytes do not hash to the sha256 the Hub gives for the file: it is damaged or altered."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of one commit of a Hub repo, with the etag naming its content."""

    repo_id: str
    filename: str
    commit: str
    etag: str

    def as_dict(self):
        return {"repo_id": self.repo_id, "filename": self.filename, "revision": self.commit, "etag": self.etag}


_SHA256 = re.compile(r"[0-9a-f]{64}")


def hub_sha256(remote):
    """The sha256 the Hub gives for `remote`'s bytes, or None when it gives none.

    The Hub's etag of an LFS file (every weight file) is the sha256 of its
    bytes, which also names its blob in huggingface_hub's cache; a file kept in
    git itself has its git blob id (a sha1) instead, which no sha256 can be
    compared with, so such a file is not checked.
    """
    return remote.etag if remote.etag and _SHA256.fullmatch(remote.etag) else None


class SourceCheck:
    """Hashes a downloaded checkpoint while the conversion reads it; `verify` compares with the Hub's sha256.

    The file is hashed in a thread, through a read-only mapping, in file order
    (sha256 cannot take bytes out of order, and the conversion reads tensors in
    the model's order, not the file's), at the same time as the conversion: both
    read the same pages of the page cache, so the file comes from disk once.
    hashlib lets go of the GIL while it hashes, so the cost is sha256's own
    (about 1 GB/s), and only where no core is free.

    Args:
        path: the checkpoint file.
        remote: the Hub file it is (`RemoteFile`), for the message.
        expected: the Hub's sha256 of the file (`hub_sha256`).

    Attributes:
        actual: the file's sha256 once hashed (after `verify`), else None.
    """

    CHUNK_BYTES = 16 << 20

    def __init__(self, path, remote, expected):
        self.path, self.remote, self.expected = os.fspath(path), remote, expected
        self.actual, self._error = None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hash, name="convnext_hub-sha256", daemon=True)
        self._thread.start()

    def _hash(self):
        try:
            digest = hashlib.sha256()
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        with memoryview(mapped) as view:
                            for start in range(0, size, self.CHUNK_BYTES):
                                if self._stop.is_set():
                                    return
                                digest.update(view[start : start + self.CHUNK_BYTES])
            self.actual = digest.hexdigest()
        except Exception as e:  # raised in `verify`, in the caller's thread
            self._error = e

    def cancel(self):
        """Stops hashing (the conversion failed: its error is the one to report)."""
        self._stop.set()
        self._thread.join()

    def verify(self):
        """Waits for the hash; raises SourceHashMismatchError, naming the file and both hashes, if it differs."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.actual != self.expected:
            remote = self.remote
            raise SourceHashMismatchError(
                f"{self.path}: sha256 {self.actual} differs from the Hub's {self.expected} for "
                f"{remote.repo_id}/{remote.filename} at {remote.commit}: the file is damaged or altered, so it "
                f"was not converted; remove it from huggingface_hub's cache (`hf cache rm model/{remote.repo_id}`) "
                "and load again"
            )


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
