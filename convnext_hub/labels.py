"""Turn classifier logits into readable class names (ImageNet's, or a fine-tuned model's own)."""

import numpy as np

import checkpoints


def decode_predictions(logits, name, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top `top` `(class_index, class_name, probability)` per sample, most likely first.

    `logits` is a (batch, num_classes) array or backend tensor; `name` is a
    checkpoint tag, alias or architecture name, a label set such as
    `"imagenet-1k"`, or a model (or its `pretrained_cfg` dict): a fine-tuned
    model's `pretrained_cfg["label_names"]` are its own classes, which no
    registry name knows. Probabilities are the softmax of the logits.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}.")
    class_names = _class_names(name)
    if not isinstance(name, str):
        name = (_cfg_of(name) or {}).get("name")
    logits = _to_numpy(logits)
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(
            f"Expected logits of shape (batch, {len(class_names)}) for {name!r}, got shape {logits.shape}."
        )
    probabilities = _softmax(logits)
    ranked = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
    return [
        [(int(index), class_names[index], float(sample[index])) for index in indices]
        for sample, indices in zip(probabilities, ranked)
    ]


def _class_names(name) -> list[str]:
    """Class names of a checkpoint / label-set name, or of a model or pretrained_cfg."""
    if isinstance(name, str):
        return checkpoints.label_names(_label_set(name))
    cfg = _cfg_of(name)
    if cfg is None:
        raise TypeError(f"Expected a checkpoint name, a model or a pretrained_cfg dict. Received: name={name!r}")
    if cfg.get("label_names"):
        return list(cfg["label_names"])
    if cfg.get("label_set"):
        return checkpoints.label_names(cfg["label_set"])
    if cfg.get("name"):
        return checkpoints.label_names(_label_set(cfg["name"]))
    raise ValueError("The model's pretrained_cfg names no classes (no label_names, label_set or checkpoint name).")


def _cfg_of(name):
    """The pretrained_cfg of a model, a dict itself, or None."""
    if isinstance(name, dict):
        return name
    if hasattr(name, "pretrained_cfg"):  # a model; built without a checkpoint, it has None
        return dict(name.pretrained_cfg or {})
    return None


def _label_set(name: str) -> str:
    """The label set named directly, or the one of the checkpoint `name` resolves to."""
    if name in checkpoints.LABEL_SETS:
        return name
    entry = checkpoints.resolve(name)
    if entry["label_set"] is None:
        raise ValueError(
            f"Checkpoint {entry['name']!r} has no ImageNet classifier "
            f"(num_classes={entry['num_classes']}), so its outputs have no class names."
        )
    return entry["label_set"]


def _to_numpy(logits) -> np.ndarray:
    """Logits as a float64 numpy array; backend tensors go through keras."""
    if not isinstance(logits, (np.ndarray, list, tuple)):
        import keras  # only needed for backend tensors; keeps numpy inputs keras-free

        logits = keras.ops.convert_to_numpy(logits)
    return np.asarray(logits, dtype=np.float64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum for numerical stability."""
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)
