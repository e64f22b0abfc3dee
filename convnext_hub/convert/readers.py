"""Read a checkpoint file or folder into a flat `{key: numpy.ndarray}` dict.

The format is recognised from the content, never from the file name:
safetensors, PyTorch zip or legacy pickles (through `torch.load` with
`weights_only=True`, torch imported only then), sharded `*.index.json`
checkpoints and Hugging Face / timm model folders. Floating tensors come back
as float32 (float16 and bfloat16 are widened exactly); other dtypes keep theirs.
"""

import argparse
import json
import logging
import math
import os
import pickle
import re
import struct

import numpy as np

from ..errors import CheckpointFormatError, KeyMismatchError
from ..stored_arrays import MIN_MAPPED_BYTES, aligned_empty, mapped_view

logger = logging.getLogger("converters")

MAX_HEADER_BYTES = 100 * 1024 * 1024
MIN_TORCH = (2, 6)  # torch < 2.6 has weights_only bypasses (CVE-2025-32434)

# safetensors dtype -> little-endian numpy dtype of the stored bytes (BF16 read as raw uint16).
SAFETENSORS_DTYPES = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "U16": "<u2",
    "I16": "<i2",
    "U32": "<u4",
    "I32": "<i4",
    "U64": "<u8",
    "I64": "<i8",
    "F16": "<f2",
    "BF16": "<u2",
    "F32": "<f4",
    "F64": "<f8",
}

# Top-level wrappers, in order of preference; EMA weights are used only when no plain ones exist.
PLAIN_WRAPPERS = ("model", "state_dict", "module")
EMA_WRAPPERS = ("model_ema", "state_dict_ema")
KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile
# Non-tensor entries skipped when they sit beside the weights.
METADATA_KEYS = frozenset(
    {
        "epoch",
        "step",
        "global_step",
        "optimizer",
        "lr_scheduler",
        "scheduler",
        "scaler",
        "args",
        "config",
        "arch",
        "version",
        "metadata",
        "best_acc1",
        "best_metric",
        "max_accuracy",
        "amp",
    }
)

# Weight files looked for in a folder, in order of preference.
FOLDER_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


class StateDict(dict):
    """`{key: tensor}` that remembers the file it was read from, so later errors can name it."""

    def __init__(self, tensors, source):
        super().__init__(tensors)
        self.source = source


def load_checkpoint(path, lazy=False):
    """Read `path` (file or model folder) into `{key: numpy.ndarray}` (a `StateDict`, whose `source` is the file).

    `lazy=True`: safetensors values are `LazyTensor`s, read when converted to arrays.

    Wrappers (`model`, `state_dict`, `module`, else `model_ema` / `state_dict_ema`)
    are unwrapped and `module.` / `_orig_mod.` prefixes stripped. Raises
    CheckpointFormatError naming the file for anything unreadable or unsafe.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointFormatError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        return load_checkpoint(weights_file_in(path), lazy)
    kind = sniff_format(path)
    if kind == "safetensors":
        tensors = read_safetensors(path, lazy)
    elif kind == "index":
        tensors = read_sharded(path, lazy)
    else:
        tensors = read_torch_pickle(path, zipped=kind == "torch_zip")
    return StateDict(tensors, path)


def weights_file_in(folder):
    """The weights file of a Hugging Face or timm model folder."""
    for name in FOLDER_WEIGHTS:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    found = sorted(os.listdir(folder))
    raise CheckpointFormatError(
        f"{folder}: folder holds no weights file (looked for {', '.join(FOLDER_WEIGHTS)}); "
        f"it holds {found[:10]}{' ...' if len(found) > 10 else ''}"
    )


def sniff_format(path):
    """ "safetensors", "torch_zip", "torch_pickle" or "index", from the first bytes of `path`."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointFormatError(f"{path}: cannot read the file ({e.strerror})") from e
    if size == 0:
        raise CheckpointFormatError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    looks_safetensors = head[8:9] == b"{"
    if head.startswith(b"PK\x03\x04"):
        return "torch_zip"
    if looks_safetensors and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch_pickle"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "index"
    if looks_safetensors:
        return "safetensors"  # with a header length past the end: read_safetensors says so
    raise CheckpointFormatError(
        f"{path}: not a recognised checkpoint ({size} bytes, starting {head!r}); expected safetensors, "
        "a PyTorch pickle (.pth / .pt / .bin), a sharded *.index.json or a model folder"
    )


# --- safetensors -------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def read_safetensors_header(path, f, size):
    """Validate the header of open safetensors file `f`: `({key: (dtype, shape, begin, end)}, data_start)`.

    Checks the header length, JSON (no duplicate keys), each dtype, that shape x
    itemsize equals the byte span, and that the spans tile the data region exactly.
    """
    if size < 8:
        raise CheckpointFormatError(f"{path}: {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise CheckpointFormatError(
            f"{path}: safetensors header length {n} exceeds the file ({size} bytes): truncated or not safetensors"
        )
    if n > MAX_HEADER_BYTES:
        raise CheckpointFormatError(f"{path}: safetensors header length {n} is over the {MAX_HEADER_BYTES} limit")
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise CheckpointFormatError(f"{path}: duplicate key {e.args[0]!r} in the safetensors header") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointFormatError(f"{path}: safetensors __metadata__ must map strings to strings")

    data_start, data_len = 8 + n, size - 8 - n
    entries = {}
    for key, info in header.items():
        if not isinstance(info, dict):
            raise CheckpointFormatError(f"{path}: tensor {key!r}: header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise CheckpointFormatError(
                f"{path}: tensor {key!r}: unsupported dtype {dtype!r} (known: {', '.join(SAFETENSORS_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointFormatError(f"{path}: tensor {key!r}: bad shape {shape!r}")
        if len(shape) > 32 or math.prod(max(d, 1) for d in shape) * 8 >= 2**63:
            raise CheckpointFormatError(f"{path}: tensor {key!r}: shape {shape!r} is beyond what numpy can hold")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointFormatError(f"{path}: tensor {key!r}: bad data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise CheckpointFormatError(
                f"{path}: tensor {key!r}: shape {tuple(shape)} of {dtype} needs {nbytes} bytes, "
                f"but data_offsets [{begin}, {end}] span {end - begin}"
            )
        if end > data_len:
            raise CheckpointFormatError(
                f"{path}: tensor {key!r}: data_offsets end {end} is past the data region ({data_len} bytes): "
                "the file is truncated or its header lies"
            )
        entries[key] = (dtype, tuple(shape), begin, end)

    position, previous = 0, None
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin < position:
            raise CheckpointFormatError(f"{path}: tensors {previous!r} and {key!r} overlap (bytes {begin}..{position})")
        if begin > position:
            after = f"after {previous!r}" if previous else "before the first tensor"
            raise CheckpointFormatError(f"{path}: {begin - position} unused bytes {after} (before {key!r})")
        position, previous = end, key
    if position != data_len:
        raise CheckpointFormatError(f"{path}: {data_len - position} bytes of trailing data after the last tensor")
    return entries, data_start


def _decode(raw, dtype):
    """Stored little-endian values -> native numpy, floats widened to float32."""
    if dtype == "BF16":
        wide = raw.astype(np.uint32)
        wide <<= 16  # bfloat16 is the top half of a float32
        return wide.view(np.float32)
    if raw.dtype.kind == "f":
        return raw.astype(np.float32, copy=False)
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)


class LazyTensor:
    """One tensor of a validated safetensors file, read from disk each time it is turned into an array.

    Lets a conversion hold one tensor in memory at a time (`np.asarray(t)` reads it).
    """

    def __init__(self, path, key, dtype, shape, offset, nbytes):
        self.path, self.key, self.stored_dtype = path, key, dtype
        self.shape, self.ndim = tuple(shape), len(shape)
        self._offset, self._nbytes = offset, nbytes

    def __array__(self, dtype=None, copy=None):
        value = self.read()
        return value if dtype is None else value.astype(dtype, copy=False)

    def read(self, scratch=None, mapped=False, writable=False):
        """The tensor's values, read now; `scratch(shape, dtype)` may supply the array to read into.

        `mapped=True`: a big float32 tensor comes back as a read-only view of the
        file mapped into memory, saving a copy; use it before the file can change.
        With `writable=True` too, the view is a private copy-on-write mapping: an
        array of its own for the caller, whose pages are the page cache's until
        written (for a file that is replaced, never changed in place).
        """
        stored = np.dtype(SAFETENSORS_DTYPES[self.stored_dtype])
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < self._offset + self._nbytes:
                raise self._ended_early()
            if mapped and self.stored_dtype == "F32" and self._nbytes >= MIN_MAPPED_BYTES:
                view = mapped_view(f, self._offset, self._nbytes, writable)
                return view.view(stored).reshape(self.shape)
            raw = scratch(self.shape, stored) if scratch else aligned_empty(self.shape, stored)
            f.seek(self._offset)
            if f.readinto(raw.reshape(-1).view(np.uint8)) != self._nbytes:
                raise self._ended_early()
        return _decode(raw, self.stored_dtype)

    def _ended_early(self):
        return CheckpointFormatError(f"{self.path}: tensor {self.key!r}: the file ended early (changed while read?)")

    def reshape(self, *shape):
        return np.asarray(self).reshape(*shape)


def read_safetensors(path, lazy=False):
    """Read a safetensors file, one tensor at a time straight into its array (one copy in memory).

    With `lazy=True` the header is validated now and each value is a `LazyTensor`.
    """
    with open(path, "rb") as f:
        entries, data_start = read_safetensors_header(path, f, os.fstat(f.fileno()).st_size)
    tensors = {
        key: LazyTensor(path, key, dtype, shape, data_start + begin, end - begin)
        for key, (dtype, shape, begin, end) in entries.items()
    }
    return tensors if lazy else {key: np.asarray(t) for key, t in tensors.items()}


# --- PyTorch pickles ---------------------------------------------------------------------------


def _import_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckpointFormatError(
            f"{path}: reading a PyTorch pickle checkpoint needs torch (pip install torch); "
            "safetensors checkpoints do not"
        ) from None
    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    if version < MIN_TORCH:
        raise CheckpointFormatError(
            f"{path}: refusing to read a pickle with torch {torch.__version__}: torch >= "
            f"{'.'.join(map(str, MIN_TORCH))} is needed for a safe weights_only load"
        )
    return torch


def _refusal(message):
    """The part of torch's weights_only error that names what was refused."""
    found = re.search(r"GLOBAL (\S+)(?: whose module \S+ is blocked| was not an allowed global)?", message)
    if found:
        return found.group(0).rstrip(".")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return detail[-1] if detail else message


def read_torch_pickle(path, zipped=True):
    """Read a `.pth` / `.pt` / `.bin` pickle with `torch.load(weights_only=True)`; never unsafely.

    `weights_only=True` is passed explicitly, so `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`
    cannot turn it off (torch only lets that variable override an unset argument).
    `argparse.Namespace` (the `args` entry of training checkpoints) is allowed.
    """

    torch = _import_torch(path)
    # torch.load hands paths ending in .safetensors to safetensors: pass those as a file object.
    by_path = zipped and not path.endswith(".safetensors")
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path if by_path else f, map_location="cpu", weights_only=True, mmap=by_path)
    except pickle.UnpicklingError as e:
        raise CheckpointFormatError(
            f"{path}: refused by torch's weights_only unpickler: {_refusal(str(e))}. Nothing in the file was "
            "run. Only plain tensor state dicts are read; convert the checkpoint to safetensors where it is trusted"
        ) from None
    except Exception as e:  # corrupt zip, truncated pickle, TorchScript archive, ...
        raise CheckpointFormatError(f"{path}: torch.load failed: {type(e).__name__}: {e}") from e
    state_dict = unwrap_state_dict(obj, path)
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        try:
            if value.layout != torch.strided or value.is_nested or value.is_quantized or value.device.type != "cpu":
                raise TypeError(f"a {value.layout} {value.dtype} tensor on {value.device}")
            if value.numel() > max(value.untyped_storage().nbytes(), 1):
                raise ValueError(
                    f"shape {tuple(value.shape)} with strides {value.stride()} declares more "
                    f"elements than its storage holds ({value.untyped_storage().nbytes()} bytes)"
                )
            value = value.detach().resolve_conj().resolve_neg()
            out[key] = (value.float() if value.is_floating_point() else value).numpy()
        except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
            raise CheckpointFormatError(f"{path}: tensor {key!r} cannot be read as an array: {e}") from None
    return out


def unwrap_state_dict(obj, source):
    """The weights dict inside a loaded pickle, with wrapper keys removed and key prefixes stripped.

    Metadata entries (`epoch`, `optimizer`, `args`, ...) are dropped; any other
    non-tensor value is left for the caller to reject.
    """
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{source}: holds a {type(obj).__name__}, not a dict of tensors")
    seen = set()  # a pickle can make a dict contain itself
    while id(obj) not in seen:
        seen.add(id(obj))
        wrapper = next((w for w in PLAIN_WRAPPERS if isinstance(obj.get(w), dict)), None)
        wrapper = wrapper or next((w for w in EMA_WRAPPERS if isinstance(obj.get(w), dict)), None)
        if wrapper is None:
            break
        logger.debug("%s: using the weights under %r", source, wrapper)
        obj = obj[wrapper]
    out = {}
    for key, value in obj.items():
        if key in METADATA_KEYS:
            continue
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{source}: key {key!r} is a {type(key).__name__}, not a string")
        name = key
        while name.startswith(KEY_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise KeyMismatchError(f"{source}: key {key!r} duplicates {name!r} once its prefix is stripped")
        out[name] = value
    return out


# --- sharded checkpoints -----------------------------------------------------------------------


def read_sharded(index_path, lazy=False):
    """Read a sharded checkpoint from its `*.index.json`; every key must be in the shard the index names."""
    try:
        with open(index_path, encoding="utf-8-sig") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointFormatError(f"{index_path}: not a readable JSON index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFormatError(f"{index_path}: JSON without a non-empty 'weight_map': not a sharded index")

    root = os.path.dirname(os.path.abspath(index_path))
    shards = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.isabs(shard) or os.path.normpath(shard).split(os.sep)[0] in ("..", ""):
            raise CheckpointFormatError(f"{index_path}: key {key!r} maps to {shard!r}, not a file beside the index")
        shards.setdefault(shard, set()).add(key)

    out = {}
    for shard, keys in shards.items():
        shard_path = os.path.join(root, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointFormatError(f"{index_path}: shard {shard!r} is missing")
        if sniff_format(shard_path) == "index":
            raise CheckpointFormatError(f"{index_path}: shard {shard!r} is itself an index")
        tensors = load_checkpoint(shard_path, lazy)
        missing, extra = sorted(keys - tensors.keys()), sorted(tensors.keys() - keys)
        if missing:
            raise CheckpointFormatError(f"{index_path}: key {missing[0]!r} is mapped to {shard!r}, which lacks it")
        if extra:
            where = weight_map.get(extra[0])
            hint = f"the index puts it in {where!r}" if where else "the index does not list it"
            raise CheckpointFormatError(f"{index_path}: shard {shard!r} holds key {extra[0]!r}, but {hint}")
        out.update(tensors)
    return out
