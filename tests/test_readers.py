"""convnext_hub.convert.readers: every checkpoint format, read exactly, and every broken or unsafe file refused."""

import argparse
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from converters import BadValueError, CheckpointFormatError, KeyMismatchError, check_finite, load_checkpoint
from tests import checkpoint_factory as cf


@pytest.fixture(scope="module")
def atto_sd():
    return cf.state_dict_numpy(cf.random_timm_model("convnext_atto", num_classes=10))


@pytest.fixture(scope="module")
def v2_sd():
    return cf.state_dict_numpy(cf.random_timm_model("convnextv2_atto", num_classes=10))


def assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == np.float32, key
        assert loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def rounded(sd, dtype):
    return {k: torch.from_numpy(v).to(dtype).float().numpy() for k, v in sd.items()}


# --- safetensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_safetensors_round_trip(tmp_path, v2_sd, dtype):
    path = cf.save_safetensors(v2_sd, tmp_path / "model.safetensors", dtype=dtype)
    assert_same(load_checkpoint(path), v2_sd if dtype is None else rounded(v2_sd, dtype))


def test_safetensors_keeps_integer_and_bool_dtypes(tmp_path):
    sd = {
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "b": torch.tensor([True, False]),
        "s": torch.tensor(2.5),
        "e": torch.zeros(0, 3),
    }
    loaded = load_checkpoint(cf.save_safetensors(sd, tmp_path / "x.safetensors"))
    assert loaded["i"].dtype == np.int64 and loaded["i"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded["b"].dtype == np.bool_ and loaded["b"].tolist() == [True, False]
    assert loaded["s"].shape == () and loaded["s"] == 2.5
    assert loaded["e"].shape == (0, 3)


def test_format_comes_from_content_not_name(tmp_path, atto_sd):
    assert_same(load_checkpoint(cf.save_safetensors(atto_sd, tmp_path / "weights.pth")), atto_sd)
    assert_same(load_checkpoint(cf.save_pth(atto_sd, tmp_path / "weights.safetensors")), atto_sd)
    legacy = cf.save_pth(atto_sd, tmp_path / "weights.safetensors.2", _use_new_zipfile_serialization=False)
    assert open(legacy, "rb").read(1) == b"\x80"
    assert_same(load_checkpoint(legacy), atto_sd)


# --- broken safetensors --------------------------------------------------------------------------


def raw_safetensors(path, header, data=b"", header_bytes=None):
    """Write a safetensors file by hand: 8-byte length, JSON header, data."""
    blob = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def f32(*values):
    return np.asarray(values, "<f4").tobytes()


def refused(path, *words):
    with pytest.raises(CheckpointFormatError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


def test_hand_written_safetensors_reads(tmp_path):
    header = {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        "a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
    }
    loaded = load_checkpoint(raw_safetensors(tmp_path / "ok.safetensors", header, f32(1, 2, 3)))
    assert loaded["a"] == 1 and loaded["b"].tolist() == [2, 3]


def test_truncated_safetensors_refused(tmp_path, atto_sd):
    good = cf.save_safetensors(atto_sd, tmp_path / "good.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    for cut in (1, 7, 8, 9, 8 + n // 2, 8 + n, 8 + n + 100, len(good) // 2, len(good) - 1):
        path = tmp_path / f"cut_{cut}.safetensors"
        path.write_bytes(good[:cut])
        refused(path)


def test_empty_and_random_files_refused(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    refused(tmp_path / "empty.pth", "empty")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refused(tmp_path / "noise.bin", "not a recognised checkpoint")
    (tmp_path / "text.safetensors").write_text("hello world, this is not a checkpoint")
    refused(tmp_path / "text.safetensors", "not a recognised checkpoint", "hello")


@pytest.mark.parametrize(
    "case, header, data, words",
    [
        ("shape lies", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, f32(1, 2), ["'a'", "12 bytes"]),
        ("end past data", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32(1, 2), ["'a'", "past"]),
        (
            "overlap",
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            f32(1, 2, 3),
            ["overlap", "'b'"],
        ),
        ("gap", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32(1, 2), ["unused"]),
        ("trailing", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, f32(1, 2), ["trailing"]),
        ("dtype", {"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, f32(1), ["'a'", "F8_E4M3"]),
        ("negative", {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, f32(1), ["'a'", "shape"]),
        ("offsets", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, f32(1), ["'a'", "data_offsets"]),
        ("metadata", {"__metadata__": {"x": 1}}, b"", ["__metadata__"]),
    ],
)
def test_inconsistent_safetensors_header_refused(tmp_path, case, header, data, words):
    refused(raw_safetensors(tmp_path / "bad.safetensors", header, data), *words)


def test_duplicate_header_key_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    blob = f'{{"w": {entry}, "w": {entry}}}'.encode()
    refused(raw_safetensors(tmp_path / "dup.safetensors", None, f32(1), header_bytes=blob), "duplicate", "'w'")


def test_bad_header_json_and_length_refused(tmp_path):
    refused(raw_safetensors(tmp_path / "json.safetensors", None, b"", header_bytes=b"{not json}"), "JSON")
    refused(raw_safetensors(tmp_path / "list.safetensors", None, b"", header_bytes=b"{}"[:1] + b"]"), "JSON")
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    refused(path, "exceeds the file")


# --- PyTorch pickles -----------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "model", "state_dict", "module", "model_ema", "state_dict_ema"])
@pytest.mark.parametrize("prefix", ["", "module.", "module._orig_mod."])
def test_pth_wrappers_and_prefixes(tmp_path, atto_sd, wrap, prefix):
    assert_same(load_checkpoint(cf.save_pth(atto_sd, tmp_path / "m.pth", wrap=wrap, prefix=prefix)), atto_sd)


def test_pth_prefers_plain_weights_over_ema_and_skips_metadata(tmp_path, atto_sd, v2_sd):
    path = tmp_path / "train.pth"
    torch.save(
        {
            "model": cf._torch_state_dict(atto_sd),
            "model_ema": cf._torch_state_dict(v2_sd),
            "epoch": 3,
            "optimizer": {"state": {}},
            "args": argparse.Namespace(lr=1e-3),
        },
        path,
    )
    assert_same(load_checkpoint(path), atto_sd)
    torch.save({"state_dict_ema": cf._torch_state_dict(v2_sd), "epoch": 3}, path)
    assert_same(load_checkpoint(path), v2_sd)


def test_pth_half_precision_widened(tmp_path, atto_sd):
    for dtype in (torch.float16, torch.bfloat16):
        sd = {k: torch.from_numpy(v).to(dtype) for k, v in atto_sd.items()}
        assert_same(load_checkpoint(cf.save_pth(sd, tmp_path / "half.pt")), rounded(atto_sd, dtype))


def test_pth_non_tensor_entry_refused(tmp_path):
    torch.save({"a.weight": torch.zeros(2), "a.note": "hello"}, tmp_path / "x.pth")
    refused(tmp_path / "x.pth", "'a.note'", "str")


def test_pth_prefix_collision_refused(tmp_path):
    torch.save({"a": torch.zeros(1), "module.a": torch.ones(1)}, tmp_path / "x.pth")
    with pytest.raises(KeyMismatchError, match="'module.a'"):
        load_checkpoint(tmp_path / "x.pth")


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize("force_unsafe_env", [False, True])
@pytest.mark.parametrize("payload, name", [(_System, "system"), (_Eval, "GLOBAL eval")])
@pytest.mark.parametrize("zipped", [True, False])
def test_unsafe_pickle_refused_and_not_run(tmp_path, monkeypatch, force_unsafe_env, payload, name, zipped):
    if force_unsafe_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    refused(path, name)
    assert not marker.exists()


def test_plain_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": _System(marker)}, f, protocol=2)
    refused(tmp_path / "evil.pkl", "system")
    assert not marker.exists()


def test_non_torch_zip_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "archive.pth", "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    refused(tmp_path / "archive.pth", "torch.load failed")


def test_pickle_without_torch_or_with_old_torch_refused(tmp_path, monkeypatch, atto_sd):
    pth = cf.save_pth(atto_sd, tmp_path / "m.pth")
    st = cf.save_safetensors(atto_sd, tmp_path / "m.safetensors")
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    refused(pth, "2.3.1", "2.6")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    refused(pth, "needs torch", "safetensors")
    assert_same(load_checkpoint(st), atto_sd)


# --- sharded checkpoints and folders -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_index(tmp_path, v2_sd, fmt):
    index = cf.save_sharded(v2_sd, tmp_path / "sharded", n_shards=3, fmt=fmt)
    assert_same(load_checkpoint(index), v2_sd)
    assert_same(load_checkpoint(tmp_path / "sharded"), v2_sd)  # the folder finds the index


def _rewrite_index(index, edit):
    data = json.loads(open(index).read())
    edit(data["weight_map"])
    with open(index, "w") as f:
        json.dump(data, f)


def test_sharded_index_inconsistencies_refused(tmp_path, atto_sd):
    index = cf.save_sharded(atto_sd, tmp_path / "s", n_shards=2)
    shards = sorted(set(json.load(open(index))["weight_map"].values()))
    first = next(iter(atto_sd))

    _rewrite_index(index, lambda m: m.update({first: shards[1]}))  # index points at the wrong shard
    refused(index, repr(first))
    _rewrite_index(index, lambda m: m.update({first: shards[0], "ghost": shards[0]}))
    refused(index, "'ghost'", "lacks")
    _rewrite_index(index, lambda m: (m.pop("ghost"), m.pop(first)))  # a shard key the index does not list
    refused(index, repr(first), "does not list")
    _rewrite_index(index, lambda m: m.update({first: "../elsewhere.safetensors"}))
    refused(index, "../elsewhere.safetensors")
    _rewrite_index(index, lambda m: m.update({first: "missing.safetensors"}))
    refused(index, "missing.safetensors")
    (tmp_path / "plain.json").write_text('{"architecture": "convnext_atto"}')
    refused(tmp_path / "plain.json", "weight_map")


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_hf_folders(tmp_path, kind):
    model = cf.random_hf_model(kind)
    expected = cf.state_dict_numpy(model)
    model.save_pretrained(tmp_path / "single")
    assert (tmp_path / "single" / "config.json").exists()
    assert_same(load_checkpoint(tmp_path / "single"), expected)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="500KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert_same(load_checkpoint(tmp_path / "sharded"), expected)


def test_timm_hub_folders(tmp_path, atto_sd):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text('{"architecture": "convnext_atto"}')
    cf.save_pth(atto_sd, tmp_path / "bin" / "pytorch_model.bin")
    assert_same(load_checkpoint(tmp_path / "bin"), atto_sd)
    (tmp_path / "clip").mkdir()
    cf.save_safetensors(cf.timm_to_clip(atto_sd), tmp_path / "clip" / "open_clip_model.safetensors")
    assert "visual.trunk.stem.0.weight" in load_checkpoint(tmp_path / "clip")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "config.json").write_text("{}")
    refused(tmp_path / "none", "no weights file", "config.json")


# --- values --------------------------------------------------------------------------------------


def test_check_finite():
    sd = {"a": np.ones(3, np.float32), "i": np.arange(3), "big": np.array([7e4], np.float32)}
    check_finite(sd, "ok.safetensors")
    check_finite(sd, "ok.safetensors", target_dtype="bfloat16")
    for target in ("float16", "mixed_float16", np.float16):
        with pytest.raises(BadValueError, match=r"ok.safetensors: tensor 'big'.*float16"):
            check_finite(sd, "ok.safetensors", target_dtype=target)
    for bad in (np.nan, np.inf, -np.inf):
        sd["a"][1] = bad
        with pytest.raises(BadValueError, match=r"x.pth: tensor 'a' \(shape \(3,\)\) has [01] NaN and [01] Inf"):
            check_finite(sd, "x.pth")


def test_command_line_modules_import_no_torch_timm_keras():
    # The tools' package facade and entry modules import no framework: `python -m converters.timm_to_keras`
    # must be able to import torch before Keras (the library, inside convnext_hub, imports Keras).
    code = (
        "import sys; import converters, converters.cli, converters.timm_to_keras, converters.publish; "
        "print(sorted(m for m in ('torch', 'timm', 'keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.stdout.strip() == "[]"


MAPPED_READ_CHILD = """
import json, sys
import numpy as np
from convnext_hub.convert.readers import read_safetensors

def anonymous_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024

anonymous = anonymous_mb()
private = read_safetensors(sys.argv[1], lazy=True)["big"].read(mapped=True, writable=True)
grown = [anonymous_mb() - anonymous]
checksum = float(private[::997, ::991].sum())  # reads pages without allocating a copy of the array
private[3, 5] = 7.0
grown.append(anonymous_mb() - anonymous)
print(json.dumps({"grown_mb": grown, "checksum": checksum, "written": float(private[3, 5])}))
"""


def test_a_writable_mapped_read_shares_the_page_cache_until_written(tmp_path):
    """A model's weight taken from a cache entry is the page cache's pages: reading it maps 64 MB
    without copying them; writing one value copies one page; the file never changes. Measured in a
    process of its own: threads of other test modules allocate beside it in this one."""
    from safetensors.numpy import save_file

    expected = np.random.default_rng(1).standard_normal((16, 1 << 20)).astype("float32")  # 64 MB
    path = tmp_path / "w.safetensors"
    save_file({"big": expected}, str(path))
    before = path.read_bytes()
    out = subprocess.run(
        [sys.executable, "-c", MAPPED_READ_CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(grown < 16 for grown in report["grown_mb"]), f"the mapped pages were copied: {report}"
    assert report["checksum"] == pytest.approx(float(expected[::997, ::991].sum()), rel=1e-6)
    assert report["written"] == 7.0 and path.read_bytes() == before


def test_mapped_read_equals_read_and_refuses_a_file_shrunk_after_opening(tmp_path):
    """The streaming converter's reads: a big float32 tensor is a read-only view of the mapped file;
    a file cut short after its header was checked is refused with the key, not a crash (SIGBUS)."""
    from safetensors.numpy import save_file

    from convnext_hub.convert.readers import read_safetensors
    from convnext_hub.stored_arrays import MIN_MAPPED_BYTES

    rng = np.random.default_rng(0)
    tensors = {
        "big": rng.standard_normal((MIN_MAPPED_BYTES // 4 // 100 + 1, 100)).astype("float32"),
        "a_small": rng.standard_normal((3, 4)).astype("float32"),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    lazy = read_safetensors(str(path), lazy=True)
    for key, expected in tensors.items():
        value = lazy[key].read(mapped=True)
        np.testing.assert_array_equal(value, expected)
        np.testing.assert_array_equal(lazy[key].read(), expected)
    mapped = lazy["big"].read(mapped=True)
    assert not mapped.flags.writeable and mapped.base is not None  # a view, not a copy
    before = path.read_bytes()
    private = lazy["big"].read(mapped=True, writable=True)  # what a torch model keeps as its weight
    assert private.flags.writeable and private.base is not None
    private *= 2  # copy-on-write: the array changes, the file does not
    np.testing.assert_array_equal(private, 2 * tensors["big"])
    assert path.read_bytes() == before
    np.testing.assert_array_equal(lazy["big"].read(mapped=True, writable=True), tensors["big"])

    last = max(lazy, key=lambda key: lazy[key]._offset)
    assert last == "big"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    for mapped in (True, False):
        with pytest.raises(CheckpointFormatError, match=rf"w.safetensors: tensor '{last}': the file ended early"):
            lazy[last].read(mapped=mapped)
