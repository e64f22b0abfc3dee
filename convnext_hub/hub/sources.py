"""Where pretrained weights come from besides timm's Hub checkpoints: Keras conversions published
on the Hub (`hf://`) and local files / folders."""
import json
import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError

from converters import ArchitectureError, infer_architecture
from converters.conversion import checkpoint_num_classes

from .. import variants
from ..weights_io import read_keras_config
from . import fetch
from .weights import HEAD_DEFAULTS, Weights, read_timm_state_dict

logger = logging.getLogger(__name__)

KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights.h5"


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
    state_dict = read_timm_state_dict(path)
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
