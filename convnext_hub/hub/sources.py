"""Where pretrained weights come from besides timm's Hub checkpoints: converted folders published
on the Hub (`hf://`), and local files and folders."""

import logging
import os
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError

from convnext_hub.convert.conversion import checkpoint_num_classes
from convnext_hub.convert.layouts import architecture_of

from .. import saved_folder, variants
from ..convert import ArchitectureError
from ..heads import Head
from ..weights_io import read_keras_config
from . import fetch
from .weights import Weights, read_timm_state_dict

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- converted folders on the Hub (hf://)


def from_keras_repo(repo_id, cache, revision=None, token=None, local_files_only=False):
    """Weights of a folder `converters.publish` uploaded: every file from the commit `revision` is at now.

    The commit is recorded in `cache`'s commit refs, so that offline loads find the same snapshot
    in huggingface_hub's cache.
    """
    revision = revision or "main"
    commit = None
    if not fetch.is_offline(local_files_only):
        try:
            commit = huggingface_hub.HfApi(token=token).model_info(repo_id, revision=revision).sha
        except Exception as e:
            if not fetch.is_unreachable(e):
                raise
            logger.warning(
                "hf://%s: the Hub cannot be reached (%s: %s); using huggingface_hub's cache",
                repo_id,
                type(e).__name__,
                e,
            )
    cached_only = commit is None
    if cached_only:
        commit = cache.commit_refs.read(repo_id, revision) or revision

    def download(filename):
        try:
            return huggingface_hub.hf_hub_download(
                repo_id, filename, revision=commit, token=token, local_files_only=cached_only
            )
        except LocalEntryNotFoundError as e:
            raise fetch.WeightsUnavailableError(
                f"hf://{repo_id}: the Hub cannot be reached or offline mode is on, and huggingface_hub's cache "
                f"lacks {filename} at revision {revision!r}. " + fetch.fetch_hint(repo_id)
            ) from e

    config_path = Path(download(saved_folder.CONFIG_FILE))
    download(saved_folder.weights_file_named(saved_folder.read_config(config_path)))
    commit = config_path.parent.name  # the snapshot's commit
    if not cached_only:
        cache.commit_refs.write(repo_id, revision, commit)
    weights = from_saved_folder(saved_folder.read(config_path.parent))
    weights.pretrained_cfg["source"] = {"repo_id": repo_id, "revision": commit, "format": "keras"}
    return weights


def from_saved_folder(saved):
    """Weights of a `saved_folder.SavedFolder` (what the converters and `publish` write)."""
    model_config = saved.model_config
    config_path = saved.weights_path.parent / saved_folder.CONFIG_FILE  # the file at fault if they disagree
    structure = _checked_structure(saved.architecture, model_config, config_path)
    return _keras_weights(saved.architecture, structure, model_config, saved.pretrained_cfg, saved.weights_path)


def _keras_weights(architecture, structure, model_config, pretrained_cfg, keras_file):
    stored = Head.from_config(model_config)
    return Weights(
        architecture=architecture,
        structure=structure,
        num_classes=stored.num_classes if stored.include_top else 0,
        pretrained_cfg=pretrained_cfg,
        source=os.fspath(keras_file),
        keras_file=os.fspath(keras_file),
        stored_head=stored,
    )


def _checked_structure(architecture, model_config, path):
    """The stored geometry; for a named architecture it must be that architecture's (nothing is deserialized)."""
    try:
        structure = variants.structure_of(model_config)
    except KeyError as e:
        raise ArchitectureError(f"{path}: the model config lacks the structural argument {e}") from None
    if architecture is None:
        return structure
    try:
        expected = variants.architecture(architecture)
    except ValueError:
        raise ArchitectureError(f"{path}: unknown architecture {architecture!r}") from None
    variants.check_structure(model_config, expected, path, architecture)
    return expected


# --------------------------------------------------------------------------- local files


def from_local(path):
    """Weights of a local checkpoint file / folder, a `.keras` file, or a converted folder / its weights file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if saved_folder.is_saved_folder(path) or (
        path.is_file()
        and (path.parent / saved_folder.CONFIG_FILE).is_file()
        and path.name.endswith((".weights.h5", ".keras"))
    ):
        return from_saved_folder(saved_folder.read(path))
    if path.name.endswith(".weights.h5"):
        raise ValueError(
            f"{path}: a .weights.h5 file does not say its architecture, and there is no {saved_folder.CONFIG_FILE} "
            "beside it; use convnext_hub.create_model(architecture, pretrained=path) instead"
        )
    if path.suffix == ".keras":
        return _from_keras_archive(path)
    state_dict = read_timm_state_dict(path)
    architecture, structure = architecture_of(state_dict, os.fspath(path))
    num_classes = checkpoint_num_classes(state_dict)
    return Weights(
        architecture=architecture,
        structure=structure,
        num_classes=num_classes,
        pretrained_cfg={"architecture": architecture, "num_classes": num_classes, "source": {"path": str(path)}},
        source=os.fspath(path),
        state_dict=state_dict,
    )


def _from_keras_archive(path):
    config = read_keras_config(path).get("config", {})
    architecture = config.get("architecture")
    structure = _checked_structure(architecture, config, path)
    cfg = dict(config.get("pretrained_cfg") or {"architecture": architecture, "source": {"path": str(path)}})
    return _keras_weights(architecture, structure, config, cfg, path)


# --------------------------------------------------------------------------- the source of loaded weights


def source_state_dict(pretrained_cfg, token=None):
    """The timm-keyed tensors a loaded model's weights were converted from, for comparisons with timm.

    `pretrained_cfg["source"]` names a local file (`path`) or a Hub file
    (`repo_id`, `filename`, `revision`), fetched through huggingface_hub's cache.
    """
    source = (pretrained_cfg or {}).get("source") or {}
    if isinstance(source, dict) and source.get("path"):
        return read_timm_state_dict(source["path"])
    if isinstance(source, dict) and source.get("filename"):
        path = huggingface_hub.hf_hub_download(
            source["repo_id"], source["filename"], revision=source.get("revision"), token=token
        )
        return read_timm_state_dict(path)
    raise ValueError(f"the model's pretrained_cfg does not name the checkpoint it was converted from: {source!r}")
