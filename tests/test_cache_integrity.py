"""The converted-weights cache checks its entries by content, not by stamps, without a hash before the build.

Entries are safetensors files keyed by Keras variable path, with their size and xxh3-128 in `meta.json`;
a load checks the size at once and the hash in the background, and confirms it
before any weight is read. The two kinds of refs live in two stores.
"""

import json
import logging
import os
import struct

import keras
import numpy as np
import pytest
import torch

from convnext_hub.hub import Cache, load_pretrained, timm_hub
from convnext_hub.hub.cache import META_FILE, WEIGHTS_FILE
from tests.checkpoint_factory import checkpoint  # noqa: F401
from tests.hub_server import local_hub, upload_timm_checkpoint  # noqa: F401

ATTO = "convnext_atto.d2_in1k"
IMAGES = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)


@pytest.fixture
def cached(local_hub, checkpoint, tmp_path):  # noqa: F811
    """`(cache root, its one entry folder, the timm model's logits)` after a first load of ATTO."""
    timm_model, weights = checkpoint("convnext_atto")
    upload_timm_checkpoint(local_hub, ATTO, weights)
    root = tmp_path / "cache"
    load_pretrained(ATTO, cache_dir=root)
    [entry] = list((root / "entries" / ATTO).iterdir())
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).numpy()
    return root, entry, expected


def logits(model):
    return keras.ops.convert_to_numpy(model(IMAGES, training=False))


def assert_close(actual, expected):
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def rewrite_keeping_stamp(path, change):
    """Apply `change(bytearray) -> bytes` to the file, then restore its size-independent stamp (mtime)."""
    stat = path.stat()
    path.write_bytes(change(bytearray(path.read_bytes())))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def flip_middle_byte(data):
    data[len(data) // 2] ^= 0x01
    return bytes(data)


def test_entry_is_a_safetensors_file_of_the_models_variables_with_size_and_hash(cached):
    """The `safetensors` package reads the entry; its keys are the variable paths of the model a load returns,
    each holding that variable's value. The recorded hash (computed as the file was written) is the file's."""
    import xxhash
    from safetensors.numpy import load_file

    root, entry, _ = cached
    meta = json.loads((entry / META_FILE).read_text())
    assert sorted(p.name for p in entry.iterdir()) == sorted([WEIGHTS_FILE, META_FILE])
    assert meta["weights_bytes"] == (entry / WEIGHTS_FILE).stat().st_size
    assert meta["weights_xxh3"] == xxhash.xxh3_128((entry / WEIGHTS_FILE).read_bytes()).hexdigest()
    stored = load_file(entry / WEIGHTS_FILE)
    model = load_pretrained(ATTO, cache_dir=root)
    assert sorted(stored) == sorted(v.path for v in model.weights)
    for variable in model.weights:
        np.testing.assert_array_equal(stored[variable.path], keras.ops.convert_to_numpy(variable))


def test_entry_tensors_of_whole_64_byte_blocks_start_on_64_byte_boundaries(cached):
    """What lets every backend keep an entry's mapped pages as their weights, without a copy: their data
    starts 64-byte aligned (atto's 40-channel vectors, 160 bytes each, would otherwise shift what follows)."""
    _, entry, _ = cached
    data = (entry / WEIGHTS_FILE).read_bytes()
    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_size])
    spans = [tensor["data_offsets"] for key, tensor in header.items() if key != "__metadata__"]
    assert any((end - start) % 64 for start, end in spans), "atto has vectors of 160 bytes"
    for start, end in spans:
        if (end - start) % 64 == 0:
            assert (8 + header_size + start) % 64 == 0


def test_training_a_cached_load_leaves_the_entry_as_it_was(cached):
    """A loaded model owns its weights: a training step changes the model, never the cached file."""
    root, entry, expected = cached
    digest = (entry / WEIGHTS_FILE).read_bytes()
    model = load_pretrained(ATTO, cache_dir=root)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.train_on_batch(IMAGES, np.array([1, 2]))
    assert np.abs(logits(model) - expected).max() > 1e-3, "a training step changed nothing"
    assert (entry / WEIGHTS_FILE).read_bytes() == digest
    assert_close(logits(load_pretrained(ATTO, cache_dir=root)), expected)


def test_a_first_load_equals_timm_and_owns_its_weights(local_hub, checkpoint, tmp_path):  # noqa: F811
    """The model a conversion hands out (its shell, filled with a copy-on-write mapping of the new entry)
    equals timm's; training it never changes the entry."""
    timm_model, weights = checkpoint("convnext_atto")
    upload_timm_checkpoint(local_hub, ATTO, weights)
    root = tmp_path / "cache"
    model = load_pretrained(ATTO, cache_dir=root)
    [entry] = list((root / "entries" / ATTO).iterdir())
    stored = (entry / WEIGHTS_FILE).read_bytes()
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).numpy()
    assert_close(logits(model), expected)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.train_on_batch(IMAGES, np.array([1, 2]))
    assert np.abs(logits(model) - expected).max() > 1e-3, "a training step changed nothing"
    assert (entry / WEIGHTS_FILE).read_bytes() == stored
    assert_close(logits(load_pretrained(ATTO, cache_dir=root)), expected)


def test_one_flipped_byte_with_the_old_mtime_is_found_and_rebuilt(cached, caplog):
    root, entry, expected = cached
    rewrite_keeping_stamp(entry / WEIGHTS_FILE, flip_middle_byte)
    model = load_pretrained(ATTO, cache_dir=root)
    assert "corrupt cache entry" in caplog.text and "xxh3" in caplog.text
    assert_close(logits(model), expected)
    assert Cache(root).lookup(ATTO, entry.name) is not None  # converted again, whole


def test_truncated_entry_is_found_by_its_size_and_rebuilt(cached, caplog):
    root, entry, expected = cached
    rewrite_keeping_stamp(entry / WEIGHTS_FILE, lambda data: bytes(data[: len(data) - 100]))
    model = load_pretrained(ATTO, cache_dir=root)
    assert "corrupt cache entry" in caplog.text and "bytes" in caplog.text
    assert_close(logits(model), expected)
    assert Cache(root).lookup(ATTO, entry.name) is not None


def test_hash_is_confirmed_before_the_weights_are_read(cached, caplog):
    """`from_registry` returns before the hash is known; loading into the model waits for it."""
    root, entry, expected = cached
    rewrite_keeping_stamp(entry / WEIGHTS_FILE, flip_middle_byte)
    caplog.set_level(logging.INFO)
    import checkpoints

    weights = timm_hub.from_registry(checkpoints.resolve(ATTO), Cache(root))
    assert weights.entry.path == entry and "corrupt" not in caplog.text
    model = weights.load_into(weights.build(num_classes=weights.num_classes))
    assert "corrupt cache entry" in caplog.text and "converting" in caplog.text
    assert_close(logits(model), expected)


@pytest.mark.parametrize("damage", ["no_meta", "meta_without_hash", "not_json"])
def test_damaged_meta_is_rebuilt(cached, caplog, damage):
    root, entry, expected = cached
    meta = entry / META_FILE
    if damage == "no_meta":
        meta.unlink()
    elif damage == "meta_without_hash":
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "weights_xxh3"}))
    else:
        meta.write_text("{")
    assert_close(logits(load_pretrained(ATTO, cache_dir=root)), expected)
    assert "corrupt cache entry" in caplog.text


def test_entry_refs_and_commit_refs_are_separate_stores(tmp_path):
    cache = Cache(tmp_path)
    cache.entry_refs.write("convnext_atto.d2_in1k", "main", "key")
    cache.commit_refs.write("org/repo", "main", "a" * 40)
    assert (tmp_path / "refs" / "convnext_atto.d2_in1k" / "main").read_text() == "key"
    assert (tmp_path / "commits" / "org" / "repo" / "main").read_text() == "a" * 40
    assert cache.entry_refs.read("org/repo", "main") is None
    assert cache.commit_refs.read("convnext_atto.d2_in1k", "main") is None
    assert cache.lookup_revision("convnext_atto.d2_in1k", "main") is None  # a key of no current entry
