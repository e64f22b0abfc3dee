"""Loading weights from local `.keras` / `.weights.h5` files, head mismatch allowed.

Nothing from the file is deserialized: a `.keras` archive's config is read as
JSON and only checked, so no code from the file can run.
"""
import json
import logging
import warnings
import zipfile

import numpy as np

from .variants import STRUCTURAL_KEYS, structure_mismatches

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


def _check_structure(model, config, path):
    model_structure = {key: getattr(model, key) for key in STRUCTURAL_KEYS}
    for key, stored, expected in structure_mismatches(config.get("config", {}), model_structure):
        raise ValueError(f"{path} holds a different architecture: {key}={stored!r}, the model has {key}={expected!r}.")


def _stored_parameter_count(path):
    import h5py

    total = 0

    def visit(name, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
            total += int(np.prod(obj.shape))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return total


def _head_weights(model):
    classifier = model.classifier_layer()
    return list(classifier.weights) if classifier is not None else []


def load_weights_file(model, path):
    """Loads `path` into `model`; a classifier of another size is skipped with a warning.

    Raises ValueError when anything but the classifier fails to match.
    """
    path = str(path)
    if path.endswith(".keras"):
        _check_structure(model, read_keras_config(path), path)
    try:
        model.load_weights(path)
        return
    except ValueError:
        pass
    head = _head_weights(model)
    backbone_count = model.count_params() - sum(int(np.prod(w.shape)) for w in head)
    if path.endswith(".weights.h5"):
        extra = _stored_parameter_count(path) - backbone_count
        features = head[0].shape[0] if head else None
        if extra < 0 or (extra and (not features or extra % (features + 1))):
            raise ValueError(
                f"{path} does not hold weights of this architecture "
                f"({model.architecture or model.name}): its backbone does not match."
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(path, skip_mismatch=True)
    logger.warning(
        "%s: classifier weights skipped (%s): their number of classes differs from the model's "
        "(num_classes=%d); the classifier is freshly initialised.",
        path, ", ".join(w.path for w in head) or "none in the model", model.num_classes,
    )
