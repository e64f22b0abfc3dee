"""Pretrained weights of timm's ConvNeXt checkpoints on the Hugging Face Hub, through the converted-weights cache."""

import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable

import keras

from convnext_hub.convert.conversion import convert_to_weights_file, export_timm_state_dict, load_timm_state_dict
from convnext_hub.convert.readers import read_safetensors
from convnext_hub.convert.version import CONVERTER_VERSION

from ..heads import Head
from ..keras_compat import shells_supported
from ..weights_io import build_shell, fill_shell
from . import fetch
from .cache import WEIGHTS_FILE, Cache, Entry, entry_key
from .weights import Weights, read_timm_state_dict

logger = logging.getLogger(__name__)


def from_registry(entry, cache, revision=None, token=None, local_files_only=False):
    """Weights of registry `entry`: from the cache, else converted once from huggingface_hub's cache.

    Where the weights come from, in the order the code asks:

    | Situation                                          | Weights from                                   |
    | -------------------------------------------------- | ---------------------------------------------- |
    | offline (`HF_HUB_OFFLINE=1`, `local_files_only`)   | the entry recorded for `revision` (entry refs) |
    | or `revision` a commit (a commit never changes)    |                                                |
    | online                                             | the entry of the etag the Hub gives now (one   |
    |                                                    | HEAD request per weight file tried), converted |
    |                                                    | from the download when missing                 |
    | the Hub cannot be reached                          | the entry recorded for `revision`              |
    | none of the above                                  | huggingface_hub's cache, at the commit         |
    |                                                    | `revision` last resolved to, converted into an |
    |                                                    | entry                                          |

    Else WeightsUnavailableError says what is missing. The entry's hash is
    checked in the background while the caller builds the model (see
    `CachedWeights`).
    """
    name, revision = entry["name"], revision or "main"
    offline = fetch.is_offline(local_files_only)
    hit, converted = None, None
    if offline or _is_commit(revision):
        hit = cache.lookup_revision(name, revision, wait=False)
    if hit is None and not offline:
        remote = _locate(entry, revision, token)
        if remote is not None:
            hit, converted = _cached_conversion(entry, cache, revision, remote, lambda: fetch.download(remote, token))
        else:
            hit = cache.lookup_revision(name, revision, wait=False)
            logger.warning(
                "%s: %s",
                entry["hf_hub_id"],
                f"using the cached conversion {hit.path}" if hit else "looking in huggingface_hub's cache",
            )
    if hit is None:  # downloads are by commit, so look for the commit `revision` last had
        hit, converted = _from_hf_cache(entry, cache, cache.recorded_commit(name, revision) or revision, offline)
    return CachedWeights.of(
        entry, hit, cache, lambda: from_registry(entry, cache, revision, token, local_files_only), converted
    )


@dataclass
class CachedWeights(Weights):
    """Weights in a cache entry whose hash check may still be running.

    The check is confirmed before the weights are read; a corrupt entry is
    deleted and the weights come from `rebuild()` (a new conversion) instead.
    The entry's head is known from its metadata, and its file is keyed by Keras
    variable path, so each array goes straight to its variable (no probing of
    the file, no walk of a Keras file, no second model). Right after
    a conversion, `converted` holds the conversion's model, a shell that
    `load_into` fills from the new entry: `build` hands it out (once) when it
    is the model asked for.
    """

    entry: Entry | None = None
    cache: Cache | None = None
    rebuild: Callable[[], Weights] | None = None
    converted: keras.Model | None = field(default=None, repr=False)
    _confirmed: Weights | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(cls, registry_entry, hit, cache, rebuild, converted=None):
        meta = hit.meta
        return cls(
            architecture=meta["architecture"],
            num_classes=meta["num_classes"],
            pretrained_cfg={**registry_entry, "source": meta["source"]},
            source=str(hit.path),
            stored_head=Head(num_classes=meta["num_classes"]),
            entry=hit,
            cache=cache,
            rebuild=rebuild,
            converted=converted,
        )

    def build(self, **model_kwargs):
        """The conversion's model when `model_kwargs` ask for the stored model as it is; else, with the stored
        head, a shell that `load_into` fills from the entry (`weights_io.build_shell`); else a new model."""
        model, self.converted = self.converted, None
        wanted = {key: value for key, value in model_kwargs.items() if key != "pretrained_cfg"}
        if model is not None and wanted == {"num_classes": model.num_classes}:
            model.pretrained_cfg = model_kwargs.get("pretrained_cfg")
            return model
        if Head.from_config(model_kwargs) == self.stored_head:  # `load_into` fills it from the entry
            return build_shell(lambda: super(CachedWeights, self).build(**model_kwargs))
        return super().build(**model_kwargs)

    def confirmed(self):
        """These weights once the entry's hash checks out, else the weights of a new conversion."""
        if self._confirmed is None:
            self._confirmed = self if self.cache.confirm(self.entry) else self.rebuild()
        return self._confirmed

    def load_into(self, model):
        """The entry's arrays, by variable path, into `build`'s shell when `model` has the stored head,
        else through timm keys."""
        weights = self.confirmed()
        if weights is not self:
            return weights.load_into(model)
        if Head.of(model) == self.stored_head:
            fill_shell(model, self.stored_tensors(), self.source)  # exactly this model's weights
        else:
            load_timm_state_dict(model, self.as_timm_state_dict(), source=self.source)
        return model

    def stored_tensors(self):
        """`{Keras variable path: lazy tensor}` of the entry's weights file (header checked now)."""
        return read_safetensors(self.entry.weights_file, lazy=True)

    def as_timm_state_dict(self):
        weights = self.confirmed()
        if weights is not self:
            return weights.as_timm_state_dict()
        if self.state_dict is None:
            shell = build_shell(lambda: Weights.build(self, **self.stored_head.as_kwargs()))
            stored = fill_shell(shell, self.stored_tensors(), self.source)
            self.state_dict = export_timm_state_dict(stored)
        return self.state_dict


def _is_commit(revision):
    return re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def _locate(entry, revision, token):
    """The weight file `revision` of `entry`'s repo has now, or None (logged) when the Hub cannot be reached."""
    try:
        return fetch.locate(entry["hf_hub_id"], fetch.weight_files(entry["name"]), revision, token)
    except Exception as e:
        if not fetch.is_unreachable(e):
            raise
        logger.warning("%s: the Hub cannot be reached (%s: %s)", entry["hf_hub_id"], type(e).__name__, e)
        return None


def _from_hf_cache(entry, cache, revision, offline):
    repo_id, files = entry["hf_hub_id"], fetch.weight_files(entry["name"])
    found = fetch.from_hf_cache(repo_id, files, revision)
    if found is None:
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True)"
            if offline
            else ("the Hub cannot be reached")
        )
        raise fetch.WeightsUnavailableError(
            f"{entry['name']}: {why}, and neither the convnext_hub cache ({cache.root}) nor huggingface_hub's "
            f"cache holds {repo_id} at revision {revision!r} ({' or '.join(files)}). "
            + fetch.fetch_hint(repo_id, files[0])
        )
    remote, path = found
    logger.info("%s: converting %s from huggingface_hub's cache", entry["name"], path)
    return _cached_conversion(entry, cache, revision, remote, lambda: path)


def _cached_conversion(entry, cache, revision, remote, local_path):
    """`(entry, model)`: the cache entry of `remote` (hash check pending), converting `local_path()` into it
    when missing; `model` is that conversion's model (see `convert_source`), else None."""
    name, key = entry["name"], entry_key(remote.etag)
    converted = {}

    def write(folder, digest):
        meta, converted["model"] = convert_source(local_path(), entry, remote, folder, digest)
        return meta

    hit = cache.lookup(name, key, wait=False) or cache.store(name, key, write)
    for ref in {revision, remote.commit}:
        cache.entry_refs.write(name, ref, key)
    return hit, converted.get("model")


def convert_source(path, entry, remote, folder, digest):
    """Converts the checkpoint at `path` strictly into `folder/WEIGHTS_FILE`: `(metadata, model)`;
    `digest` is given every byte of that file.

    The weights stream from the checkpoint into the entry's weights file one
    tensor at a time (`converters.convert_to_weights_file`), through two reused
    buffers. The model returned is the conversion's shell: the load fills it
    with a copy-on-write mapping of the new entry, whose pages the write left
    in memory, and every backend keeps those pages as they are (see
    `keras_compat.initialize_deferred`): no second set of weights is allocated.

    A file the Hub gives a sha256 for (an LFS file: its etag) is hashed while
    it is converted (`fetch.SourceCheck`) and refused with
    `fetch.SourceHashMismatchError` when the hashes differ: a blob damaged or
    altered in huggingface_hub's cache, or a download that is not what the Hub
    announced, would otherwise become a cache entry that every later load trusts.
    """
    if remote.filename.endswith(".bin"):
        _require_torch(remote)
    logger.info("%s: converting %s (%.1f MB) to Keras", entry["name"], path, os.path.getsize(path) / 1e6)
    expected = fetch.hub_sha256(remote)
    check = fetch.SourceCheck(path, remote, expected) if expected else None
    try:
        model = convert_to_weights_file(
            read_timm_state_dict(path),
            os.fspath(folder / WEIGHTS_FILE),
            arch=entry["architecture"],
            source=path,
            digest=digest,
        )
    except BaseException:
        if check is not None:
            check.cancel()
        raise
    if check is not None:
        check.verify()  # before the entry is stored: a refused file leaves no entry
    meta = {
        "name": entry["name"],
        "architecture": entry["architecture"],
        "num_classes": model.num_classes,
        "source": remote.as_dict(),
        "converter_version": CONVERTER_VERSION,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pretrained_cfg": entry,
    }
    return meta, model if shells_supported() else None


def _require_torch(remote):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fetch.WeightsUnavailableError(
            f"{remote.repo_id} has no safetensors weights, only {remote.filename}, a PyTorch pickle: reading it "
            "needs torch (pip install 'torch>=2.6'). Once converted, the cached weights load without torch."
        ) from None
