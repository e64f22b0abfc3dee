"""load_pretrained against a local fake Hub: download, convert once, cache, offline, revisions, publishing.

timm checkpoints are random (every parameter), uploaded as `timm/<tag>` repos with
`model.safetensors` and a timm-style `config.json`.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import convnext_hub.config
from checkpoints import UnknownCheckpointError
from converters import ArchitectureError
from converters.publish import main as publish_main
from converters.publish import publish
from convnext_hub.convert.version import CONVERTER_VERSION
from convnext_hub.hub import Cache, CacheNotWritableError, WeightsUnavailableError, load_pretrained
from convnext_hub.hub.cache import META_FILE, WEIGHTS_FILE, entry_key
from tests.checkpoint_factory import (
    checkpoint,  # noqa: F401  (fixture)
    save_pth,
)
from tests.hub_server import fast_retries, local_hub, set_offline, upload_timm_checkpoint  # noqa: F401
from tests.timm_comparison import assert_close as shared_assert_close

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTO = "convnext_atto.d2_in1k"
V2_ATTO = "convnextv2_atto.fcmae_ft_in1k"
IMAGES = np.random.default_rng(0).random((2, 64, 72, 3), dtype=np.float32)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "convnext_hub_cache"
    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(path))
    return path


def upload(hub, tag, weights, filename="model.safetensors"):
    """Commit `weights` and a timm-style config.json to `timm/<tag>` (the shared helper); returns the sha."""
    return upload_timm_checkpoint(hub, tag, weights, filename=filename)


def timm_out(model, images=IMAGES, fn=None):
    with torch.no_grad():
        out = (fn or model)(torch.from_numpy(images).permute(0, 3, 1, 2))
    return out.numpy()


def keras_out(model, images=IMAGES):
    out = model(images, training=False)
    return [keras.ops.convert_to_numpy(o) for o in out] if isinstance(out, list) else keras.ops.convert_to_numpy(out)


def assert_close(actual, expected):
    shared_assert_close(actual, expected, "Keras against timm")


def entries(cache_dir, tag=ATTO):
    root = cache_dir / "entries" / tag
    return sorted(p for p in root.iterdir()) if root.is_dir() else []


def temp_files(cache_dir):
    tmp = cache_dir / "tmp"
    return list(tmp.iterdir()) if tmp.is_dir() else []


def gets(hub, filename="model.safetensors"):
    return hub.file_requests(filename, method="GET")


def run_python(script, *args, timeout=240, backend=None):
    """Run `script` in a fresh interpreter (environment inherited: HF_ENDPOINT etc.), on `backend` if given."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **({"KERAS_BACKEND": backend} if backend else {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- download, convert, cache


def test_first_download_matches_timm_and_fills_cache(local_hub, checkpoint, cache_dir, caplog):
    timm_model, weights = checkpoint("convnext_atto")
    commit = upload(local_hub, ATTO, weights)
    caplog.set_level(logging.INFO)
    model = load_pretrained("convnext_v1_atto", cache_dir=cache_dir)  # an alias of the default tag
    assert_close(keras_out(model), timm_out(timm_model))
    assert len(gets(local_hub)) == 1
    assert model.pretrained_cfg["name"] == ATTO and model.pretrained_cfg["hf_hub_id"] == f"timm/{ATTO}"
    assert model.pretrained_cfg["source"]["revision"] == commit
    [entry] = entries(cache_dir)
    meta = json.loads((entry / META_FILE).read_text())
    assert meta["source"]["etag"] == local_hub.resolve(f"timm/{ATTO}").files["model.safetensors"].sha256
    assert meta["architecture"] == "convnext_atto" and meta["num_classes"] == 1000
    assert meta["keras_version"] == keras.__version__ and meta["converter_version"] == CONVERTER_VERSION
    assert entry.name == entry_key(meta["source"]["etag"])
    assert (cache_dir / "refs" / ATTO / "main").read_text() == entry.name
    assert not temp_files(cache_dir)
    assert "licensed apache-2.0" in caplog.text


def test_first_load_returns_the_conversions_model_filled_once_from_the_new_entry(
    local_hub, checkpoint, cache_dir, tmp_path, monkeypatch
):
    """The conversion's model (a shell) is the one returned, filled once from the new entry (its mapped
    pages, see test_cache_integrity), through no other load: equal to timm and complete, it saves and
    reloads as `.keras` and trains; other arguments still get a model of their own."""
    timm_model, weights = checkpoint("convnextv2_atto")
    upload(local_hub, V2_ATTO, weights)
    from convnext_hub.hub import timm_hub

    real_fill, real_load_weights = timm_hub.fill_shell, keras.Model.load_weights
    reads = []

    def counted(read):
        def reading(*args, **kwargs):
            reads.append(args)
            return read(*args, **kwargs)

        return reading

    monkeypatch.setattr(timm_hub, "fill_shell", counted(real_fill))
    monkeypatch.setattr(keras.Model, "load_weights", counted(real_load_weights))
    built = []
    real_convert = timm_hub.convert_source

    def recording_convert(*args):
        meta, model = real_convert(*args)
        built.append(model)
        return meta, model

    monkeypatch.setattr(timm_hub, "convert_source", recording_convert)
    first = load_pretrained(V2_ATTO, cache_dir=cache_dir)
    assert built == [first]
    assert len(reads) == 1 and reads[0][0] is first, "the conversion's shell was not filled once"
    assert str(reads[0][2]).startswith(str(cache_dir)), "filled from elsewhere than the new entry"
    reads.clear()
    expected = timm_out(timm_model)
    assert_close(keras_out(first), expected)
    assert first.pretrained_cfg["name"] == V2_ATTO

    first.save(tmp_path / "first.keras")  # every variable has a value, and Keras' own saver is back in place
    assert_close(keras_out(keras.saving.load_model(tmp_path / "first.keras")), expected)
    first.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    first.train_on_batch(IMAGES, np.array([1, 2]))
    assert np.abs(keras_out(first) - expected).max() > 1e-3, "a training step changed nothing"

    other = load_pretrained(V2_ATTO, cache_dir=cache_dir, num_classes=5)
    assert len(reads) == 1 and other.num_classes == 5  # from the entry, into a model of its own


def test_cached_load_allocates_each_weight_once_from_the_entry(local_hub, checkpoint, cache_dir, monkeypatch):
    """A cached load builds the model without values (a shell) and gives each weight its stored array, rather
    than zeros to be overwritten (a pass over the weights, and on JAX a dispatch per variable); another head
    gets an initialised model and the entry's weights through timm keys."""
    from convnext_hub.hub import timm_hub
    from convnext_hub.weights_io import is_shell

    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    load_pretrained(ATTO, cache_dir=cache_dir)  # converts
    filled = []
    real_fill = timm_hub.fill_shell

    def recording_fill(model, tensors, source):
        filled.append(is_shell(model))
        return real_fill(model, tensors, source)

    monkeypatch.setattr(timm_hub, "fill_shell", recording_fill)
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert filled == [True] and not is_shell(model)
    assert_close(keras_out(model), timm_out(timm_model))
    other = load_pretrained(ATTO, cache_dir=cache_dir, num_classes=3)
    assert other.num_classes == 3 and not is_shell(other)
    for stored, loaded in zip(model.get_layer("stem_0").get_weights(), other.get_layer("stem_0").get_weights()):
        np.testing.assert_array_equal(loaded, stored)


def test_fill_shell_is_strict_before_it_reads_anything():
    """`fill_shell` takes `{variable path: array}` and checks every key and shape before reading a value: a
    missing or extra key, or a wrong shape, is a ValueError that names it; a complete set fills the shell."""
    from convnext_hub import create_model
    from convnext_hub.weights_io import build_shell, fill_shell, is_shell

    source = create_model("convnext_atto", num_classes=7)
    stored = {v.path: keras.ops.convert_to_numpy(v) for v in source.weights}

    class Unread:  # a lazy tensor that fails the test if it is read
        def __init__(self, shape):
            self.shape = shape

        def __array__(self, *args, **kwargs):
            raise AssertionError("a value was read before every key and shape was checked")

    lazy = {path: Unread(value.shape) for path, value in stored.items()}
    shell = build_shell(lambda: create_model("convnext_atto", num_classes=7))
    missing = dict(lazy)
    del missing["head_fc/kernel"]
    with pytest.raises(ValueError, match="missing \\['head_fc/kernel'\\]"):
        fill_shell(shell, missing, "entry.safetensors")
    with pytest.raises(ValueError, match="unexpected \\['extra/kernel'\\]"):
        fill_shell(shell, {**lazy, "extra/kernel": Unread((1,))}, "entry.safetensors")
    with pytest.raises(ValueError, match="entry.safetensors: stem_0/kernel is stored with shape \\(4, 4, 3, 1\\)"):
        fill_shell(shell, {**lazy, "stem_0/kernel": Unread((4, 4, 3, 1))}, "entry.safetensors")
    assert is_shell(fill_shell(shell, stored, "entry.safetensors")) is False
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(keras_out(shell, x), keras_out(source, x), rtol=0, atol=1e-6)


def test_a_filled_shell_keeps_the_aligned_arrays_it_is_given():
    """What spares a cached load a copy of its weights, on every backend: a shell's variable keeps the
    64-byte-aligned array it is filled with (a cache entry's mapped pages), so a change to the array shows."""
    from convnext_hub import create_model
    from convnext_hub.stored_arrays import aligned_empty
    from convnext_hub.weights_io import build_shell, fill_shell

    source = create_model("convnext_atto", num_classes=7)
    stored = {}
    for variable in source.weights:
        stored[variable.path] = aligned_empty(tuple(variable.shape), "float32")
        stored[variable.path][...] = keras.ops.convert_to_numpy(variable)
    shell = fill_shell(build_shell(lambda: create_model("convnext_atto", num_classes=7)), stored, "entry")
    kernel = stored["head_fc/kernel"]
    kernel[0, 0] += 1.0
    assert keras.ops.convert_to_numpy(shell.get_layer("head_fc").kernel)[0, 0] == kernel[0, 0]


def test_without_shell_internals_loads_build_models_with_values(local_hub, checkpoint, cache_dir, monkeypatch):
    """A Keras without the variable internals shells need: first and cached loads build ordinary models."""
    from convnext_hub import weights_io
    from convnext_hub.hub import timm_hub
    from convnext_hub.weights_io import is_shell

    monkeypatch.setattr(weights_io, "shells_supported", lambda: False)
    monkeypatch.setattr(timm_hub, "shells_supported", lambda: False)
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    for _ in ("first", "cached"):
        model = load_pretrained(ATTO, cache_dir=cache_dir)
        assert not is_shell(model)
        assert_close(keras_out(model), timm_out(timm_model))


def test_cached_load_reads_no_source_and_needs_no_torch(local_hub, checkpoint, cache_dir, tmp_path):
    """Without torch and timm (on this backend, or JAX where this one is torch)."""
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    np.save(tmp_path / "images.npy", IMAGES)
    result = run_python(
        """
        import importlib.abc, shutil, sys

        class NoTorch(importlib.abc.MetaPathFinder):  # any import of torch / timm fails, as if not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "timm"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoTorch())
        import os
        import numpy as np
        from convnext_hub.hub import load_pretrained

        images, cache = np.load(sys.argv[1]), sys.argv[2]
        first = load_pretrained("convnext_atto", cache_dir=cache)  # download + convert, from safetensors
        np.save(sys.argv[3], np.asarray(first(images)))
        shutil.rmtree(os.environ["HF_HUB_CACHE"])  # the source file is gone
        second = load_pretrained("convnext_atto", cache_dir=cache)
        np.save(sys.argv[4], np.asarray(second(images)))
        """,
        tmp_path / "images.npy",
        cache_dir,
        tmp_path / "first.npy",
        tmp_path / "second.npy",
        backend="jax" if keras.backend.backend() == "torch" else None,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = timm_out(timm_model)
    assert_close(np.load(tmp_path / "first.npy"), expected)
    assert_close(np.load(tmp_path / "second.npy"), expected)
    assert len(gets(local_hub)) == 1  # the second load only asked for the etag (HEAD)


def test_cached_load_survives_deleted_hf_blob(local_hub, checkpoint, cache_dir):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    load_pretrained(ATTO, cache_dir=cache_dir)
    for blob in local_hub.cache_dir.glob("models--timm--*/blobs/*"):
        blob.unlink()
    local_hub.clear_log()
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert_close(keras_out(model), timm_out(timm_model))
    assert gets(local_hub) == []
    assert [r.method for r in local_hub.file_requests("model.safetensors")] == ["HEAD"]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only"])
def test_offline_loads_from_cache(local_hub, checkpoint, cache_dir, monkeypatch, how):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    load_pretrained(ATTO, cache_dir=cache_dir)
    local_hub.clear_log()
    if how == "HF_HUB_OFFLINE":
        set_offline(monkeypatch, True)
    model = load_pretrained(ATTO, cache_dir=cache_dir, local_files_only=how == "local_files_only")
    assert_close(keras_out(model), timm_out(timm_model))
    assert local_hub.request_log == []


def test_offline_without_cache_says_what_is_missing(local_hub, cache_dir, monkeypatch):
    set_offline(monkeypatch, True)
    with pytest.raises(WeightsUnavailableError, match=rf"timm/{ATTO}.*hf download timm/{ATTO}"):
        load_pretrained(ATTO, cache_dir=cache_dir)
    assert local_hub.request_log == []


def test_offline_converts_from_hf_cache(local_hub, checkpoint, cache_dir, monkeypatch):
    """A source fetched with `hf download` (nothing converted yet) is converted offline."""
    import huggingface_hub

    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    huggingface_hub.hf_hub_download(f"timm/{ATTO}", "model.safetensors")
    set_offline(monkeypatch, True)
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert_close(keras_out(model), timm_out(timm_model))
    assert len(entries(cache_dir)) == 1


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_unreachable_hub_uses_cache_or_says_so(local_hub, checkpoint, cache_dir, monkeypatch, caplog, mode):
    fast_retries(monkeypatch)
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    load_pretrained(ATTO, cache_dir=cache_dir)
    local_hub.set_offline(True, mode=mode)  # connection refused / Hub down
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert_close(keras_out(model), timm_out(timm_model))
    assert "cannot be reached" in caplog.text and "using the cached conversion" in caplog.text
    with pytest.raises(WeightsUnavailableError, match=rf"cannot be reached.*timm/{V2_ATTO}"):
        load_pretrained(V2_ATTO, cache_dir=cache_dir)


def test_revisions_are_distinct_entries(local_hub, checkpoint, cache_dir):
    model_a, weights_a = checkpoint("convnext_atto", seed=0)
    model_b, weights_b = checkpoint("convnext_atto", seed=1)
    sha_a = upload(local_hub, ATTO, weights_a)
    load_pretrained(ATTO, cache_dir=cache_dir)
    upload(local_hub, ATTO, weights_b)
    assert_close(keras_out(load_pretrained(ATTO, cache_dir=cache_dir)), timm_out(model_b))
    pinned = load_pretrained(ATTO, revision=sha_a, cache_dir=cache_dir)
    assert_close(keras_out(pinned), timm_out(model_a))
    assert pinned.pretrained_cfg["source"]["revision"] == sha_a
    assert len(entries(cache_dir)) == 2
    local_hub.clear_log()
    load_pretrained(ATTO, revision=sha_a, cache_dir=cache_dir)  # a commit never changes: no request at all
    assert local_hub.request_log == []


def test_bin_only_repo_loads_with_torch(local_hub, checkpoint, cache_dir, tmp_path):
    timm_model, _ = checkpoint("convnext_atto")
    upload(local_hub, ATTO, save_pth(timm_model.state_dict(), tmp_path / "w.bin"), filename="pytorch_model.bin")
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert_close(keras_out(model), timm_out(timm_model))
    assert model.pretrained_cfg["source"]["filename"] == "pytorch_model.bin"


def test_v2_checkpoint_states_noncommercial_license(local_hub, checkpoint, cache_dir, caplog):
    timm_model, weights = checkpoint("convnextv2_atto")
    upload(local_hub, V2_ATTO, weights)
    model = load_pretrained("convnext_v2_atto", cache_dir=cache_dir)
    assert_close(keras_out(model), timm_out(timm_model))
    [record] = [r for r in caplog.records if "cc-by-nc-4.0" in r.getMessage()]
    assert record.levelno == logging.WARNING and "non-commercial" in record.getMessage()


# --------------------------------------------------------------------------- fine-tuning set-ups


def test_new_num_classes_keeps_backbone_and_logs_fresh_head(local_hub, checkpoint, cache_dir, caplog):
    _, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    full = load_pretrained(ATTO, cache_dir=cache_dir)
    model = load_pretrained(ATTO, num_classes=10, cache_dir=cache_dir)
    assert keras_out(model).shape == (2, 10)
    assert "head_fc" in caplog.text and "head.fc.weight" in caplog.text
    stored = {w.path: w.numpy() for w in full.weights}
    for weight in model.weights:
        if not weight.path.startswith("head_fc"):
            np.testing.assert_array_equal(weight.numpy(), stored[weight.path])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(include_top=False),
        dict(num_classes=0),
        dict(features_only=True, out_indices=(1, 3)),
    ],
    ids=["include_top=False", "num_classes=0", "features_only"],
)
def test_backbone_only(local_hub, checkpoint, cache_dir, kwargs):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    out = keras_out(load_pretrained(ATTO, cache_dir=cache_dir, **kwargs))
    feature_map = timm_out(timm_model, fn=timm_model.forward_features).transpose(0, 2, 3, 1)
    if kwargs.get("include_top") is False:
        assert_close(out, feature_map)
    elif kwargs.get("num_classes") == 0:
        pooled = timm_out(timm_model, fn=lambda x: timm_model.forward_head(timm_model.forward_features(x), True))
        assert_close(out, pooled)
    else:
        assert [o.shape[-1] for o in out] == [80, 320]
        assert_close(out[1], feature_map)


def test_other_input_size_is_noted(local_hub, checkpoint, cache_dir, caplog):
    _, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    caplog.set_level(logging.INFO)
    model = load_pretrained(ATTO, input_shape=(96, 128, 3), cache_dir=cache_dir)
    assert model.input_shape == (None, 96, 128, 3)
    assert "trained at 224x224" in caplog.text and "96x128" in caplog.text


# --------------------------------------------------------------------------- cache integrity


def test_corrupt_cache_entry_is_rebuilt(local_hub, checkpoint, cache_dir, caplog):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    load_pretrained(ATTO, cache_dir=cache_dir)
    [entry] = entries(cache_dir)
    data = bytearray((entry / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    (entry / WEIGHTS_FILE).write_bytes(data)
    model = load_pretrained(ATTO, cache_dir=cache_dir)
    assert "corrupt cache entry" in caplog.text
    assert_close(keras_out(model), timm_out(timm_model))
    [entry] = entries(cache_dir)
    assert Cache(cache_dir).lookup(ATTO, entry.name) is not None


def test_bad_checkpoint_leaves_nothing_in_cache(local_hub, checkpoint, cache_dir):
    _, weights = checkpoint("convnextv2_atto")
    upload(local_hub, ATTO, weights)  # V2 weights under a V1 tag
    with pytest.raises(ArchitectureError, match="convnext_atto"):
        load_pretrained(ATTO, cache_dir=cache_dir)
    assert entries(cache_dir) == [] and not temp_files(cache_dir)


def test_racing_writers_without_locks_leave_one_whole_entry(tmp_path, monkeypatch):
    """Where file locks do nothing, two writers of one key still leave one intact entry."""
    from convnext_hub.hub import cache as cache_module

    monkeypatch.setattr(cache_module, "FileLock", lambda path: _NoLock())
    cache = Cache(tmp_path / "c")

    def writer(content, meta):
        def write(folder, digest):
            (folder / WEIGHTS_FILE).write_bytes(content)
            digest.update(content)
            return meta

        return write

    def slow_convert(folder, digest):  # another "process" stores the same key while this one converts
        cache.store("m", "k", writer(b"other", {"by": "other"}))
        return writer(b"this", {"by": "this"})(folder, digest)

    entry = cache.store("m", "k", slow_convert)
    assert entry.meta["by"] == "other"
    assert [p.name for p in (tmp_path / "c" / "entries" / "m").iterdir()] == ["k"]
    assert not temp_files(tmp_path / "c")
    assert cache.lookup("m", "k").weights_file.read_bytes() == b"other"


class _NoLock:
    lock_file = "none"

    def acquire(self, timeout=None):
        pass

    def release(self):
        pass


# chmod does not stop root (as on CI machines); a regular file in the path stops everyone.
BLOCKERS = ["file"] + (["chmod"] if os.geteuid() != 0 else [])


@pytest.mark.parametrize("blocker", BLOCKERS)
def test_unwritable_cache_dir_is_a_clear_error(local_hub, checkpoint, tmp_path, blocker):
    _, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    if blocker == "file":  # stops root too
        (tmp_path / "a_file").write_text("")
        cache_dir = tmp_path / "a_file" / "cache"
    else:
        cache_dir = tmp_path / "ro"
        cache_dir.mkdir(mode=0o500)
    with pytest.raises(CacheNotWritableError, match=r"not writable.*cache_dir=.*CONVNEXT_HUB_CACHE") as info:
        load_pretrained(ATTO, cache_dir=cache_dir)
    assert str(cache_dir) in str(info.value)


def test_two_processes_convert_once(local_hub, checkpoint, cache_dir, tmp_path):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    np.save(tmp_path / "images.npy", IMAGES)
    script = textwrap.dedent(
        """
        import logging, os, sys, time
        import keras
        import numpy as np
        from convnext_hub.hub import load_pretrained

        logging.basicConfig(level=logging.INFO)
        images, cache, out, ready, go = sys.argv[1:6]
        open(ready, "w").close()
        while not os.path.exists(go):  # start both loads together
            time.sleep(0.01)
        model = load_pretrained("convnext_atto", cache_dir=cache)
        np.save(out, keras.ops.convert_to_numpy(model(np.load(images))))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                tmp_path / "images.npy",
                cache_dir,
                tmp_path / f"out{i}.npy",
                tmp_path / f"ready{i}",
                tmp_path / "go",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 180
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    logs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    expected = timm_out(timm_model)
    for i in range(2):
        assert_close(np.load(tmp_path / f"out{i}.npy"), expected)
    assert sum(log.count("to Keras") for log in logs) == 1  # one conversion
    [entry] = entries(cache_dir)
    assert Cache(cache_dir).lookup(ATTO, entry.name) is not None
    assert not temp_files(cache_dir)


# --------------------------------------------------------------------------- names and local files


def test_unknown_name_suggests_matches(cache_dir):
    with pytest.raises(UnknownCheckpointError, match="convnext_atto"):
        load_pretrained("convnext_atoo", cache_dir=cache_dir)


def test_local_files(checkpoint, tmp_path):
    timm_model, weights = checkpoint("convnext_atto")
    model = load_pretrained(weights)
    assert_close(keras_out(model), timm_out(timm_model))
    model.save(tmp_path / "m.keras")
    fine_tune = load_pretrained(str(tmp_path / "m.keras"), num_classes=3)
    assert fine_tune.output_shape == (None, 3)
    np.testing.assert_array_equal(
        fine_tune.get_layer("stages_3_blocks_1_conv_dw").get_weights()[0],
        model.get_layer("stages_3_blocks_1_conv_dw").get_weights()[0],
    )


# --------------------------------------------------------------------------- publishing


def test_publish_and_load_back(local_hub, checkpoint, cache_dir, monkeypatch):
    timm_model, weights = checkpoint("convnext_atto")
    upload(local_hub, ATTO, weights)
    publish("convnext_atto", "org/atto-keras", cache_dir=cache_dir)
    card = local_hub.read_file("org/atto-keras", "README.md").decode()
    assert f"base_model: timm/{ATTO}" in card and "license: apache-2.0" in card and "Max |Δ|" in card

    local_hub.clear_log()
    model = load_pretrained("hf://org/atto-keras")
    assert_close(keras_out(model), timm_out(timm_model))
    np.testing.assert_array_equal(keras_out(model), keras_out(load_pretrained(ATTO, cache_dir=cache_dir)))
    sha = local_hub.resolve("org/atto-keras").sha
    published = [path for _, path in local_hub.request_log if path.startswith(("/org/", "/api/models/org/"))]
    assert published[0] == "/api/models/org/atto-keras/revision/main"  # the commit, resolved once
    assert len(published) == 5 and all(f"/resolve/{sha}/" in path for path in published[1:])  # HEAD + GET x 2
    assert model.pretrained_cfg["source"] == {"repo_id": "org/atto-keras", "revision": sha, "format": "keras"}

    backbone = load_pretrained("hf://org/atto-keras", include_top=False)
    assert_close(keras_out(backbone), timm_out(timm_model, fn=timm_model.forward_features).transpose(0, 2, 3, 1))
    set_offline(monkeypatch, True)
    assert keras_out(load_pretrained("hf://org/atto-keras", num_classes=4)).shape == (2, 4)


def test_publish_dry_run_writes_folder(local_hub, checkpoint, cache_dir, tmp_path):
    timm_model, weights = checkpoint("convnextv2_atto")
    upload(local_hub, V2_ATTO, weights)
    folder = tmp_path / "dry"
    assert publish_main([V2_ATTO, "--repo-id", "org/v2", "--dry-run", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.weights.h5"]
    card = (folder / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: keras" in front and f"base_model: timm/{V2_ATTO}" in front
    assert "license: cc-by-nc-4.0" in front and "- image-classification" in front
    assert "non-commercial" in card and 'load_pretrained("hf://org/v2")' in card
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "convnextv2_atto" and config["model_config"]["num_classes"] == 1000
    assert config["equivalence"]["passed"] and config["equivalence"]["tolerance"] == 1e-5
    for output in ("stage 0", "stage 1", "stage 2", "stage 3", "logits"):
        measured = config["equivalence"]["outputs"][output]
        assert measured["max_abs_diff"] <= 1e-5 * measured["max_abs_ref"]
    assert not any(method == "POST" for method, _ in local_hub.request_log)  # nothing uploaded
    assert_close(keras_out(load_pretrained(folder)), timm_out(timm_model))
    config["model_config"]["dims"] = [48, 96, 192, 384]  # a config.json that lies about the weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchitectureError, match=r"config.json: dims=\[48, 96, 192, 384\] does not match"):
        load_pretrained(folder)
