"""Random timm-layout checkpoints for the benchmarks, written one tensor at a time (no Hub access needed)."""

import json
import math
import struct

import numpy as np


def random_tensor(rng, key, shape):
    """Plausible random values: weights ~ N(0, 1/fan_in), 1-D norm scales ~ 1, other vectors small."""
    if len(shape) >= 2:
        return (rng.standard_normal(shape, dtype=np.float32) / math.sqrt(math.prod(shape[1:]))).astype(np.float32)
    base = 1.0 if key.endswith(".weight") and ".grn." not in key else 0.0
    return (base + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def timm_shapes(arch, num_classes=1000):
    """`{timm key: shape}` of `arch`, from timm's model built on the meta device (no memory for weights)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_random_safetensors(arch, path, num_classes=1000, seed=0):
    """A timm-keyed float32 safetensors file of random weights, one tensor in memory at a time; `path`."""
    shapes = timm_shapes(arch, num_classes)
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key, shape in shapes.items():
            f.write(random_tensor(rng, key, shape).tobytes())
    return path
