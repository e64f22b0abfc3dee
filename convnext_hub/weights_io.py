"""Loading weights from local `.keras` / `.weights.h5` files or saved folders, head mismatch allowed;
models built as shells that stored arrays fill (`build_shell`, `fill_shell`).

Nothing from the file is deserialized: a `.keras` archive's config is read as
JSON and only checked, so no code from the file can run.
"""

import json
import logging
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from . import saved_folder
from .heads import Head
from .keras_compat import (
    forget_deferred_variables,
    has_no_value,
    initialize_deferred,
    initialize_with_own_initializer,
    shells_supported,
)
from .model import HEAD_LAYERS, zeros_initialized
from .stored_arrays import array_to_keep, backend_value
from .variants import check_structure, structure_of

logger = logging.getLogger("convnext_hub")

SAFE_MODULES = ("keras", "convnext_hub")


def read_keras_config(path):
    """The model config stored in a `.keras` archive, refused if it names unsafe code."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    _check_safe(config, path)
    return config


def _check_safe(node, path):
    """Refuses Lambda layers, functions serialized as code and classes outside Keras / this package."""
    if isinstance(node, dict):
        if node.get("class_name") in ("Lambda", "__lambda__") or "__lambda__" in str(node.get("class_name")):
            raise ValueError(f"{path}: refused under safe mode: it contains a Lambda layer.")
        module = node.get("module")
        if isinstance(module, str) and not module.startswith(SAFE_MODULES):
            raise ValueError(f"{path}: refused under safe mode: it names code from module {module!r}.")
        for value in node.values():
            _check_safe(value, path)
    elif isinstance(node, list):
        for value in node:
            _check_safe(value, path)


def _check_structure(model, model_config, path):
    check_structure(model_config, structure_of(model), path, "the model")


def _stored_head(model, path, model_config):
    """The `Head` of the model saved in `path`.

    From its config where there is one. A bare `.weights.h5` names no layers
    (Keras numbers them by type), so its classifier size comes from its
    parameter count: the model's backbone plus `(features + 1) * classes`.
    """
    if model_config is not None:
        return Head.from_config(model_config)
    total = 0

    def visit(name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
            total += int(obj.size)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    with zeros_initialized():
        probe = type(model).from_config(
            {
                **model.get_config(),
                "num_classes": 0,
                "include_top": True,
                "features_only": False,
                "pretrained_cfg": None,
            }
        )
    extra, features = total - probe.count_params(), probe.output_shape[-1]
    if extra < 0 or extra % (features + 1):
        raise ValueError(
            f"{path} does not hold weights of {model.architecture or model.name}: "
            f"{total:,} values, which no head on this backbone gives"
        )
    return Head(num_classes=extra // (features + 1))


def load_weights_file(model, path):
    """Loads `path` into `model`; a classifier of another size (or none in the file) is left fresh, logged.

    `path`: a `.keras` / `.weights.h5` file, or a folder written by the converters
    (`saved_folder`). Raises ValueError when anything but the head fails to match.
    """
    path, model_config = _weights_and_config(model, Path(path))
    if not any(layer.weights for layer in model.head_layers()):  # a backbone: every file holds its weights
        model.load_weights(path)
        return
    stored = _stored_head(model, path, model_config)
    if Head.of(model).takes_all_of(stored):
        model.load_weights(path)
        return
    # The head differs: load the file into a model of its own head, then take the layers that fit.
    with zeros_initialized():
        source = type(model).from_config({**model.get_config(), **stored.as_kwargs(), "pretrained_cfg": None})
    try:
        source.load_weights(path)
    except ValueError as e:
        raise ValueError(f"{path} does not hold weights of {model.architecture or model.name}: {e}") from None
    fresh = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if not _has_layer(source, layer.name) or _shapes(source.get_layer(layer.name)) != _shapes(layer):
            fresh.append(layer.name)
            continue
        layer.set_weights(source.get_layer(layer.name).get_weights())
    if any(name not in HEAD_LAYERS for name in fresh):
        raise ValueError(f"{path} does not hold weights of {model.architecture or model.name}: no {fresh[0]}")
    logger.warning(
        "%s: head layers left freshly initialised (%s): the file's head (num_classes=%d) differs from the "
        "model's (num_classes=%d).",
        path,
        ", ".join(fresh),
        stored.num_classes,
        model.num_classes,
    )


def build_shell(build):
    """The model `build()` makes, its variables declared but not allocated: `fill_shell` gives them values.

    Loading a stored model this way allocates each weight once, from the file,
    instead of filling it with zeros first and overwriting it (on JAX the zeros
    also cost a dispatch, and a compilation, per variable).
    """
    if not shells_supported():  # a Keras without the internals `fill_shell` needs: a model with values
        return build()
    with keras.StatelessScope(initialize_variables=False):
        return build()


def fill_shell(model, tensors, source):
    """Gives every weight of `model` (a shell, see `build_shell`) its value from `tensors`.

    `tensors` maps each weight's Keras variable path to its array (or to a lazy
    tensor, read when its turn comes), as the cache's variables file holds them.
    Strict: every weight has exactly one tensor of its shape, or ValueError names
    what differs (checked before any value is read). A model that is no shell
    has its weights assigned.
    """
    weights = {variable.path: variable for variable in model.weights}
    missing, unexpected = sorted(set(weights) - set(tensors)), sorted(set(tensors) - set(weights))
    if len(weights) != len(model.weights) or missing or unexpected:
        raise ValueError(
            f"{source} does not hold the weights of {model.architecture or model.name}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for path, variable in weights.items():
        if tuple(tensors[path].shape) != tuple(variable.shape):
            raise ValueError(
                f"{source}: {path} is stored with shape {tuple(tensors[path].shape)}, "
                f"the model has {tuple(variable.shape)}"
            )
    if not is_shell(model):
        for path, variable in weights.items():
            variable.assign(np.asarray(tensors[path]))
        return model
    try:
        for path, variable in weights.items():
            initialize_deferred(variable, backend_value(array_to_keep(tensors[path]), variable.dtype))
        for variable in model.variables:  # what is not a weight: e.g. the random seeds' state
            if has_no_value(variable):
                initialize_with_own_initializer(variable)
    finally:
        forget_deferred_variables(model)
    return model


def is_shell(model):
    """True when `model`'s weights were declared but never given values (built as a shell)."""
    return any(has_no_value(variable) for variable in model.weights)


def _weights_and_config(model, path):
    """The weights file and the stored model config (None for a bare `.weights.h5`), structure checked."""
    model_config = None
    if path.is_dir() or (path.parent / saved_folder.CONFIG_FILE).is_file() and path.name in saved_folder.WEIGHT_FILES:
        saved = saved_folder.read(path)
        model_config, path = saved.model_config, saved.weights_path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.name.endswith(".keras"):
        model_config = read_keras_config(path).get("config", {})
    if model_config is not None:
        _check_structure(model, model_config, path)
    return str(path), model_config


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def _shapes(layer):
    return [tuple(w.shape) for w in layer.weights]
