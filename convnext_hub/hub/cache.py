"""The converted-weights cache: each checkpoint converted once, then loaded by Keras without torch.

Layout under the cache root (`cache_dir=`, else `$CONVNEXT_HUB_CACHE`, else
`~/.cache/convnext_hub`)::

    entries/<name>/<key>/variables.safetensors the converted model's weights, keyed by Keras variable path
    entries/<name>/<key>/meta.json             source, versions, head, size and xxh3-128 of the weights file
    refs/<name>/<revision>                     entry refs: the entry key a revision resolved to (offline use)
    commits/<org>/<repo>/<revision>            commit refs: the commit an `hf://` revision resolved to
    locks/<name>/<key>.lock                    held while one process converts
    tmp/                                       entries being written, renamed into place whole
    jax/                                       JAX's persistent compilation cache (see `convnext_hub.fast_path`)

`<key>` is `<etag of the source file>-c<CONVERTER_VERSION>-keras<keras version>`.
An entry appears in one `os.replace`, so readers never see half of one, even
where file locks do nothing; the lock only saves a second conversion.

Integrity: a lookup checks `meta.json` and the file's size at once, and hashes
the weights file (xxh3-128, gigabytes per second) in a background thread, so
the hash overlaps the model build; `Cache.confirm` waits for it before the
weights are used. A corrupt entry (any changed byte, a truncated file, an
entry torn by a crash of the machine) is deleted and converted again. The
hash recorded for a new entry is computed as its file is written.
"""

import concurrent.futures
import errno
import functools
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
import xxhash
from filelock import FileLock, Timeout

from convnext_hub.convert.version import CONVERTER_VERSION

from ..cache_root import default_cache_dir, write_atomically

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "variables.safetensors"  # read by `weights_io.fill_shell`: no walk of a Keras file
META_FILE = "meta.json"
STALE_TMP_SECONDS = 24 * 3600  # temp dirs left by killed processes are removed after this
_HASH_CHUNK = 16 << 20

__all__ = ["Cache", "CacheNotWritableError", "Entry", "Refs", "default_cache_dir", "entry_key", "xxh3_file"]


@functools.lru_cache(maxsize=None)
def _hasher():
    """The one thread that checks entries' hashes while the model is built: made at the first cached load,
    not at import."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="convnext_hub-verify")


class CacheNotWritableError(OSError):
    """The cache directory cannot be created or written."""


def entry_key(etag):
    """Cache key of a source file with this etag, for this converter and Keras version."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', etag)}-c{CONVERTER_VERSION}-keras{keras.__version__}"


def is_current_key(key):
    """True for a key made by `entry_key` with the converter and Keras versions in force now."""
    return key.endswith(entry_key(""))


def xxh3_file(path):
    """Hex xxh3-128 of a file, read in chunks into one reused buffer (both release the GIL)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """A cache entry: its folder, its `meta.json`, and the pending check of its weights' hash."""

    path: Path
    meta: dict
    verification: concurrent.futures.Future

    @property
    def weights_file(self):
        return self.path / WEIGHTS_FILE

    def problem(self):
        """None when the weights file hashes to what `meta.json` records, else what is wrong (waits)."""
        return self.verification.result()


class Refs:
    """Names resolved to values, one small file per `(name, revision)`, each written in one `os.replace`.

    The cache keeps two of them: entry refs (revision -> entry key, so that an
    offline load finds the entry a branch last had) and commit refs (revision
    -> commit of an `hf://` repo, so that an offline load finds its snapshot in
    huggingface_hub's cache).
    """

    def __init__(self, root):
        self.root = root

    def read(self, name, revision):
        """What `write` last recorded for `revision` of `name`, or None."""
        try:
            return self._path(name, revision).read_text().strip() or None
        except OSError:
            return None

    def write(self, name, revision, value):
        """Record `value` for `revision` of `name`; skipped (logged) in a read-only cache."""
        ref = self._path(name, revision)
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(ref, value)
        except OSError as e:
            logger.debug("could not write cache ref %s (%s)", ref, e)

    def _path(self, name, revision):
        return self.root / name / quote(revision, safe="")


class Cache:
    """The converted-weights cache under `root`."""

    def __init__(self, root=None):
        self.root = Path(root if root is not None else default_cache_dir()).expanduser().absolute()
        self.entry_refs = Refs(self.root / "refs")
        self.commit_refs = Refs(self.root / "commits")

    def lookup(self, name, key, wait=True):
        """The entry `name`/`key` if present and whole, else None; a corrupt one is deleted (warning).

        With `wait=False` the hash check runs on in the background: pass the
        entry to `confirm` before reading its weights.
        """
        path = self.root / "entries" / name / key
        if not path.is_dir():
            return None
        meta, problem = _read_meta(path)
        if problem is not None:
            self._reject(path, problem)
            return None
        entry = Entry(path, meta, _hasher().submit(_hash_problem, path / WEIGHTS_FILE, meta["weights_xxh3"]))
        return entry if not wait or self.confirm(entry) else None

    def confirm(self, entry):
        """True when `entry`'s weights hash as recorded; else the entry is deleted (warning) and False."""
        problem = entry.problem()
        if problem is not None:
            self._reject(entry.path, problem)
        return problem is None

    def lookup_revision(self, name, revision, wait=True):
        """The entry `revision` of `name` last resolved to, or None (see `lookup`).

        Entry refs naming an entry of another converter or Keras version are
        ignored: that entry is not this version's conversion.
        """
        key = self.entry_refs.read(name, revision)
        return self.lookup(name, key, wait) if key and is_current_key(key) else None

    def recorded_commit(self, name, revision):
        """The source commit of the entry `revision` last resolved to, even one of another converter version."""
        key = self.entry_refs.read(name, revision)
        try:
            return json.loads((self.root / "entries" / name / key / META_FILE).read_text())["source"]["revision"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, name, key, write):
        """The entry `name`/`key`, made by `write(folder, digest) -> meta` unless another process did.

        `write(folder, digest)` puts `WEIGHTS_FILE` into `folder`, giving
        `digest.update` every byte it writes (so the file's hash needs no second
        read), and returns the entry's metadata; it runs at most once per key at
        a time (file lock). The entry is written into `tmp/` and renamed into
        place; on any error nothing of it stays behind. It is not fsynced: an
        entry torn by a power loss fails its hash check, is deleted and is
        converted again, so waiting for the disk would buy nothing but that
        conversion.
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
            return self.lookup(name, key) or self._write(name, key, write)
        finally:
            lock.release()

    # ---- internals

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

    def _write(self, name, key, write):
        tmp = self._new_tmp_dir(key)
        final = self._make_dir(self.root / "entries" / name) / key
        try:
            digest = xxhash.xxh3_128()
            meta = write(tmp, digest)
            weights = tmp / WEIGHTS_FILE
            meta = {**meta, "weights_xxh3": digest.hexdigest(), "weights_bytes": weights.stat().st_size}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy first
                return self.lookup(name, key) or self._write(name, key, write)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, OSError) and not isinstance(error, CacheNotWritableError):  # e.g. disk full
                raise self._not_writable(tmp, error) from error
            raise
        logger.info("cached converted weights of %s in %s", name, final)
        done = concurrent.futures.Future()
        done.set_result(None)  # hashed just now
        return Entry(final, meta, done)

    def _reject(self, path, problem):
        logger.warning("%s: corrupt cache entry (%s); deleting it and converting again", path, problem)
        self._discard(path)

    def _discard(self, path):
        """Delete an entry: renamed away first, so no reader sees it half deleted."""
        try:
            doomed = self._new_tmp_dir(path.name + ".discard")
            os.replace(path, doomed / path.name)
        except FileNotFoundError:
            return  # another process discarded it first
        except OSError as e:
            raise self._not_writable(path, e) from e
        shutil.rmtree(doomed, ignore_errors=True)


def _read_meta(path):
    """`(meta, None)` when `meta.json` is readable and the weights file has its recorded size,
    else `(None, what is wrong)`."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        expected_hash, expected_bytes = meta["weights_xxh3"], meta["weights_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable {META_FILE}: {e}"
    try:
        size = (path / WEIGHTS_FILE).stat().st_size
    except OSError as e:
        return None, f"unreadable {WEIGHTS_FILE}: {e}"
    if size != expected_bytes:
        return None, f"{WEIGHTS_FILE} has {size} bytes, {META_FILE} records {expected_bytes}"
    if not isinstance(expected_hash, str):
        return None, f"{META_FILE} records no hash"
    return meta, None


def _hash_problem(weights, expected):
    try:
        actual = xxh3_file(weights)
    except OSError as e:
        return f"unreadable {WEIGHTS_FILE}: {e}"
    if actual != expected:
        return f"{WEIGHTS_FILE} has xxh3 {actual[:12]}..., {META_FILE} records {expected[:12]}..."
    return None
