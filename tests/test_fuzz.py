"""Fuzzing: hostile bytes, headers, pickles and key sets meet only the documented errors.

Every property feeds generated input to the checkpoint reader (`load_checkpoint`),
the format detector (`sniff_format`) or the key mapping (`detect_layout`,
`to_timm_keys`, `infer_architecture`, `check_architecture`, `convert`), and
allows exactly two outcomes: a result of the documented kind, or a
`ConversionError` subclass. Any other exception is a bug. Three more
invariants hold on every input:

* nothing in a pickle is executed: generated pickles offer a canary global
  (tests.test_fuzz._canary), which must never be called;
* a reader never hands back more tensor elements than the file has bytes (a
  stride-0 or overlapping tensor in a tiny file must not turn into a
  terabyte-sized array for the code downstream);
* a refusal names the file (or folder) it is about.

The CI run is short and reproducible (`derandomize=True`). Set
`CONVNEXT_FUZZ_EXAMPLES=N` for a long, randomly seeded run with about N
examples per property (`benchmarks/fuzz_long.py` does that and counts the
outcomes). `CONVNEXT_FUZZ_TALLY=1` records undocumented exceptions instead of
failing on the first one, so that a long run can count them.
"""

import collections
import functools
import io
import json
import math
import os
import pickle
import re
import struct
import tempfile
import traceback
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converters import (
    ConversionError,
    check_architecture,
    detect_layout,
    infer_architecture,
    load_checkpoint,
    to_timm_keys,
)
from convnext_hub.convert.layouts import LAYOUTS
from convnext_hub.convert.readers import SAFETENSORS_DTYPES, sniff_format
from tests import checkpoint_factory as cf

# torch's notes on unusual pickle protocols, sparse tensors and the like: noise here;
# float64 values beyond float32's range read as inf (numpy warns): expected with random bytes.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

# --- run configuration and outcome counting ------------------------------------------------------

LONG_EXAMPLES = int(os.environ.get("CONVNEXT_FUZZ_EXAMPLES") or 0)
TALLY = os.environ.get("CONVNEXT_FUZZ_TALLY", "") not in ("", "0")

# property -> outcome ("accepted", an error class name, or "UNDOCUMENTED <type>") -> count
OUTCOMES = collections.defaultdict(collections.Counter)
# (property, outcome) -> first example's traceback, for undocumented outcomes in tally mode
FIRST_FAILURES = {}

SNIFF_VALUES = {"safetensors", "torch_zip", "torch_pickle", "index"}


def fuzz_settings(ci_examples, long_share=1.0):
    """`ci_examples` examples, derandomized, in CI; `CONVNEXT_FUZZ_EXAMPLES * long_share` in a long run."""
    if LONG_EXAMPLES:
        examples, derandomize = max(ci_examples, int(LONG_EXAMPLES * long_share)), False
    else:
        examples, derandomize = ci_examples, True
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


class Undocumented(AssertionError):
    """Raised (outside tally mode) for an invariant broken by a fuzzed input."""


def violation(prop, outcome, message):
    OUTCOMES[prop][outcome] += 1
    if TALLY:
        FIRST_FAILURES.setdefault((prop, outcome), message)
        return
    raise Undocumented(f"{prop}: {message}")


def attempt(prop, fn, *args, **kwargs):
    """(True, result) or (False, ConversionError); any other exception is counted and re-raised."""
    try:
        result = fn(*args, **kwargs)
    except ConversionError as e:
        OUTCOMES[prop][type(e).__name__] += 1
        return False, e
    except Exception as e:
        outcome = f"UNDOCUMENTED {type(e).__name__}"
        OUTCOMES[prop][outcome] += 1
        if not TALLY:
            raise
        FIRST_FAILURES.setdefault((prop, outcome), traceback.format_exc())
        return None, e
    OUTCOMES[prop]["accepted"] += 1
    return True, result


def check_read(prop, ok, result, folder, budget):
    """Invariants of a `load_checkpoint` outcome for files written under `folder`, `budget` bytes in all."""
    if ok is None:
        return
    if not ok:
        if not str(result).startswith(folder):
            violation(prop, "message without the file", f"the message does not start with the file: {result}")
        return
    assert isinstance(result, dict)
    for key, value in result.items():
        assert isinstance(key, str), key
        assert isinstance(value, np.ndarray), (key, type(value))
        if value.size > max(budget, 1):
            violation(
                prop,
                "amplified tensor",
                f"tensor {key!r} has shape {value.shape} ({value.size} elements, strides {value.strides}) "
                f"read from {budget} bytes of files",
            )


def load_arrays(path, lazy=False):
    """`load_checkpoint(path, lazy=lazy)` with lazy tensors turned into arrays (where their errors surface)."""
    state_dict = load_checkpoint(path, lazy=lazy)
    if not lazy:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        out[key] = np.asarray(value)
        assert out[key].shape == tuple(np.shape(value)), (key, out[key].shape, np.shape(value))
    return out


def read_bytes(prop, data, name="checkpoint", lazy=False):
    """Write `data` to a fresh file called `name`, load it (`lazy` or not) and check the invariants."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        ok, result = attempt(prop, load_arrays, path, lazy)
        check_read(prop, ok, result, folder, len(data))
        return ok, result


# --- base checkpoints ----------------------------------------------------------------------------


def _bf16_bytes(values):
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


# (key, safetensors dtype, shape, raw little-endian bytes): a little of every dtype, 0-d and empty tensors.
SMALL_TENSORS = [
    ("stem.0.weight", "F32", (2, 3, 2, 2), np.linspace(-1, 1, 24, dtype="<f4").tobytes()),
    ("stem.0.bias", "F16", (2,), np.array([1.5, -2], "<f2").tobytes()),
    ("stem.1.weight", "BF16", (3,), _bf16_bytes([1.0, -0.5, 3.0])),
    ("steps", "I64", (2, 2), np.arange(4, dtype="<i8").tobytes()),
    ("mask", "BOOL", (3,), np.array([True, False, True]).tobytes()),
    ("bytes", "U8", (5,), bytes(range(5))),
    ("scale", "F64", (), np.array(0.25, "<f8").tobytes()),
    ("empty", "F32", (0, 3), b""),
    ("ids", "I32", (1, 1, 2), np.array([7, -7], "<i4").tobytes()),
]


def _decode_expected(dtype, shape, raw):
    """What `load_checkpoint` must return for one stored safetensors tensor."""
    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    values = np.frombuffer(raw, SAFETENSORS_DTYPES[dtype]).reshape(shape)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in the reader
        return values.astype(np.float32) if values.dtype.kind == "f" else values.astype(values.dtype.newbyteorder("="))


class Raw(str):
    """A JSON fragment written as is."""


def _json(value):
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return json.dumps(value)


def safetensors_bytes(pairs, data, length=None, header_bytes=None):
    """A safetensors file from header `pairs` [(key, value)] (duplicates kept) and the data region."""
    if header_bytes is None:
        header_bytes = ("{" + ",".join(f"{json.dumps(k)}:{_json(v)}" for k, v in pairs) + "}").encode(
            "utf-8", "surrogatepass"
        )
    n = len(header_bytes) if length is None else length
    return struct.pack("<Q", n) + header_bytes + data


def layout_entries(tensors):
    """[(key, header entry)] and the data region for [(key, dtype, shape, raw)], packed in order."""
    pairs, data = [], b""
    for key, dtype, shape, raw in tensors:
        pairs.append((key, {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}))
        data += raw
    return pairs, data


@functools.lru_cache(None)
def small_safetensors():
    """The SMALL_TENSORS file, as `safetensors` itself writes it (padded header) where it can."""
    from safetensors.numpy import save

    plain = {
        key: np.frombuffer(raw, SAFETENSORS_DTYPES[dtype]).reshape(shape)
        for key, dtype, shape, raw in SMALL_TENSORS
        if dtype != "BF16"
    }
    return save(plain, metadata={"format": "np"})


def small_torch_state_dict():
    return {
        "model": {
            "stem.0.weight": torch.linspace(-1, 1, 24).reshape(2, 3, 2, 2),
            "stem.0.bias": torch.tensor([1.5, -2.0], dtype=torch.float16),
            "stem.1.weight": torch.tensor([1.0, -0.5, 3.0], dtype=torch.bfloat16),
            "steps": torch.arange(4).reshape(2, 2),
            "mask": torch.tensor([True, False, True]),
            "scale": torch.tensor(0.25, dtype=torch.float64),
            "empty": torch.zeros(0, 3),
            "shared": torch.arange(6.0)[1:4],  # a view of a bigger storage
        },
        "epoch": 3,
    }


@functools.lru_cache(None)
def small_torch_file(zipped=True):
    buf = io.BytesIO()
    torch.save(small_torch_state_dict(), buf, _use_new_zipfile_serialization=zipped)
    return buf.getvalue()


# --- byte-level mutation -------------------------------------------------------------------------


def _mutation(max_len):
    pos = st.integers(0, max_len)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(
            st.just("set"),
            pos,
            st.sampled_from(
                [0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("-"), ord("9"), ord("."), ord("e")]
            ),
        ),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)),
        st.tuples(st.just("copy"), pos, pos, st.integers(1, 32)),
        st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=16)),
    )


def mutations(max_len, max_size=4):
    return st.lists(_mutation(max_len), min_size=1, max_size=max_size)


def mutate(data, ops):
    data = bytearray(data)
    for op, *args in ops:
        if not data:
            data = bytearray(b"\0")
        if op == "flip":
            data[args[0] % len(data)] ^= args[1]
        elif op == "set":
            data[args[0] % len(data)] = args[1]
        elif op == "truncate":
            del data[args[0] % len(data) :]
        elif op == "insert":
            data[args[0] % (len(data) + 1) : args[0] % (len(data) + 1)] = args[1]
        elif op == "delete":
            start = args[0] % len(data)
            del data[start : start + args[1]]
        elif op == "copy":
            src, dst, n = args[0] % len(data), args[1] % len(data), args[2]
            data[dst : dst + n] = data[src : src + n]
        elif op == "overwrite":
            start = args[0] % len(data)
            data[start : start + len(args[1])] = args[1]
    return bytes(data)


# --- 1. raw bytes: sniff_format and load_checkpoint ----------------------------------------------

MAGIC_PREFIXES = [
    b"",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x80\x02",
    b"\x80\x04\x95",
    b"\x80",
    b"{",
    b"\xef\xbb\xbf{",
    b' \n\t{"weight_map": ',
    b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.",
    b"\x00" * 8 + b"{",
]

hostile_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(MAGIC_PREFIXES), st.binary(max_size=256)),
)


@fuzz_settings(300)
@given(hostile_bytes, st.sampled_from(["file", "checkpoint.pth", "model.safetensors", "x.index.json"]))
@example(b"", "file")
@example(b"\x80", "file")
@example(b"{", "x.index.json")
def test_random_bytes(data, name):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        ok, kind = attempt("sniff_format(random bytes)", sniff_format, path)
        if ok:
            assert kind in SNIFF_VALUES, kind
        elif ok is False:
            assert str(kind).startswith(path)
    read_bytes("load_checkpoint(random bytes)", data, name)


@fuzz_settings(30)
@given(st.sampled_from(["missing", "folder", "empty", "odd name"]))
def test_sniff_format_paths(kind):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x")
        if kind == "folder":
            os.mkdir(path)
        elif kind == "empty":
            open(path, "wb").close()
        elif kind == "odd name":
            path = os.path.join(folder, "\udcff\n x")
            try:
                open(path, "wb").close()
            except (OSError, UnicodeError):
                return
        ok, result = attempt("sniff_format(paths)", sniff_format, path)
        assert ok is not True or result in SNIFF_VALUES


@fuzz_settings(300)
@given(
    st.sampled_from(["exact", "short", "long", "huge", "random"]),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=200),
)
@example("exact", 0, b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}\0\0\0\0')
@example("huge", 2**64 - 1, b"")
def test_bytes_with_safetensors_prefix(length_kind, n, rest):
    """Random bytes behind a plausible 8-byte header length and a `{`."""
    body = b"{" + rest
    n = {"exact": len(body), "short": len(body) // 2, "long": len(body) + 1, "huge": n, "random": n % 512}[length_kind]
    read_bytes("load_checkpoint(safetensors prefix + random bytes)", struct.pack("<Q", n) + body)


# --- 2. safetensors headers ----------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 1e300, 0.5, 1.0, "F32", "", "0"]),
)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12
)
DIMS = [0, 1, 2, 3, 4, 7, 8, 2**16, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
dims = st.sampled_from(DIMS) | st.integers(-3, 12)
weird_shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.builds(
        lambda n, extra: [1] * n + extra, st.integers(30, 70), st.lists(st.sampled_from([0, 1, 2**40]), max_size=2)
    ),
    st.builds(
        lambda big: [0] + big,
        st.lists(st.sampled_from([2**31, 2**40, 2**62, 2**63, 2**64, 10**30]), min_size=1, max_size=3),
    ),
)
dtype_names = st.sampled_from(
    sorted(SAFETENSORS_DTYPES) + ["F8_E4M3", "F8_E5M2", "C64", "f32", "float32", "BF16 ", "I4", "__proto__", ""]
)
NESTING = [1, 50, 1000, 5000, 100_000]


def _nested(depth, inner="1"):
    return Raw("[" * depth + inner + "]" * depth)


header_mutation = st.one_of(
    st.tuples(
        st.just("field"), st.integers(0, 20), st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), json_values
    ),
    st.tuples(st.just("dtype"), st.integers(0, 20), dtype_names),
    st.tuples(st.just("shape"), st.integers(0, 20), weird_shapes),
    st.tuples(st.just("consistent_shape"), st.integers(0, 20), weird_shapes),
    st.tuples(
        st.just("offsets"),
        st.integers(0, 20),
        st.lists(st.sampled_from(DIMS + [-1, -(2**63), 1.0, "0", None, 5, 13, 96]) | st.integers(-4, 200), max_size=3),
    ),
    st.tuples(st.just("reverse_offsets"), st.integers(0, 20)),
    st.tuples(st.just("shift_offsets"), st.integers(0, 20), st.integers(-16, 16), st.booleans()),
    st.tuples(st.just("overlap"), st.integers(0, 20), st.integers(0, 20)),
    st.tuples(st.just("delete_field"), st.integers(0, 20), st.sampled_from(["dtype", "shape", "data_offsets"])),
    st.tuples(st.just("duplicate"), st.integers(0, 20)),
    st.tuples(
        st.just("rename"),
        st.integers(0, 20),
        st.text(max_size=8) | st.sampled_from(["", "__metadata__", "stem.0.weight", "\ud800", "a" * 300]),
    ),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(
        st.just("metadata"),
        st.one_of(
            json_values,
            st.dictionaries(st.text(max_size=4), json_values, max_size=3),
            st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
        ),
    ),
    st.tuples(st.just("duplicate_metadata")),
    st.tuples(
        st.just("nest"),
        st.integers(0, 20),
        st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__"]),
        st.sampled_from(NESTING),
    ),
    st.tuples(st.just("root"), json_values),
    st.tuples(st.just("data"), st.integers(-40, 40)),
    st.tuples(st.just("length"), st.sampled_from(["-1", "+1", "half", "zero", "max", "huge"])),
    st.tuples(
        st.just("header_bytes"),
        st.integers(0, 10_000),
        st.sampled_from(
            [
                b"\xff",
                b"\xc3",
                b"\xed\xa0\x80",
                b"\xef\xbb\xbf",
                b"\0",
                b"   ",
                b"\\",
                b'"',
                b"}",
                b"{",
                b"]",
                b",",
                b"NaN",
                b"-Infinity",
                b"1e999",
            ]
        ),
    ),
)


def build_safetensors(tensors, ops):
    """Apply header / layout mutations `ops` to the file holding `tensors`."""
    tensors = list(tensors)
    pairs, data = layout_entries(tensors)
    pairs = [(key, dict(entry)) for key, entry in pairs]
    root_override = length = None
    header_edits = []
    metadata = {"format": "pt"}
    extra_pairs = []
    for op, *args in ops:
        if op == "root":
            root_override = args[0]
            continue
        if op == "metadata":
            metadata = args[0]
            continue
        if op == "duplicate_metadata":
            extra_pairs.append(("__metadata__", {"format": "np"}))
            continue
        if op == "data":
            data = data[: len(data) + args[0]] if args[0] < 0 else data + bytes(range(args[0]))
            continue
        if op == "length":
            length = args[0]
            continue
        if op == "header_bytes":
            header_edits.append(args)
            continue
        if not pairs:
            continue
        i = args[0] % len(pairs)
        key, entry = pairs[i]
        if op == "field":
            entry[args[1]] = args[2]
        elif op == "dtype":
            entry["dtype"] = args[1]
        elif op == "shape":
            entry["shape"] = args[1]
        elif op == "consistent_shape":
            # A header that agrees with itself: the span is recomputed for the new shape and the data rebuilt.
            dtype = entry.get("dtype") if isinstance(entry.get("dtype"), str) else "F32"
            dtype = dtype if dtype in SAFETENSORS_DTYPES else "F32"
            count = math.prod(args[1]) if all(isinstance(d, int) and d >= 0 for d in args[1]) else -1
            nbytes = count * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
            if 0 <= nbytes <= 4096:
                tensors[i] = (key, dtype, tuple(args[1]), bytes(b % 251 for b in range(nbytes)))
                new_pairs, data = layout_entries(tensors)
                pairs = [(k, dict(e)) for k, e in new_pairs]
            else:
                entry["shape"] = args[1]
        elif op == "offsets":
            entry["data_offsets"] = args[1]
        elif op == "reverse_offsets":
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list):
                entry["data_offsets"] = offsets[::-1]
        elif op == "shift_offsets":
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
                entry["data_offsets"] = [offsets[0] + args[1], offsets[1] + (args[1] if args[2] else 0)]
        elif op == "overlap":
            entry["data_offsets"] = pairs[args[1] % len(pairs)][1].get("data_offsets")
        elif op == "delete_field":
            entry.pop(args[1], None)
        elif op == "duplicate":
            extra_pairs.append((key, dict(entry)))
        elif op == "rename":
            pairs[i] = (args[1], entry)
        elif op == "drop":
            del pairs[i]
        elif op == "nest":
            field = args[1]
            if field == "__metadata__":
                metadata = _nested(args[2], '"x"')
            else:
                entry[field] = _nested(args[2])
    all_pairs = ([("__metadata__", metadata)] if metadata is not None else []) + pairs + extra_pairs
    header = (
        _json(root_override)
        if root_override is not None
        else "{" + ",".join(f"{json.dumps(k)}:{_json(v)}" for k, v in all_pairs) + "}"
    )
    header_bytes = header.encode("utf-8", "surrogatepass")
    for position, fragment in header_edits:
        position %= len(header_bytes) + 1
        header_bytes = header_bytes[:position] + fragment + header_bytes[position:]
    n = len(header_bytes)
    if length is not None:
        n = {"-1": n - 1, "+1": n + 1, "half": n // 2, "zero": 0, "max": 2**64 - 1, "huge": 100 * 1024 * 1024 + 1}[
            length
        ]
    return safetensors_bytes(None, data, length=max(n, 0), header_bytes=header_bytes), tensors, not ops


@fuzz_settings(400)
@given(st.lists(header_mutation, max_size=4), st.booleans())
@example([], False)
@example([], True)
@example([("consistent_shape", 0, [0, 2**63])], False)  # zero elements, one dimension past numpy's limit
@example([("consistent_shape", 0, [0, 2**40, 2**40])], True)  # zero elements, a size past numpy's limit
@example([("consistent_shape", 0, [1] * 65)], False)  # more dimensions than numpy supports
@example([("nest", 0, "shape", 100_000)], False)  # deeper JSON than Python's recursion limit
@example([("dtype", 0, "F32"), ("field", 0, "dtype", [])], False)  # an unhashable dtype
def test_safetensors_header_mutations(ops, lazy):
    """JSON-level edits of a real header: dtypes, shapes, offsets, duplicates, metadata, nesting, lengths."""
    data, tensors, pristine = build_safetensors(SMALL_TENSORS, ops)
    ok, result = read_bytes("load_checkpoint(mutated safetensors header)", data, "model.safetensors", lazy)
    if pristine:
        assert ok, result
    if ok and all(op[0] == "consistent_shape" for op in ops):
        # A header that agrees with itself either reads back exactly or is refused.
        assert result.keys() == {key for key, *_ in tensors}
        for key, dtype, shape, raw in tensors:
            np.testing.assert_array_equal(result[key], _decode_expected(dtype, shape, raw), err_msg=key)


tensor_specs = st.lists(
    st.tuples(
        st.text(max_size=12).filter(lambda key: key != "__metadata__"),
        st.sampled_from(sorted(SAFETENSORS_DTYPES)),
        st.lists(st.integers(0, 4), max_size=4),
        st.binary(max_size=1 << 10),
    ),
    max_size=6,
    unique_by=lambda spec: spec[0],
)
# Shapes numpy may be unable to hold: zero elements with a huge dimension, more dimensions than numpy has.
ODD_SHAPES = [[0, 2**40], [2**62, 0], [0, 2**40, 2**40], [0, 2**63], [1] * 40, [1] * 65, [0] * 70]


@fuzz_settings(200)
@given(tensor_specs, st.none() | st.sampled_from(ODD_SHAPES), st.booleans(), st.booleans())
@example([("w", "F32", [2], b"\0\0\x80\x3f")], [0, 2**63], False, False)
def test_safetensors_consistent_files(specs, odd_shape, reverse, lazy):
    """Well-formed files of random keys, dtypes, shapes and bytes read back exactly.

    With an `odd_shape` (one numpy cannot hold) for the first tensor, refusing the file is right too.
    """
    tensors = []
    for key, dtype, shape, fill in specs:
        if odd_shape is not None and not tensors:
            shape = odd_shape
        nbytes = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
        raw = (fill * (nbytes // max(len(fill), 1) + 1))[:nbytes] if fill else bytes(nbytes)
        tensors.append((key, dtype, tuple(shape), raw))
    pairs, data = layout_entries(tensors[::-1] if reverse else tensors)
    ok, result = read_bytes(
        "load_checkpoint(consistent safetensors)", safetensors_bytes(pairs, data), "model.safetensors", lazy
    )
    if odd_shape is None or not tensors:
        assert ok is not False, result
    if ok:
        assert result.keys() == {key for key, *_ in tensors}
        for key, dtype, shape, raw in tensors:
            np.testing.assert_array_equal(result[key], _decode_expected(dtype, shape, raw), err_msg=key)


@fuzz_settings(300)
@given(mutations(len(small_safetensors()) + 8), st.booleans())
def test_safetensors_byte_mutations(ops, lazy):
    """Bytes flipped, set, inserted, deleted, copied or cut anywhere in a real safetensors file."""
    read_bytes(
        "load_checkpoint(mutated safetensors bytes)", mutate(small_safetensors(), ops), "model.safetensors", lazy
    )


@fuzz_settings(200)
@given(mutations(200), st.booleans())
def test_safetensors_header_byte_mutations(ops, lazy):
    """The same, aimed at the length prefix and the JSON header (where the parser's decisions are)."""
    read_bytes("load_checkpoint(mutated safetensors header bytes)", mutate(small_safetensors(), ops), lazy=lazy)


# --- 3. PyTorch pickles --------------------------------------------------------------------------

_CANARY = []


def _canary(*args, **kwargs):
    """Offered to the unpickler by every generated pickle; a call means the file ran code."""
    _CANARY.append(args)
    return {}


def check_nothing_ran(prop):
    if _CANARY:
        calls = list(_CANARY)
        _CANARY.clear()
        violation(prop, "CODE EXECUTED", f"the pickle called tests.test_fuzz._canary{calls[0]!r}")


@fuzz_settings(200)
@given(mutations(len(small_torch_file(True))))
def test_torch_zip_byte_mutations(ops):
    read_bytes("load_checkpoint(mutated torch zip bytes)", mutate(small_torch_file(True), ops), "model.pth")


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def rezip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in members:
            z.writestr(name.replace("\x00", "") or "?", content)  # zipfile cuts names at NUL; none can be empty
    return buf.getvalue()


@fuzz_settings(300)
@given(
    st.integers(0, 20),
    st.lists(_mutation(600), min_size=1, max_size=4),
    st.sampled_from(["mutate", "drop", "duplicate", "rename"]),
)
@example(0, [("flip", 0, 0)], "mutate")
def test_torch_zip_member_mutations(which, ops, action):
    """A valid zip whose members (data.pkl, storages, version, byteorder...) are mutated, dropped or renamed.

    Byte flips in the whole file mostly stop at the zip's checksums; rewriting the
    archive around a mutated member puts the damage where torch's unpickler and
    storage loader see it.
    """
    members = _zip_members(small_torch_file(True))
    i = which % len(members)
    name, content = members[i]
    if action == "mutate":
        members[i] = (name, mutate(content, ops))
    elif action == "drop":
        del members[i]
    elif action == "duplicate":
        members.append((name, mutate(content, ops)))
    else:
        members[i] = (mutate(name.encode(), ops).decode("utf-8", "replace"), content)
    read_bytes("load_checkpoint(mutated torch zip members)", rezip(members), "model.pth")
    check_nothing_ran("load_checkpoint(mutated torch zip members)")


@fuzz_settings(200)
@given(mutations(len(small_torch_file(False))))
def test_torch_legacy_pickle_byte_mutations(ops):
    read_bytes("load_checkpoint(mutated legacy torch pickle)", mutate(small_torch_file(False), ops), "model.bin")
    check_nothing_ran("load_checkpoint(mutated legacy torch pickle)")


# Pickle programs: values built from opcodes, with globals torch allows and globals it must refuse.
GLOBALS = [
    ("tests.test_fuzz", "_canary"),
    ("builtins", "getattr"),
    ("builtins", "print"),
    ("os", "getpid"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "bytearray"),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("argparse", "Namespace"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_wrapper_subclass"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "float32"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "LongStorage"),
    ("torch", "BoolStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "strided"),
    ("torch", "sparse_coo"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("no.such", "x"),
]
STORAGE_TYPES = [
    "FloatStorage",
    "HalfStorage",
    "LongStorage",
    "BoolStorage",
    "BFloat16Storage",
    "ByteStorage",
    "DoubleStorage",
    "QInt8Storage",
]


def _op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_str(s):
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _op_int(i):
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if -(2**31) <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _op_tuple(items):
    return b"(" + b"".join(items) + b"t"


pickle_ints = st.sampled_from([0, 1, 2, 3, 4, 6, 24, -1, 2**31, 2**40, 2**62, 2**63, 2**64]) | st.integers(-5, 30)
small_ints = st.integers(0, 16)
storage_persid = st.builds(  # zip: (storage, type, key, location, numel); legacy: and a view_metadata
    lambda storage, key, device, numel, legacy: (
        _op_tuple(
            [_op_str("storage"), _op_global("torch", storage), _op_str(key), _op_str(device), _op_int(numel)]
            + [b"N"] * legacy
        )
        + b"Q"
    ),
    st.sampled_from(STORAGE_TYPES),
    st.sampled_from(["0", "1", "2", "9", "../0", "", "data.pkl"]),
    st.sampled_from(["cpu", "cuda", "meta", "cpu:0", "xla", "?"]),
    small_ints | pickle_ints,
    st.booleans(),
)
tensor_rebuild = st.builds(
    lambda persid, offset, size, stride, grad: (
        _op_global("torch._utils", "_rebuild_tensor_v2")
        + _op_tuple(
            [
                persid,
                _op_int(offset),
                _op_tuple(map(_op_int, size)),
                _op_tuple(map(_op_int, stride)),
                b"\x88" if grad else b"\x89",
                _op_global("collections", "OrderedDict") + b")R",
            ]
        )
        + b"R"
    ),
    storage_persid,
    small_ints | pickle_ints,
    st.lists(small_ints | pickle_ints, max_size=4),
    st.lists(small_ints | pickle_ints, max_size=4),
    st.booleans(),
)
pickle_leaves = st.one_of(
    st.sampled_from([b"N", b"\x88", b"\x89", b")", b"}", b"]"]),
    pickle_ints.map(_op_int),
    st.text(max_size=10).map(_op_str),
    st.floats().map(lambda f: b"G" + struct.pack(">d", f)),
    st.binary(max_size=8).map(lambda b: b"C" + bytes([len(b)]) + b),
    st.sampled_from(GLOBALS).map(lambda g: _op_global(*g)),
    storage_persid,
    tensor_rebuild,
)


def _pickle_containers(children):
    keys = st.sampled_from(["stem.0.weight", "model", "state_dict", "module.x", "epoch", "args", "a"]).map(_op_str)
    return st.one_of(
        st.lists(children, max_size=4).map(_op_tuple),
        st.lists(children, max_size=4).map(lambda xs: b"](" + b"".join(xs) + b"e"),
        st.lists(st.tuples(keys | children, children), max_size=4).map(
            lambda kv: b"}(" + b"".join(k + v for k, v in kv) + b"u"
        ),
        st.tuples(st.sampled_from(GLOBALS), st.lists(children, max_size=3)).map(
            lambda t: _op_global(*t[0]) + _op_tuple(t[1]) + b"R"
        ),
        st.tuples(children, children).map(lambda t: t[0] + t[1] + b"b"),  # BUILD
        st.tuples(st.sampled_from(GLOBALS), st.lists(children, max_size=3)).map(  # NEWOBJ
            lambda t: _op_global(*t[0]) + _op_tuple(t[1]) + b"\x81"
        ),
        st.tuples(children, st.sampled_from([b"q\x00", b"h\x00", b"2", b"0", b"1", b"\x94", b"\x82\x01", b"("])).map(
            lambda t: t[0] + t[1]
        ),
        st.tuples(children, st.sampled_from([b"s", b"a", b"e", b"u", b"R", b"\x85", b"\x86", b"\x87", b"o"])).map(
            lambda t: t[0] + t[1]
        ),
    )


pickle_values = st.recursive(pickle_leaves, _pickle_containers, max_leaves=12)
# State-dict shaped programs ({key: tensor}, maybe under a wrapper), so that many get as far as the tensors.
pickle_state_dicts = st.builds(
    lambda items, wrapper: (
        (b"}(" + _op_str(wrapper) if wrapper else b"")
        + b"}("
        + b"".join(_op_str(k) + v for k, v in items)
        + b"u"
        + (b"u" if wrapper else b"")
    ),
    st.lists(
        st.tuples(
            st.sampled_from(["stem.0.weight", "module.a", "_orig_mod.b", "epoch", "args", ""]) | st.text(max_size=6),
            tensor_rebuild | pickle_values,
        ),
        max_size=3,
    ),
    st.sampled_from([None, "model", "state_dict", "model_ema", "optimizer"]),
)
pickle_programs = st.builds(
    lambda protocol, value, canary: (
        b"\x80"
        + bytes([protocol])
        + (_op_global("tests.test_fuzz", "_canary") + b")R0" if canary else b"")
        + value
        + b"."
    ),
    st.sampled_from([2, 3, 4, 5, 0, 255]),
    pickle_state_dicts | pickle_values,
    st.booleans(),
)


@functools.lru_cache(None)
def legacy_prelude():
    """The magic number, protocol and sys_info pickles that open a legacy torch file."""
    f = io.BytesIO(small_torch_file(False))
    for _ in range(3):
        pickle.load(f)
    return small_torch_file(False)[: f.tell()]


@fuzz_settings(400)
@given(pickle_programs, st.sampled_from(["bare", "legacy", "zip"]), st.binary(max_size=64))
def test_generated_pickles_run_nothing(program, container, storage):
    """Pickle programs from an opcode grammar: bare, as the body of a legacy torch file, or `data.pkl` of a zip.

    They offer the canary and other non-tensor globals, storages of every type on
    every device, with any numel, and tensors of any size / stride / offset.
    """
    if container == "bare":
        data = program
    elif container == "legacy":
        data = (
            legacy_prelude()
            + program
            + pickle.dumps(["0"], protocol=2)
            + struct.pack("<q", len(storage) // 4)
            + storage
        )
    else:
        data = rezip(
            [
                ("archive/data.pkl", program),
                ("archive/byteorder", b"little"),
                ("archive/data/0", storage),
                ("archive/data/1", storage[:3]),
                ("archive/version", b"3\n"),
            ]
        )
    prop = f"load_checkpoint(generated pickle, {container})"
    read_bytes(prop, data, "model.pth")
    check_nothing_ran(prop)


# Tensors torch can put in a state dict, whatever their layout, dtype, device or view.
TORCH_TENSORS = {
    "float32": lambda: torch.randn(2, 3),
    "bfloat16": lambda: torch.randn(3).bfloat16(),
    "float8": lambda: torch.randn(3).to(torch.float8_e4m3fn),
    "uint16": lambda: torch.zeros(3, dtype=torch.uint16),
    "int8": lambda: torch.arange(-3, 3, dtype=torch.int8),
    "bool": lambda: torch.tensor([True, False]),
    "complex64": lambda: torch.randn(3, dtype=torch.complex64),
    "complex32": lambda: torch.zeros(3, dtype=torch.complex32),
    "conj": lambda: torch.randn(3, dtype=torch.complex64).conj(),
    "neg": lambda: torch.randn(3, dtype=torch.complex64).conj().imag,
    "transposed": lambda: torch.randn(3, 4).t(),
    "sliced": lambda: torch.arange(10.0)[2:8:3],
    "expanded": lambda: torch.zeros(1).expand(2**20, 2**20),
    "scalar": lambda: torch.tensor(1.5),
    "empty": lambda: torch.zeros(0, 4),
    "parameter": lambda: torch.nn.Parameter(torch.randn(2)),
    "requires_grad": lambda: torch.randn(2, requires_grad=True),
    "sparse_coo": lambda: torch.eye(3).to_sparse(),
    "sparse_csr": lambda: torch.eye(3).to_sparse_csr(),
    "meta": lambda: torch.empty(3, device="meta"),
    "qint8": lambda: torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8),
    "nested": lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]),
}


@fuzz_settings(60, long_share=0.1)
@given(
    st.lists(st.sampled_from(sorted(TORCH_TENSORS)), min_size=1, max_size=3, unique=True),
    st.sampled_from([None, "model", "state_dict", "model_ema"]),
    st.booleans(),
)
@example(["float32"], None, True)
def test_torch_tensor_kinds(kinds, wrapper, zipped):
    """Every kind of tensor torch will save: read as a numpy array, or refused with a documented error."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = {kind: TORCH_TENSORS[kind]() for kind in kinds}
        buf = io.BytesIO()
        try:
            torch.save({wrapper: sd} if wrapper else sd, buf, _use_new_zipfile_serialization=zipped)
        except Exception:  # some kinds cannot be saved in the legacy format; not the reader's business
            return
        ok, result = read_bytes("load_checkpoint(torch tensor kinds)", buf.getvalue(), "model.pth")
    if ok:
        assert result.keys() == sd.keys()


@fuzz_settings(100)
@given(
    st.integers(0, 64),
    st.lists(st.sampled_from([0, 1, 2, 3, 5, 2**20, 2**40]), max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
    st.integers(0, 8),
)
@example(1, [2**20, 2**20], [0, 0], 0)
def test_torch_strided_views(storage_len, size, stride, offset):
    """Views with any size / stride / offset over a small storage: no more elements come back than were stored."""
    stride = (stride + [1] * len(size))[: len(size)]
    needed = 1 + offset + sum((d - 1) * s for d, s in zip(size, stride)) if all(size) else 0
    if needed > storage_len or math.prod(d for d in size if d) > 2**60:  # torch's own limits
        return
    view = torch.arange(float(storage_len)).as_strided(size, stride, offset)
    buf = io.BytesIO()
    torch.save({"w": view}, buf)
    ok, result = read_bytes("load_checkpoint(strided torch views)", buf.getvalue(), "model.pth")
    if ok and view.numel() <= 4096:
        np.testing.assert_array_equal(result["w"], view.numpy())


# --- 4. sharded indexes and folders --------------------------------------------------------------

SHARD_NAMES = [
    "a.safetensors",
    "b.bin",
    "bad.safetensors",
    "sub/c.safetensors",
    "model.safetensors.index.json",
    "./a.safetensors",
    "sub/../a.safetensors",
    "../a.safetensors",
    "/etc/passwd",
    "",
    ".",
    "sub",
    "a.safetensors/",
    "missing.safetensors",
    "sub//c.safetensors",
    "\x00",
    "a.safetensors\x00.txt",
    "~/a.safetensors",
    "sub/../../a.safetensors",
    "sub/c.safetensors/..",
]
INDEX_KEYS = ["stem.0.weight", "stem.0.bias", "steps", "mask", "c", "nowhere", ""]


def _write_shards(folder):
    """a.safetensors {stem.0.weight, stem.0.bias}, b.bin {steps, mask}, sub/c.safetensors {c}, bad.safetensors."""
    pairs, data = layout_entries(SMALL_TENSORS[:2])
    files = {
        "a.safetensors": safetensors_bytes(pairs, data),
        "bad.safetensors": b"\x10\0\0\0\0\0\0\0{not json}",
        "sub/c.safetensors": safetensors_bytes(*layout_entries([("c", "U8", (2,), b"\1\2")])),
    }
    buf = io.BytesIO()
    torch.save({"steps": torch.arange(4).reshape(2, 2), "mask": torch.tensor([True, False, True])}, buf)
    files["b.bin"] = buf.getvalue()
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return sum(map(len, files.values()))


# The keys of each shard _write_shards writes, and names that reach it from the index's folder.
SHARD_KEYS = {"a.safetensors": ["stem.0.weight", "stem.0.bias"], "b.bin": ["steps", "mask"], "sub/c.safetensors": ["c"]}
SHARD_ALIASES = {
    "a.safetensors": ["a.safetensors", "./a.safetensors", "sub/../a.safetensors"],
    "b.bin": ["b.bin", "./b.bin", "sub/.././b.bin"],
    "sub/c.safetensors": ["sub/c.safetensors", "sub//c.safetensors", "./sub/c.safetensors"],
}


def _weight_map(shards, extra):
    """A complete map of the chosen shards (under one of their names each), then `extra` entries over it."""
    out = {}
    for shard, alias in shards:
        out.update(dict.fromkeys(SHARD_KEYS[shard], SHARD_ALIASES[shard][alias % 3]))
    return {**out, **extra}


random_weight_maps = st.dictionaries(
    st.sampled_from(INDEX_KEYS) | st.text(max_size=6), st.sampled_from(SHARD_NAMES) | json_scalars, max_size=4
)


@fuzz_settings(200)
@given(
    st.one_of(
        st.builds(
            _weight_map,
            st.lists(st.tuples(st.sampled_from(sorted(SHARD_KEYS)), st.integers(0, 2)), min_size=1, max_size=3),
            st.just({}) | random_weight_maps,
        ),
        random_weight_maps,
        json_values,
    ),
    st.sampled_from(["plain", "no weight_map", "root list", "bom", "nested", "mutated"]),
    st.sampled_from(NESTING),
    mutations(120, max_size=2),
    st.booleans(),
)
@example({"stem.0.weight": "a.safetensors", "stem.0.bias": "a.safetensors"}, "plain", 1, [("flip", 0, 0)], True)
@example({"stem.0.weight": "a.safetensors"}, "nested", 100_000, [("flip", 0, 0)], False)
def test_sharded_index(weight_map, form, depth, ops, lazy):
    """Random `weight_map`s (path traversal, absolute paths, NULs, self references, wrong shards) and index files."""
    with tempfile.TemporaryDirectory() as folder:
        budget = _write_shards(folder)
        document = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        text = json.dumps(document)
        if form == "no weight_map":
            text = json.dumps({"metadata": weight_map})
        elif form == "root list":
            text = json.dumps([document])
        elif form == "bom":
            text = "\ufeff" + text
        elif form == "nested":
            text = '{"weight_map": {"x": "a.safetensors"}, "metadata": ' + "[" * depth + "]" * depth + "}"
        raw = text.encode("utf-8", "surrogatepass")
        if form == "mutated":
            raw = mutate(raw, ops)
        path = os.path.join(folder, "model.safetensors.index.json")
        with open(path, "wb") as f:
            f.write(raw)
        prop = "load_checkpoint(sharded index)"
        ok, result = attempt(prop, load_arrays, path, lazy)
        check_read(prop, ok, result, folder, budget + len(raw))
        if ok and form in ("plain", "bom"):
            assert result.keys() == weight_map.keys()


FOLDER_ENTRIES = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "config.json",
    "README.md",
]


@fuzz_settings(100)
@given(
    st.dictionaries(
        st.sampled_from(FOLDER_ENTRIES),
        st.sampled_from(["safetensors", "torch", "garbage", "empty", "folder", "index"]),
        max_size=4,
    ),
    st.booleans(),
)
def test_model_folders(entries, lazy):
    """Hugging Face / timm model folders holding any mix of weight files, garbage, empty files and sub-folders."""
    with tempfile.TemporaryDirectory() as folder:
        budget = _write_shards(os.path.join(folder, "shards"))
        for name, kind in entries.items():
            path = os.path.join(folder, name)
            if kind == "folder":
                os.mkdir(path)
                continue
            content = {
                "safetensors": small_safetensors(),
                "torch": small_torch_file(True),
                "garbage": b"\x01garbage",
                "empty": b"",
                "index": json.dumps({"weight_map": {"c": "shards/sub/c.safetensors"}}).encode(),
            }[kind]
            budget += len(content)
            with open(path, "wb") as f:
                f.write(content)
        prop = "load_checkpoint(model folders)"
        ok, result = attempt(prop, load_arrays, folder, lazy)
        check_read(prop, ok, result, folder, budget)


# --- 5. key mapping ------------------------------------------------------------------------------


def timm_to_hf(state_dict):
    """timm keys -> transformers `ConvNextForImageClassification` keys (the inverse of layouts._hf_key)."""
    parts = (
        ("conv_dw", "dwconv"),
        ("norm", "layernorm"),
        ("mlp.fc1", "pwconv1"),
        ("mlp.fc2", "pwconv2"),
        ("mlp.grn", "grn"),
        ("gamma", "layer_scale_parameter"),
    )
    out = {}
    for key, value in state_dict.items():
        if key.startswith("stem."):
            name = key.replace("stem.0.", "convnext.embeddings.patch_embeddings.").replace(
                "stem.1.", "convnext.embeddings.layernorm."
            )
        elif m := re.match(r"stages\.(\d+)\.downsample\.(.*)", key):
            name = f"convnext.encoder.stages.{m[1]}.downsampling_layer.{m[2]}"
        elif m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key):
            rest = m[3]
            for timm_part, hf_part in parts:
                if rest == timm_part or rest.startswith(timm_part + "."):
                    rest = hf_part + rest[len(timm_part) :]
                    break
            name = f"convnext.encoder.stages.{m[1]}.layers.{m[2]}.{rest}"
        else:
            name = key.replace("head.norm.", "convnext.layernorm.").replace("head.fc.", "classifier.")
        out[name] = value
    return out


def _zeros_like_shapes(state_dict):
    """The same keys and shapes, as read-only zero views (no memory)."""
    return {k: np.broadcast_to(np.float32(0), np.shape(v)) for k, v in state_dict.items()}


@functools.lru_cache(None)
def real_state_dicts():
    """Real timm ConvNeXt state dicts (random weights) and the same tensors in the other layouts."""
    atto = cf.state_dict_numpy(cf.random_timm_model("convnext_atto", num_classes=10))
    v2 = _zeros_like_shapes(cf.state_dict_numpy(cf.random_timm_model("convnextv2_atto", num_classes=10)))
    return {
        "timm": atto,
        "timm v2": v2,
        "official": cf.timm_to_official(atto),
        "official v2 4-d": cf.timm_to_official(v2, pwconv_ndim=4),
        "hf": timm_to_hf(atto),
        "hf v2": timm_to_hf(v2),
        "clip": cf.timm_to_clip(atto),
    }


KEY_FRAGMENTS = [
    "stem",
    "stages",
    "blocks",
    "downsample",
    "downsample_layers",
    "head",
    "fc",
    "norm",
    "norm_pre",
    "pre_logits",
    "conv_dw",
    "dwconv",
    "pwconv1",
    "pwconv2",
    "mlp",
    "fc1",
    "fc2",
    "grn",
    "gamma",
    "beta",
    "weight",
    "bias",
    "convnext",
    "convnextv2",
    "embeddings",
    "patch_embeddings",
    "layernorm",
    "encoder",
    "layers",
    "layer_scale_parameter",
    "downsampling_layer",
    "classifier",
    "hidden_states_norms",
    "visual",
    "trunk",
    "proj",
    "module",
    "_orig_mod",
    "projectors",
    "norms",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "99",
    "-1",
    "",
    "x",
]
random_keys = st.one_of(
    st.lists(st.sampled_from(KEY_FRAGMENTS), min_size=1, max_size=7).map(".".join),
    st.text(max_size=12),
)
ARRAY_DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int8, np.uint8, np.bool_]
# Dimensions: small ones, the atto widths, and huge ones (declared through broadcast views, never allocated).
MAP_DIMS = [0, 1, 2, 3, 4, 7, 40, 80, 160, 320, 1000, 2**31, 2**40]
shapes = st.lists(st.sampled_from(MAP_DIMS), max_size=5)


def _clamp(shape):
    """`shape` with huge dimensions replaced by 1 once the element count would pass 2**60 (numpy's limit)."""
    out, count = [], 1
    for d in shape:
        if count * d > 2**60:
            d = 1
        out.append(d)
        count *= max(d, 1)
    return tuple(out)


def _array(dtype, shape, fill):
    with np.errstate(over="ignore"):  # 1e30 as float16 is inf: wanted
        value = np.array(fill).astype(dtype) if np.dtype(dtype).kind == "f" else np.array(int(fill == 1.0), dtype)
    return np.broadcast_to(value, _clamp(shape))


arrays = st.builds(
    _array, st.sampled_from(ARRAY_DTYPES), shapes, st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), 1e30])
)

# Keys whose shapes the mapping reads, for the "keyshape" mutation.
NAMED_KEYS = [
    "head.fc.weight",
    "head.fc.bias",
    "visual.head.proj.weight",
    "stem.0.weight",
    "stem.1.weight",
    "stages.0.blocks.0.conv_dw.weight",
    "stages.0.blocks.0.mlp.fc1.weight",
    "head.pre_logits.fc.weight",
    "stages.0.blocks.0.mlp.grn.weight",
    "stages.0.0.grn.gamma",
    "norm_pre.weight",
]
dict_mutation = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 500)),
    st.tuples(st.just("add"), random_keys, arrays),
    st.tuples(st.just("rename"), st.integers(0, 500), random_keys),
    st.tuples(st.just("fragment"), st.integers(0, 500), st.integers(0, 8), st.sampled_from(KEY_FRAGMENTS)),
    st.tuples(st.just("shape"), st.integers(0, 500), shapes),
    st.tuples(st.just("dim"), st.integers(0, 500), st.integers(0, 4), st.sampled_from(MAP_DIMS)),
    st.tuples(st.just("rank"), st.integers(0, 500), st.sampled_from([-2, -1, 1, 2])),
    st.tuples(st.just("dtype"), st.integers(0, 500), st.sampled_from(ARRAY_DTYPES)),
    st.tuples(st.just("prefix"), st.sampled_from(["module.", "_orig_mod.", "visual.trunk.", "convnext.", "model."])),
    st.tuples(st.just("scalar"), st.integers(0, 500)),
    st.tuples(st.just("keyshape"), st.integers(0, 500), st.sampled_from(NAMED_KEYS), shapes),
)


def _first(value):
    """A 0-d array holding the first element of `value` (zero when it is empty), without copying views."""
    value = np.asarray(value)
    return value[(0,) * value.ndim] if value.size else np.zeros((), value.dtype)


def mutate_state_dict(base, ops):
    sd = dict(base)
    for op, *args in ops:
        keys = list(sd)
        if op == "add":
            sd[args[0]] = args[1]
            continue
        if op == "prefix":
            sd = {args[0] + k: v for k, v in sd.items()}
            continue
        if not keys:
            continue
        key = keys[args[0] % len(keys)]
        value = sd[key]
        shape = list(np.shape(value))
        if op == "drop":
            del sd[key]
        elif op == "rename":
            sd[args[1]] = sd.pop(key)
        elif op == "fragment":
            parts = key.split(".")
            parts[args[1] % len(parts)] = args[2]
            sd[".".join(parts)] = sd.pop(key)
        elif op == "shape":
            sd[key] = np.broadcast_to(_first(value), _clamp(args[1]))
        elif op == "keyshape":
            sd[args[1]] = np.broadcast_to(_first(sd.get(args[1], np.zeros((), np.float32))), _clamp(args[2]))
        elif op == "dim":
            if shape:
                shape[args[1] % len(shape)] = args[2]
            sd[key] = np.broadcast_to(np.zeros((), np.asarray(value).dtype), _clamp(shape))
        elif op == "rank":
            shape = shape[: len(shape) + args[1]] if args[1] < 0 else [1] * args[1] + shape
            sd[key] = np.broadcast_to(np.zeros((), np.asarray(value).dtype), _clamp(shape))
        elif op == "dtype":
            sd[key] = (
                np.asarray(value).astype(args[1])
                if np.size(value) <= 4096
                else np.broadcast_to(np.zeros((), args[1]), np.shape(value))
            )
        elif op == "scalar":
            sd[key] = np.zeros((), np.float32)
    return sd


LAYOUT_NAMES = ["timm", "timm v2", "official", "official v2 4-d", "hf", "hf v2", "clip"]
state_dicts = st.one_of(
    st.tuples(st.sampled_from(LAYOUT_NAMES), st.lists(dict_mutation, max_size=6)),
    st.tuples(st.just("random"), st.lists(st.tuples(st.just("add"), random_keys, arrays), max_size=12)),
)


def draw_state_dict(spec):
    name, ops = spec
    base = {} if name == "random" else real_state_dicts()[name]
    return mutate_state_dict(base, ops)


ARCHS = ["convnext_atto", "convnextv2_atto", "convnext_femto", "convnext_tiny", "no_such_arch", ""]


@fuzz_settings(300)
@given(state_dicts, st.sampled_from(ARCHS))
@example(("timm", []), "convnext_atto")
@example(("timm", [("keyshape", 0, "stages.0.blocks.0.conv_dw.weight", [])]), "convnext_atto")  # 0-d, shape read
@example(("timm", [("keyshape", 0, "head.fc.weight", [])]), None)
@example(("clip", [("keyshape", 0, "visual.head.proj.weight", [2**40, 320])]), "convnext_atto")  # huge, bias-free
def test_key_mapping(spec, arch):
    """Random key sets and shapes through detect_layout, to_timm_keys, infer_architecture and check_architecture."""
    sd = draw_state_dict(spec)
    before = {k: (np.shape(v), np.asarray(v).dtype) for k, v in sd.items()}
    ok, layout = attempt("detect_layout", detect_layout, sd)
    if ok:
        assert layout in LAYOUTS
    ok, timm_sd = attempt("to_timm_keys", to_timm_keys, sd)
    assert {k: (np.shape(v), np.asarray(v).dtype) for k, v in sd.items()} == before, "to_timm_keys changed its input"
    if not ok:
        return
    assert all(isinstance(k, str) for k in timm_sd)
    ok, info = attempt("infer_architecture", infer_architecture, timm_sd)
    if ok:
        assert info["arch"] is None or isinstance(info["arch"], str)
    ok, info = attempt("check_architecture", check_architecture, timm_sd, arch)
    if ok:
        assert info["arch"] == arch
    if spec == ("timm", []) and arch == "convnext_atto":
        assert ok, info


@fuzz_settings(20, long_share=0.05)
@given(
    st.tuples(st.sampled_from(LAYOUT_NAMES), st.lists(dict_mutation, max_size=3)),
    st.sampled_from([None, "convnext_atto", "convnextv2_atto", "convnext_femto"]),
)
@example(("timm", []), None)
@example(("official v2 4-d", []), "convnextv2_atto")
@example(
    ("timm", [("keyshape", 0, "head.fc.weight", [2**40, 320]), ("keyshape", 0, "head.fc.bias", [2**40])]),
    "convnext_atto",
)  # a classifier declaring 2**40 classes
def test_convert(spec, arch):
    """`convert` on near-valid state dicts in every layout: a Keras model, or a documented error."""
    from converters import convert

    # Real arrays except the huge ones, so that a converter may refuse broadcast views without failing this.
    sd = {k: np.ascontiguousarray(v) if np.size(v) <= 1 << 20 else v for k, v in draw_state_dict(spec).items()}
    ok, model = attempt("convert", convert, sd, arch)
    if spec[1] == [] and arch in (None, {"timm": "convnext_atto", "official v2 4-d": "convnextv2_atto"}.get(spec[0])):
        assert ok, model


# --- sanity: the generators start from real, readable checkpoints --------------------------------


def test_bases_are_valid(tmp_path):
    """The unmutated inputs read and convert exactly, so that the mutations start from the real thing."""
    from converters import convert, export_timm_state_dict

    for key, dtype, shape, raw in SMALL_TENSORS:
        expected = _decode_expected(dtype, shape, raw)
        assert expected.shape == shape
    pairs, data = layout_entries(SMALL_TENSORS)
    path = tmp_path / "small.safetensors"
    path.write_bytes(safetensors_bytes(pairs, data))
    loaded = load_checkpoint(path)
    for key, dtype, shape, raw in SMALL_TENSORS:
        np.testing.assert_array_equal(loaded[key], _decode_expected(dtype, shape, raw))
    (tmp_path / "lib.safetensors").write_bytes(small_safetensors())
    assert set(load_checkpoint(tmp_path / "lib.safetensors")) == {k for k, d, *_ in SMALL_TENSORS if d != "BF16"}
    for zipped in (True, False):
        (tmp_path / "small.pth").write_bytes(small_torch_file(zipped))
        loaded = load_checkpoint(tmp_path / "small.pth")
        assert loaded.keys() == small_torch_state_dict()["model"].keys()
    assert load_checkpoint(tmp_path / "small.pth")["shared"].tolist() == [1.0, 2.0, 3.0]

    bases = real_state_dicts()
    atto = bases["timm"]
    for name, sd in bases.items():
        renamed = to_timm_keys(sd)
        expected = bases["timm v2"] if "v2" in name else atto
        if name == "clip":
            expected = {**atto, "head.fc.bias": np.zeros(10, np.float32)}
        assert renamed.keys() == expected.keys(), name
    model = convert(atto)
    exported = export_timm_state_dict(model)
    assert exported.keys() == atto.keys()
    for key, value in atto.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    # and through a file, in both formats
    cf.save_safetensors(atto, tmp_path / "atto.safetensors")
    cf.save_pth(atto, tmp_path / "atto.pth", wrap="model", prefix="module.")
    for name in ("atto.safetensors", "atto.pth"):
        exported = export_timm_state_dict(convert(load_checkpoint(tmp_path / name), "convnext_atto"))
        for key, value in atto.items():
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
