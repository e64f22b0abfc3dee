"""The error types of reading, converting and loading checkpoints, and the finiteness check.

Every message starts with the file (or other source) it is about, then names
the key, and both shapes when shapes are the problem.
"""

import numpy as np


class ConversionError(ValueError):
    """Base of every error a converter raises on a bad checkpoint or argument."""


class CheckpointFormatError(ConversionError):
    """Not a readable checkpoint: unknown format, truncated, inconsistent header, unsafe pickle."""


class KeyMismatchError(ConversionError):
    """Missing or unexpected keys, duplicate keys, or keys from different layouts mixed."""


class ShapeMismatchError(ConversionError):
    """A tensor's shape differs from the one its destination needs."""


class BadValueError(ConversionError):
    """NaN / Inf values, or values a requested float16 target cannot hold."""


class ArchitectureError(ConversionError):
    """The architecture cannot be inferred, or conflicts with the one asked for."""


def _is_float16(target_dtype):
    """True for float16 targets: "float16", np.float16, "mixed_float16" or a Keras policy computing in float16."""
    target = getattr(target_dtype, "compute_dtype", target_dtype)
    if isinstance(target, str) and target.startswith("mixed_"):
        target = target[len("mixed_") :]
    try:
        return np.dtype(target) == np.float16
    except TypeError:  # "bfloat16" and other names numpy does not know
        return False


def check_finite(state_dict, source, target_dtype=None):
    """Raise BadValueError for the first tensor holding NaN or Inf.

    With a float16 `target_dtype`, also for finite values beyond float16's
    range (they would become Inf). Non-float tensors are skipped.
    """
    limit = float(np.finfo(np.float16).max) if _is_float16(target_dtype) else None
    for key, value in state_dict.items():
        value = np.asarray(value)
        if value.dtype.kind != "f" or value.size == 0:
            continue
        low, high = float(value.min()), float(value.max())  # NaN and Inf propagate; no temporary arrays
        if not (np.isfinite(low) and np.isfinite(high)):
            n_nan = int(np.isnan(value).sum())
            n_inf = int(np.isinf(value).sum())
            raise BadValueError(
                f"{source}: tensor {key!r} (shape {value.shape}) has {n_nan} NaN and {n_inf} Inf values"
            )
        peak = max(abs(low), abs(high))
        if limit is not None and peak > limit:
            raise BadValueError(
                f"{source}: tensor {key!r} (shape {value.shape}) has values up to {peak:.6g}, beyond "
                f"float16's range (+-{limit:g}); they would become Inf. Use float32 or bfloat16."
            )
