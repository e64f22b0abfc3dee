"""Stored arrays on their way into a model: files mapped into memory, alignment, and arrays handed to each backend.

One module owns the path of a weight from disk to a Keras variable, for first
loads (the conversion writes a cache entry, then fills the model from it) and
cached loads alike:

1. `mapped_view`: a big tensor of a safetensors file is mapped into memory
   (copy-on-write where the model may keep it), its pages mapped in one call;
2. `DATA_ALIGNMENT`: the files written here start their data, and put their
   whole-block tensors, on 64-byte boundaries, and small tensors are read into
   `aligned_empty` arrays, because JAX and TensorFlow keep an aligned array as a
   weight where they would copy any other;
3. `array_to_keep` and `backend_value`: the array becomes the backend's tensor
   without a copy where the backend allows it (`weights_io.fill_shell` calls them).
"""

import math
import mmap
import sys

import keras
import numpy as np

MIN_MAPPED_BYTES = 1 << 20  # smaller tensors are read: mapping them costs more than it saves
DATA_ALIGNMENT = 64  # bytes: where the safetensors files written here start their data and big tensors
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)


def aligned_empty(shape, dtype, alignment=DATA_ALIGNMENT):
    """A new uninitialised array whose data starts on an `alignment`-byte boundary (as mapped tensors of
    a cache entry do): JAX and TensorFlow keep such an array as a weight instead of copying it."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buffer = np.empty(nbytes + alignment, np.uint8)
    start = -buffer.ctypes.data % alignment
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def mapped_view(f, offset, nbytes, writable=False):
    """uint8 view of bytes `offset:offset + nbytes` of open file `f`, its pages mapped at once.

    Read-only; or, `writable`, a private copy-on-write mapping: the page cache's
    own pages until one is written, which copies that page only, and the file
    never changes. (`MAP_POPULATE` would copy every page of a writable private
    mapping up front, so those pages are mapped with `MADV_POPULATE_READ`.)
    """
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    length = offset + nbytes - start
    if writable:
        mapping = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_COPY, offset=start)
        _map_pages_now(mapping)
    elif hasattr(mmap, "MAP_POPULATE"):  # Linux: fault the pages in with one call, not one fault per page
        mapping = mmap.mmap(
            f.fileno(), length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=start
        )
    else:
        mapping = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start)
    return np.frombuffer(mapping, np.uint8, count=nbytes, offset=offset - start)


def _map_pages_now(mapping):
    """Maps every page of `mapping` readable in one call, copying none (Linux 5.14+); elsewhere pages
    are mapped as they are first touched."""
    if MADV_POPULATE_READ is not None:
        try:
            mapping.madvise(MADV_POPULATE_READ)
        except OSError:  # an older kernel
            pass


def backend_value(value, dtype):
    """`value` (an array) as this backend's tensor of `dtype`, sharing its memory where the backend can.

    Each backend is handed the array in the form it keeps as it is: torch a
    tensor sharing its memory, TensorFlow a DLPack view of it, JAX a transfer
    (which, on the CPU, keeps an array that starts on a 64-byte boundary).
    """
    if keras.backend.standardize_dtype(value.dtype) != dtype:
        return keras.ops.cast(value, dtype)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # a plain transfer: `jnp.asarray` stages a copy, compiled once per shape

        return jax.device_put(value)
    if not (value.flags.c_contiguous and value.flags.writeable):
        return value  # Keras copies it
    if backend == "torch":
        import torch  # Keras would copy it twice

        return torch.from_numpy(value)
    if backend == "tensorflow" and value.ctypes.data % DATA_ALIGNMENT == 0:
        import tensorflow as tf  # Keras would copy it twice; TensorFlow's kernels expect this alignment

        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    return value


def array_to_keep(tensor):
    """An array the model may keep: a lazy tensor's big values come as a copy-on-write mapping of its
    file (no copy, no fresh memory: every backend keeps the pages as they are), the rest are read."""
    if hasattr(tensor, "read"):
        return tensor.read(mapped=True, writable=True)
    return np.asarray(tensor)
