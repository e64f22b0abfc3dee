"""Pretrained weights of timm's ConvNeXt checkpoints on the Hugging Face Hub, through the converted-weights cache."""
import datetime
import logging
import os
import re

import keras

from converters.conversion import checkpoint_num_classes, convert, export_timm_state_dict
from converters.version import CONVERTER_VERSION

from . import fetch
from .cache import entry_key
from .weights import Weights, read_timm_state_dict

logger = logging.getLogger(__name__)


def from_registry(entry, cache, revision=None, token=None, local_files_only=False):
    """Weights of registry `entry`: from the cache, else downloaded and converted once.

    Online, one HEAD request per weight file tried finds the file's etag, which
    names the cache entry. Offline or with the Hub unreachable, the entry last
    recorded for `revision` is used, else the source file in huggingface_hub's
    cache, else WeightsUnavailableError says what is missing.
    """
    name, revision = entry["name"], revision or "main"
    offline = fetch.is_offline(local_files_only)
    hit = cache.lookup_ref(name, revision) if offline or _is_commit(revision) else None
    if hit is None and not offline:
        hit = _from_hub(entry, cache, revision, token)
    if hit is None:  # downloads are by commit, so look for the commit `revision` last had
        hit = _from_hf_cache(entry, cache, cache.recorded_commit(name, revision) or revision, offline)
    meta = hit.meta
    return Weights(
        architecture=meta["architecture"],
        num_classes=meta["num_classes"],
        pretrained_cfg={**entry, "source": meta["source"]},
        source=str(hit.path),
        state_dict=hit.state_dict(),
    )


def _is_commit(revision):
    return re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def _from_hub(entry, cache, revision, token):
    """The cache entry for the weight file `revision` has now; None if the Hub cannot be reached."""
    repo_id = entry["hf_hub_id"]
    try:
        remote = fetch.locate(repo_id, fetch.weight_files(entry["name"]), revision, token)
    except Exception as e:
        if not fetch.is_unreachable(e):
            raise
        hit = cache.lookup_ref(entry["name"], revision)
        logger.warning(
            "%s: the Hub cannot be reached (%s: %s); %s", repo_id, type(e).__name__, e,
            f"using the cached conversion {hit.path}" if hit else "looking in huggingface_hub's cache",
        )
        return hit
    return _cached_conversion(entry, cache, revision, remote, lambda: fetch.download(remote, token))


def _from_hf_cache(entry, cache, revision, offline):
    repo_id, files = entry["hf_hub_id"], fetch.weight_files(entry["name"])
    found = fetch.from_hf_cache(repo_id, files, revision)
    if found is None:
        why = "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline else (
            "the Hub cannot be reached")
        raise fetch.WeightsUnavailableError(
            f"{entry['name']}: {why}, and neither the convnext_hub cache ({cache.root}) nor huggingface_hub's "
            f"cache holds {repo_id} at revision {revision!r} ({' or '.join(files)}). "
            + fetch.fetch_hint(repo_id, files[0])
        )
    remote, path = found
    logger.info("%s: converting %s from huggingface_hub's cache", entry["name"], path)
    return _cached_conversion(entry, cache, revision, remote, lambda: path)


def _cached_conversion(entry, cache, revision, remote, local_path):
    """The cache entry of `remote`, converting `local_path()` into it when missing."""
    name, key = entry["name"], entry_key(remote.etag)
    hit = cache.lookup(name, key) or cache.store(name, key, lambda: convert_source(local_path(), entry, remote))
    for ref in {revision, remote.commit}:
        cache.write_ref(name, ref, key)
    return hit


def convert_source(path, entry, remote):
    """`(state_dict, meta)` for the cache: the source converted strictly, exported back to timm keys."""
    if remote.filename.endswith(".bin"):
        _require_torch(remote)
    logger.info("%s: converting %s (%.1f MB) to Keras", entry["name"], path, os.path.getsize(path) / 1e6)
    state_dict = read_timm_state_dict(path)
    model = convert(state_dict, entry["architecture"], source=path)
    keys, num_classes = set(state_dict), checkpoint_num_classes(state_dict)
    del state_dict  # peak memory: the model and its export, not three copies
    exported = {k: v for k, v in export_timm_state_dict(model).items() if k in keys}
    meta = {
        "name": entry["name"],
        "architecture": entry["architecture"],
        "num_classes": num_classes,
        "source": remote.as_dict(),
        "converter_version": CONVERTER_VERSION,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pretrained_cfg": entry,
    }
    return exported, meta


def _require_torch(remote):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fetch.WeightsUnavailableError(
            f"{remote.repo_id} has no safetensors weights, only {remote.filename}, a PyTorch pickle: reading it "
            "needs torch (pip install 'torch>=2.6'). Once converted, the cached weights load without torch."
        ) from None
