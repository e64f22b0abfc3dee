"""Write a safetensors file one tensor at a time.

The header (every name, dtype and shape) is known before any value, so a file
of any size is written holding one tensor in memory; `readers.read_safetensors`
(and the `safetensors` package) read it back.
"""

import json
import math
import struct

import numpy as np

from ..stored_arrays import DATA_ALIGNMENT
from .readers import SAFETENSORS_DTYPES

SAFETENSORS_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # the dtypes Keras weights have


def write_safetensors(path, specs, values, digest=None):
    """Writes `values` (arrays, in the order of `specs`) to `path` as safetensors.

    `specs` is `[(name, shape, dtype name)]`. Each value must have its spec's
    shape and dtype; ValueError names the tensor that does not. `digest`, an
    object with `update(bytes)` (a `hashlib` or `xxhash` hash), is given every
    byte written, in order: the file's checksum without reading it back.
    """
    header, offset = {}, 0
    for name, shape, dtype in specs:
        if dtype not in SAFETENSORS_CODES:
            raise ValueError(
                f"{name}: dtype {dtype} cannot be written to safetensors here (known: {', '.join(SAFETENSORS_CODES)})"
            )
        code = SAFETENSORS_CODES[dtype]
        nbytes = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % DATA_ALIGNMENT)
    with open(path, "wb") as f:

        def put(data):
            f.write(data)
            if digest is not None:
                digest.update(data)

        put(struct.pack("<Q", len(blob)) + blob)
        for (name, shape, dtype), value in zip(specs, values, strict=True):
            value = np.ascontiguousarray(value)
            if tuple(value.shape) != tuple(shape) or value.dtype.name != dtype:
                raise ValueError(
                    f"{name}: got a {value.dtype.name} array of shape {tuple(value.shape)}, "
                    f"declared {dtype} {tuple(shape)}"
                )
            put(value.reshape(-1).view(np.uint8).data)
    return path
