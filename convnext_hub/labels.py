"""Turn classifier logits into readable ImageNet class names."""

import numpy as np

import checkpoints


def decode_predictions(logits, name: str, top: int = 5) -> list[list[tuple[int, str, float]]]:
    """Top `top` `(class_index, class_name, probability)` per sample, most likely first.

    `logits` is a (batch, num_classes) array or backend tensor; `name` is a
    checkpoint tag, alias or architecture name, or a label set such as
    `"imagenet-1k"`. Probabilities are the softmax of the logits.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}.")
    class_names = checkpoints.label_names(_label_set(name))
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
