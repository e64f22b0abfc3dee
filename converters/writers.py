"""Write a safetensors file one tensor at a time.

The header (every name, dtype and shape) is known before any value, so a file
of any size is written holding one tensor in memory; `readers.read_safetensors`
(and the `safetensors` package) read it back.
"""
import json
import math
import struct

import numpy as np

from .readers import SAFETENSORS_DTYPES

SAFETENSORS_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # the dtypes Keras weights have
DATA_ALIGNMENT = 64  # the header is padded so that the data starts on this boundary


def write_safetensors(path, specs, values):
    """Writes `values` (arrays, in the order of `specs`) to `path` as safetensors.

    `specs` is `[(name, shape, dtype name)]`. Each value must have its spec's
    shape and dtype; ValueError names the tensor that does not.
    """
    header, offset = {}, 0
    for name, shape, dtype in specs:
        if dtype not in SAFETENSORS_CODES:
            raise ValueError(f"{name}: dtype {dtype} cannot be written to safetensors here "
                             f"(known: {', '.join(SAFETENSORS_CODES)})")
        code = SAFETENSORS_CODES[dtype]
        nbytes = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % DATA_ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for (name, shape, dtype), value in zip(specs, values, strict=True):
            value = np.ascontiguousarray(value)
            if tuple(value.shape) != tuple(shape) or value.dtype.name != dtype:
                raise ValueError(f"{name}: got a {value.dtype.name} array of shape {tuple(value.shape)}, "
                                 f"declared {dtype} {tuple(shape)}")
            f.write(value.reshape(-1).view(np.uint8).data)
    return path
