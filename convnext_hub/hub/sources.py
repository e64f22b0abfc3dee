"""Where pretrained weights come from: timm checkpoints on the Hub (through the
converted-weights cache), Keras conversions published on the Hub (`hf://`), local files.

Each source gives a `Weights`: the architecture, the stored classifier size,
the pretrained cfg, and either a timm-keyed state dict or a Keras weights file.
"""
import datetime
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import keras
from huggingface_hub.errors import LocalEntryNotFoundError

from converters import ArchitectureError, check_finite, infer_architecture, load_checkpoint, to_timm_keys
from converters.conversion import checkpoint_num_classes, convert, export_timm_state_dict, load_timm_state_dict
from converters.version import CONVERTER_VERSION

from .. import variants
from ..families import create_model
from ..model import zeros_initialized
from ..weights_io import load_weights_file, read_keras_config
from . import fetch
from .cache import entry_key

logger = logging.getLogger(__name__)

KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights.h5"
HEAD_DEFAULTS = {"num_classes": 1000, "include_top": True, "features_only": False}  # as in ConvNeXt


@dataclass
class Weights:
    """Pretrained weights ready to load into a model of `architecture`."""

    architecture: str
    num_classes: int  # classes of the stored classifier; 0 when it has none
    pretrained_cfg: dict
    source: str  # for messages
    state_dict: dict | None = None  # timm keys, float32 arrays or lazily read tensors
    keras_file: str | None = None  # `.weights.h5` / `.keras` of a model with `stored_config`
    stored_config: dict | None = None

    def load_into(self, model):
        """Set every weight of `model` (built for `architecture`); a different head is left fresh."""
        if self.keras_file is not None and all(
            getattr(model, flag) == self.stored_config[flag] for flag in HEAD_DEFAULTS
        ):
            load_weights_file(model, self.keras_file)
        else:
            load_timm_state_dict(model, self.timm_state_dict(), source=self.source)
        return model

    def timm_state_dict(self):
        if self.state_dict is None:  # a Keras file: load it as stored, then export
            with zeros_initialized():
                stored = create_model(self.architecture, **self.stored_config)
            load_weights_file(stored, self.keras_file)
            self.state_dict = export_timm_state_dict(stored)
        return self.state_dict


# --------------------------------------------------------------------------- timm checkpoints on the Hub


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
    state_dict = timm_state_dict(path)
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


def timm_state_dict(path):
    """A checkpoint file or folder as a finite, timm-keyed `{key: array}` (safetensors read lazily)."""
    state_dict = to_timm_keys(load_checkpoint(path, lazy=True), source=os.fspath(path))
    check_finite(state_dict, os.fspath(path))
    return state_dict


# --------------------------------------------------------------------------- Keras conversions (hf://)


def from_keras_repo(repo_id, cache, revision=None, token=None, local_files_only=False):
    """Weights published by `converters.publish`: every file from the commit `revision` is at now.

    The commit is recorded in `cache`'s refs, so that offline loads find the same snapshot
    in huggingface_hub's cache.
    """
    revision, ref_name = revision or "main", f"hf/{repo_id}"
    commit = None
    if not fetch.is_offline(local_files_only):
        try:
            commit = huggingface_hub.HfApi(token=token).model_info(repo_id, revision=revision).sha
        except Exception as e:
            if not fetch.is_unreachable(e):
                raise
            logger.warning("hf://%s: the Hub cannot be reached (%s: %s); using huggingface_hub's cache",
                           repo_id, type(e).__name__, e)
    cached_only = commit is None
    if cached_only:
        commit = cache.read_ref(ref_name, revision) or revision
    try:
        config, weights = [
            huggingface_hub.hf_hub_download(
                repo_id, filename, revision=commit, token=token, local_files_only=cached_only)
            for filename in (KERAS_CONFIG, KERAS_WEIGHTS)
        ]
    except LocalEntryNotFoundError as e:
        raise fetch.WeightsUnavailableError(
            f"hf://{repo_id}: the Hub cannot be reached or offline mode is on, and huggingface_hub's cache lacks "
            f"{KERAS_CONFIG} / {KERAS_WEIGHTS} at revision {revision!r}. " + fetch.fetch_hint(repo_id)
        ) from e
    commit = Path(config).parent.name  # the snapshot's commit
    if not cached_only:
        cache.write_ref(ref_name, revision, commit)
    weights_obj = from_keras_files(config, weights)
    weights_obj.pretrained_cfg["source"] = {"repo_id": repo_id, "revision": commit, "format": "keras"}
    return weights_obj


def from_keras_files(config_path, weights_path):
    """Weights of a `model.weights.h5` with the `config.json` `converters.publish` writes beside it."""
    try:
        config = json.loads(Path(config_path).read_text())
        architecture, model_config = config["architecture"], config["model_config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{config_path}: not a convnext_hub config.json (needs 'architecture' and 'model_config'): {e}"
        ) from e
    _check_structure(architecture, model_config, config_path)
    return _keras_weights(architecture, model_config, dict(config.get("pretrained_cfg") or {}), weights_path)


def _keras_weights(architecture, model_config, pretrained_cfg, keras_file):
    stored = {flag: model_config.get(flag, default) for flag, default in HEAD_DEFAULTS.items()}
    return Weights(
        architecture=architecture,
        num_classes=stored["num_classes"] if stored["include_top"] else 0,
        pretrained_cfg=pretrained_cfg,
        source=os.fspath(keras_file),
        keras_file=os.fspath(keras_file),
        stored_config=stored,
    )


def _check_structure(architecture, model_config, path):
    """The stored structural arguments must be those of `architecture` (nothing else is deserialized)."""
    try:
        expected = variants.architecture(architecture)
    except (KeyError, ValueError) as e:
        raise ArchitectureError(f"{path}: unknown architecture {architecture!r}") from e
    for key, stored, value in variants.structure_mismatches(model_config, expected):
        raise ArchitectureError(f"{path}: {key}={stored!r} does not match architecture {architecture!r} ({value!r})")


# --------------------------------------------------------------------------- local files


def from_local(path):
    """Weights of a local checkpoint file / folder, a `.keras` file, or a published folder / `.weights.h5`."""
    path = Path(path)
    if path.is_dir() and (path / KERAS_WEIGHTS).is_file():
        return from_keras_files(path / KERAS_CONFIG, path / KERAS_WEIGHTS)
    if path.name.endswith(".weights.h5"):
        config = path.parent / KERAS_CONFIG
        if not config.is_file():
            raise ValueError(
                f"{path}: a .weights.h5 file does not say its architecture, and there is no {KERAS_CONFIG} beside "
                "it; use convnext_hub.create_model(architecture, pretrained=path) instead"
            )
        return from_keras_files(config, path)
    if path.suffix == ".keras":
        return _from_keras_archive(path)
    state_dict = timm_state_dict(path)
    architecture = infer_architecture(state_dict, source=os.fspath(path))["arch"]
    if architecture is None:
        raise ArchitectureError(f"{path}: the weights fit no known ConvNeXt architecture")
    num_classes = checkpoint_num_classes(state_dict)
    return Weights(
        architecture=architecture,
        num_classes=num_classes,
        pretrained_cfg={"architecture": architecture, "num_classes": num_classes, "source": {"path": str(path)}},
        source=os.fspath(path),
        state_dict=state_dict,
    )


def _from_keras_archive(path):
    config = read_keras_config(path).get("config", {})
    architecture = config.get("architecture")
    if architecture is None:
        raise ArchitectureError(f"{path}: the model config names no timm architecture")
    return _keras_weights(architecture, config, {"architecture": architecture, "source": {"path": str(path)}}, path)
