"""The converted-weights cache: each checkpoint converted once, then read without torch.

Layout under the cache root (`cache_dir=`, else `$CONVNEXT_HUB_CACHE`, else
`~/.cache/convnext_hub`)::

    entries/<name>/<key>/weights.safetensors   timm-keyed float32 weights, validated
    entries/<name>/<key>/meta.json             source, versions, sha256 of the weights file
    refs/<name>/<revision>                     the key a revision resolved to (for offline use)
    refs/hf/<org>/<repo>/<revision>            the commit an `hf://` revision resolved to
    locks/<name>/<key>.lock                    held while one process converts
    tmp/                                       entries being written, renamed into place whole

`<key>` is `<etag of the source file>-c<CONVERTER_VERSION>-keras<keras version>`.
An entry appears in one `os.replace`, so readers never see half of one, even
where file locks do nothing; the lock only saves a second conversion.
"""
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import keras
from filelock import FileLock, Timeout

from converters.readers import read_safetensors
from converters.version import CONVERTER_VERSION

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
STALE_TMP_SECONDS = 24 * 3600  # temp dirs left by killed processes are removed after this


class CacheNotWritableError(OSError):
    """The cache directory cannot be created or written."""


def default_cache_dir():
    """`$CONVNEXT_HUB_CACHE`, else `~/.cache/convnext_hub`."""
    return os.environ.get("CONVNEXT_HUB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "convnext_hub")


def entry_key(etag):
    """Cache key of a source file with this etag, for this converter and Keras version."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', etag)}-c{CONVERTER_VERSION}-keras{keras.__version__}"


def sha256_file(path, chunk_bytes=8 << 20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """A verified cache entry."""

    path: Path
    meta: dict

    def state_dict(self):
        """The cached `{timm key: float32 array}`; each tensor is read when used (one in memory at a time)."""
        return read_safetensors(os.fspath(self.path / WEIGHTS_FILE), lazy=True)


class Cache:
    """The converted-weights cache under `root`."""

    def __init__(self, root=None):
        self.root = Path(root if root is not None else default_cache_dir()).expanduser().absolute()

    def lookup(self, name, key):
        """The entry `name`/`key` if present and intact; a corrupt one is deleted (with a warning)."""
        path = self.root / "entries" / name / key
        if not path.is_dir():
            return None
        meta, problem = _read_verified(path)
        if problem is None:
            return Entry(path, meta)
        logger.warning("%s: corrupt cache entry (%s); deleting it and converting again", path, problem)
        self._discard(path)
        return None

    def lookup_ref(self, name, revision):
        """The intact entry `revision` of `name` last resolved to, or None.

        Refs written by another converter or Keras version are ignored: their
        entries are not this version's conversion.
        """
        key = self.read_ref(name, revision)
        return self.lookup(name, key) if key and key.endswith(entry_key("")) else None

    def recorded_commit(self, name, revision):
        """The source commit of the entry `revision` last resolved to, even one of another converter version."""
        key = self.read_ref(name, revision)
        try:
            return json.loads((self.root / "entries" / name / key / META_FILE).read_text())["source"]["revision"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_ref(self, name, revision):
        """What `write_ref` last recorded for `revision` of `name`, or None."""
        try:
            return self._ref_path(name, revision).read_text().strip() or None
        except OSError:
            return None

    def write_ref(self, name, revision, key):
        """Record that `revision` of `name` resolves to `key` (an entry key, or a commit for `hf://` repos);
        skipped (logged) in a read-only cache."""
        ref = self._ref_path(name, revision)
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".ref.", dir=ref.parent)
            with os.fdopen(fd, "w") as f:
                f.write(key)
            os.replace(tmp, ref)
        except OSError as e:
            logger.debug("could not write cache ref %s (%s)", ref, e)

    def store(self, name, key, convert):
        """The entry `name`/`key`, made by `convert() -> (state_dict, meta)` unless another process did.

        `convert` runs at most once per key at a time (file lock); the entry is
        written into `tmp/`, fsynced and renamed into place.
        """
        lock_dir = self._make_dir(self.root / "locks" / name)
        lock = FileLock(os.fspath(lock_dir / f"{key}.lock"))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                logger.info("waiting for another process to convert %s (lock %s)", name, lock.lock_file)
                lock.acquire()
        except OSError as e:
            raise self._not_writable(lock.lock_file, e) from e
        try:
            entry = self.lookup(name, key)
            if entry is None:
                state_dict, meta = convert()
                entry = self._write(name, key, state_dict, meta)
            return entry
        finally:
            lock.release()

    # ---- internals

    def _ref_path(self, name, revision):
        return self.root / "refs" / name / quote(revision, safe="")

    def _make_dir(self, path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._not_writable(path, e) from e
        return path

    def _not_writable(self, path, error):
        return CacheNotWritableError(
            getattr(error, "errno", None) or errno.EACCES,
            f"convnext_hub cache directory {self.root} is not writable: cannot create {path} "
            f"({getattr(error, 'strerror', None) or error}). Pass cache_dir= to load_pretrained or set "
            "CONVNEXT_HUB_CACHE to a writable directory.",
        )

    def _new_tmp_dir(self, key):
        tmp_root = self._make_dir(self.root / "tmp")
        for old in tmp_root.iterdir():
            try:
                if time.time() - old.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        try:
            return Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
        except OSError as e:
            raise self._not_writable(tmp_root, e) from e

    def _write(self, name, key, state_dict, meta):
        from safetensors.numpy import save_file

        tmp = self._new_tmp_dir(key)
        final = self._make_dir(self.root / "entries" / name) / key
        try:
            weights = tmp / WEIGHTS_FILE
            save_file(state_dict, os.fspath(weights))
            meta = {**meta, "weights_sha256": sha256_file(weights), "weights_bytes": weights.stat().st_size}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            for path in (weights, tmp / META_FILE, tmp):
                _fsync(path)
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy first
                return self.lookup(name, key) or self._write(name, key, state_dict, meta)
            _fsync(final.parent)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, OSError) or type(error).__name__ == "SafetensorError":  # e.g. disk full
                raise self._not_writable(tmp, error) from error
            raise
        logger.info("cached converted weights of %s in %s", name, final)
        return Entry(final, meta)

    def _discard(self, path):
        """Delete an entry: renamed away first, so no reader sees it half deleted."""
        try:
            doomed = self._new_tmp_dir(path.name + ".discard")
            os.replace(path, doomed / path.name)
        except OSError as e:
            raise self._not_writable(path, e) from e
        shutil.rmtree(doomed, ignore_errors=True)


def _read_verified(path):
    """`(meta, None)` for an intact entry, else `(None, what is wrong)`."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        expected = meta["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable {META_FILE}: {e}"
    try:
        actual = sha256_file(path / WEIGHTS_FILE)
    except OSError as e:
        return None, f"unreadable {WEIGHTS_FILE}: {e}"
    if actual != expected:
        return None, f"{WEIGHTS_FILE} has sha256 {actual[:12]}..., {META_FILE} records {str(expected)[:12]}..."
    return meta, None


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
