"""`python -m converters.timm_to_keras`: outputs, --verify, and bad input that leaves nothing behind."""

import json
import os
import pickle

import keras
import numpy as np
import pytest
import torch

import convnext_hub.config
from converters import BadValueError, KeyMismatchError, ShapeMismatchError, convert, load_checkpoint
from converters.timm_to_keras import main
from convnext_hub import create_model
from tests.checkpoint_factory import (
    random_timm_model,
    save_safetensors,
    state_dict_numpy,
    timm_to_clip,
    timm_to_official,
)
from tests.hub_server import local_hub, upload_timm_checkpoint  # noqa: F401  (fixture)
from tests.timm_comparison import assert_matches_timm, random_images

ARCH = "convnextv2_atto"


@pytest.fixture(scope="module")
def reference():
    model = random_timm_model(ARCH, num_classes=6, seed=7)
    return model, state_dict_numpy(model)


def _save(sd, path):
    save_safetensors(sd, path)
    return str(path)


def _outputs(model, size=64):
    x = np.random.RandomState(1).rand(2, size, size, 3).astype("float32")
    return keras.ops.convert_to_numpy(model(x))


def test_random_init_verify_writes_weights_and_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--random-init", ARCH, "--out", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("  PASS\n") == 5 and "FAIL" not in printed
    assert printed.strip().splitlines()[-2].strip().startswith("PASS: worst")  # one overall line, then "wrote"
    config = json.loads((out / "config.json").read_text())
    model = create_model(config["architecture"], num_classes=config["model_config"]["num_classes"])
    model.load_weights(out / "model.weights.h5")
    assert sorted(os.listdir(out)) == ["config.json", "model.weights.h5"]


def test_file_to_keras_format_round_trips(reference, tmp_path):
    ref, sd = reference
    out = tmp_path / "out"
    assert main([_save(sd, tmp_path / "w.safetensors"), "--out", str(out), "--format", "keras", "--verify"]) == 0
    restored = keras.saving.load_model(out / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(_outputs(restored), _outputs(convert(sd)))


def test_num_classes_override_drops_head_and_verifies_stages(reference, tmp_path, capsys):
    _, sd = reference
    out = tmp_path / "out"
    assert main([_save(sd, tmp_path / "w.safetensors"), "--out", str(out), "--num-classes", "3", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("  PASS\n") == 4 and "logits   max" not in printed
    assert "logits   not compared: --num-classes 3 differs from the checkpoint's 6" in printed


def test_streamed_conversion_with_a_new_head_keeps_the_backbone(reference, tmp_path, capsys):
    """Without --verify, --num-classes streams the backbone and writes a freshly initialised classifier
    (timm's init: truncated normal kernel, zero bias) of that size; the stages equal the checkpoint's."""
    _, sd = reference
    out = tmp_path / "out"
    assert main([_save(sd, tmp_path / "w.safetensors"), "--out", str(out), "--num-classes", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["num_classes"] == 3
    model = create_model(config["architecture"], num_classes=3, pretrained=str(out / "model.weights.h5"))
    source = convert(sd)
    for layer in source.layers:
        if layer.weights and layer.name != "head_fc":
            for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    kernel, bias = model.get_layer("head_fc").get_weights()
    assert kernel.shape == (source.get_layer("head_fc").get_weights()[0].shape[0], 3)
    assert 0 < np.abs(kernel).max() <= 2 * 0.02 and not bias.any()


def _h5_contents(path):
    import h5py

    items = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: items.append((name, dict(obj.attrs), obj[()] if isinstance(obj, h5py.Dataset) else None))
        )
    return items


@pytest.mark.parametrize(
    "arch, dtype",
    [
        ("convnextv2_atto", None),
        ("convnext_zepto_rms_ols", torch.bfloat16),
        ("convnext_tiny_hnf", None),
    ],
)
def test_streamed_weights_equal_keras_own_save(tmp_path, arch, dtype):
    """Without --verify the weights go from the file into `model.weights.h5` one tensor at a time;
    the file is the one Keras writes for the converted model, and loads into timm's outputs."""
    timm_model = random_timm_model(arch, seed=3)
    sd = state_dict_numpy(timm_model)
    path = save_safetensors(sd, tmp_path / "w.safetensors", dtype=dtype)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 0
    converted = convert(load_checkpoint(path))
    converted.save_weights(tmp_path / "keras.weights.h5")
    streamed, saved = _h5_contents(out / "model.weights.h5"), _h5_contents(tmp_path / "keras.weights.h5")
    assert [item[:2] for item in streamed] == [item[:2] for item in saved]
    for (name, _, a), (_, _, b) in zip(streamed, saved):
        assert (a is None and b is None) or np.array_equal(a, b), name
    model = create_model(arch, pretrained=str(out / "model.weights.h5"))
    np.testing.assert_array_equal(_outputs(model), _outputs(converted))


def _mutations(sd):
    key = "stages.2.blocks.1.mlp.fc1.weight"
    missing = {k: v for k, v in sd.items() if k != key}
    extra = dict(sd, **{"stages.2.blocks.1.mlp.fc3.weight": sd[key]})
    wrong = dict(sd, **{key: sd[key][:, :-1]})
    nan = dict(sd, **{key: np.where(np.arange(sd[key].size).reshape(sd[key].shape) == 5, np.nan, sd[key])})
    official = timm_to_official(sd)
    mixed = dict(sd, **{k: v for k, v in official.items() if k.startswith("downsample_layers.1")})
    return {
        "missing": (missing, KeyMismatchError, [key]),
        "unexpected": (extra, KeyMismatchError, ["mlp.fc3.weight"]),
        "wrong_shape": (wrong, ShapeMismatchError, [key, "(640, 159, 1, 1)", "(640, 160, 1, 1)"]),
        "nan": (nan, BadValueError, [key, "NaN"]),
        "mixed_layouts": (mixed, KeyMismatchError, ["downsample_layers.1", "timm"]),
    }


@pytest.mark.parametrize("case", ["missing", "unexpected", "wrong_shape", "nan", "mixed_layouts"])
def test_bad_state_dicts_name_file_and_key(reference, tmp_path, capsys, case):
    _, sd = reference
    bad, error, fragments = _mutations(sd)[case]
    path = _save(bad, tmp_path / f"{case}.safetensors")
    with pytest.raises(error) as info:
        convert(load_checkpoint(path), source=path)
    for fragment in [path, *fragments]:
        assert fragment in str(info.value)
    out = tmp_path / "out"
    assert main([path, "--out", str(out)]) == 2
    assert path in capsys.readouterr().err
    assert not out.exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("case", ["empty", "truncated", "not_a_checkpoint", "unsafe_pickle"])
def test_bad_files_exit_2_and_write_nothing(reference, tmp_path, capsys, case):
    _, sd = reference
    path = tmp_path / "input.bin"
    marker = tmp_path / "code_ran"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        _save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "not_a_checkpoint":
        path.write_text("<html>rate limited</html>")
    else:
        payload = _RunsCode()
        payload.marker = marker
        torch.save({"state_dict": {"stem.0.weight": torch.zeros(1)}, "x": payload}, path, pickle_module=pickle)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 2
    assert str(path) in capsys.readouterr().err
    assert not out.exists() and not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["input.bin"]


def test_timm_hub_name_is_downloaded_and_verified(local_hub, reference, tmp_path, capsys, monkeypatch):
    """SOURCE as a timm Hub name goes through load_pretrained's resolution and huggingface_hub (the local Hub)."""
    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(tmp_path / "cache"))
    ref = random_timm_model("convnext_atto", num_classes=1000, seed=8)
    path = _save(state_dict_numpy(ref), tmp_path / "model.safetensors")
    upload_timm_checkpoint(local_hub, "convnext_atto.d2_in1k", path)
    out = tmp_path / "out"
    assert main(["convnext_atto.d2_in1k", "--out", str(out), "--verify"]) == 0
    assert capsys.readouterr().out.count("  PASS\n") == 5
    assert local_hub.file_requests("model.safetensors", method="GET")


@pytest.mark.parametrize("include_top", [True, False])
def test_headless_checkpoint_converts(reference, include_top, caplog):
    """fcmae-style weights (no head at all): the backbone converts, a head is freshly initialised."""
    ref, sd = reference
    headless = {k: v for k, v in sd.items() if not k.startswith("head.")}
    model = convert(headless, include_top=include_top)
    assert model.num_classes == 0
    assert_matches_timm(model, ref, random_images(64, 64, batch=1, seed=2), "headless", logits=False, head_loaded=False)
    if include_top:
        assert "head_norm/gamma" in caplog.text


def test_clip_tower_with_projection_converts():
    """open_clip image tower: trunk + bias-free projection become timm's head.fc with a zero bias."""
    ref = random_timm_model("convnext_atto", num_classes=12, seed=9)
    with torch.no_grad():
        ref.head.fc.bias.zero_()
    model = convert(timm_to_clip(state_dict_numpy(ref)))
    assert model.num_classes == 12
    assert_matches_timm(model, ref, random_images(64, 64, seed=3), "open_clip tower")


def test_streaming_on_jax_never_imports_tensorflow(reference, tmp_path):
    """Where JAX is installed the command streams on JAX; writing the weights and `config.json` then needs
    no TensorFlow, whose import (seconds) Keras' serializer would otherwise make to test for a tf.TensorShape."""
    import subprocess
    import sys
    from pathlib import Path

    ref, sd = reference
    out = tmp_path / "out"
    script = (
        "import runpy, sys\n"
        "sys.argv = ['timm_to_keras', sys.argv[1], '--out', sys.argv[2]]\n"
        "try:\n"
        "    runpy.run_module('converters.timm_to_keras', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('backend', sys.modules['keras'].backend.backend(), 'tensorflow', 'tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", script, _save(sd, tmp_path / "w.safetensors"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "backend jax tensorflow False"
    config = json.loads((out / "config.json").read_text())
    model = create_model(config["architecture"], **{k: config["model_config"][k] for k in ("num_classes", "dtype")})
    model.load_weights(out / "model.weights.h5")
    np.testing.assert_array_equal(_outputs(model), _outputs(convert(sd)))


def test_get_config_on_jax_leaves_tensorflow_unimported():
    """Every part of a model's config, its classifier activation included, serializes on JAX without
    TensorFlow; the config still rebuilds the model."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys\n"
        "from convnext_hub import create_model\n"
        "model = create_model('convnext_atto', num_classes=3, classifier_activation='softmax')\n"
        "config = model.get_config()\n"
        "again = type(model).from_config(config)\n"
        "print(config['classifier_activation'], again.num_classes, 'tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "softmax 3 False"
