"""The folder a converted model is saved in: its file names and its `config.json`, written and read here only.

`converters.timm_to_keras` (`--format weights` or `--format keras`) and
`converters.publish` write this folder; `load_pretrained(folder)`,
`create_model(..., pretrained=folder)` and `hf://` loads read it:

    model.weights.h5 | model.keras   the weights (Keras `save_weights` / `save`)
    config.json                      this schema (`FORMAT_VERSION`), below

`config.json` holds `format` ("convnext_hub"), `format_version`,
`weights_file`, `architecture` (a timm name, or null for a custom geometry),
`model_config` (the model's `get_config()`), `pretrained_cfg` (preprocessing,
license, label set, source) and whatever the writer adds (`source`,
`converter_version`, `equivalence`). Folders written before the schema had a
version (no `format_version`) are read as version 0.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .version import __version__

FORMAT = "convnext_hub"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
KERAS_FILE = "model.keras"
WEIGHT_FILES = (WEIGHTS_FILE, KERAS_FILE)


class NotASavedFolderError(ValueError):
    """A path that is no folder (or file of a folder) this module wrote."""


@dataclass(frozen=True)
class SavedFolder:
    """What a saved folder holds: its `config.json` and the path of its weights file."""

    config: dict
    weights_path: Path

    @property
    def architecture(self):
        return self.config.get("architecture")

    @property
    def model_config(self):
        return self.config["model_config"]

    @property
    def pretrained_cfg(self):
        return dict(self.config.get("pretrained_cfg") or self.model_config.get("pretrained_cfg") or {})


def config_for(model, weights_file, **metadata):
    """The `config.json` content for `model` saved as `weights_file`; `metadata` adds writer fields."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "convnext_hub_version": __version__,
        "weights_file": weights_file,
        "architecture": model.architecture,
        "model_config": model.get_config(),
        "pretrained_cfg": model.pretrained_cfg,
        **metadata,
    }


def write_config(folder, model, weights_file=WEIGHTS_FILE, **metadata):
    """Writes `config.json` for `model`, whose weights are (or will be) `folder/weights_file`."""
    if weights_file not in WEIGHT_FILES:
        raise ValueError(f"`weights_file` must be one of {WEIGHT_FILES}. Received: weights_file={weights_file!r}")
    config = config_for(model, weights_file, **metadata)
    Path(folder, CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
    return config


def write(folder, model, *, keras_archive=False, **metadata):
    """Saves `model` into `folder` (`model.keras` if `keras_archive`, else `model.weights.h5`) with its config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_file = KERAS_FILE if keras_archive else WEIGHTS_FILE
    if keras_archive:
        model.save(folder / weights_file)
    else:
        model.save_weights(folder / weights_file)
    return write_config(folder, model, weights_file, **metadata)


def is_saved_folder(path):
    """True for a folder holding a `config.json` of this schema (any version) and a weights file."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def read(path):
    """The `SavedFolder` at `path`: the folder itself, or its `model.weights.h5` / `model.keras`.

    Raises NotASavedFolderError naming the path and what is missing or wrong.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = read_config(folder / CONFIG_FILE)
    weights_path = path if path.is_file() else _weights_in(folder, config)
    if weights_path.name not in WEIGHT_FILES and not weights_path.name.endswith((".weights.h5", ".keras")):
        raise NotASavedFolderError(f"{path}: not a Keras weights file (.weights.h5 or .keras)")
    return SavedFolder(config, weights_path)


def weights_file_named(config):
    """The weights file name a `config.json` (as `read_config` returns it) names."""
    return config.get("weights_file") or WEIGHTS_FILE


def read_config(config_path):
    """The checked content of a saved folder's `config.json`."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise NotASavedFolderError(
            f"{config_path.parent}: no {CONFIG_FILE} beside the weights says which ConvNeXt they belong to"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise NotASavedFolderError(f"{config_path}: unreadable ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_config"), dict):
        raise NotASavedFolderError(f"{config_path}: not a convnext_hub config.json (no 'model_config')")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NotASavedFolderError(
            f"{config_path}: format_version {version!r} is newer than this convnext_hub reads ({FORMAT_VERSION}); "
            "upgrade convnext_hub"
        )
    return config


def _weights_in(folder, config):
    named = config.get("weights_file")
    candidates = [named] if named else list(WEIGHT_FILES)
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise NotASavedFolderError(
        f"{folder}: holds {CONFIG_FILE} but not its weights ({' or '.join(candidates)}); "
        f"it holds {sorted(os.listdir(folder))[:10]}"
    )
