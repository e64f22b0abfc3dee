"""Every private-Keras use of `convnext_hub.keras_compat`, and its fallback, on the current backend.

CI runs this module against `keras-nightly` on all three backends, so a Keras
release that renames what a use reads shows here first.
"""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from convnext_hub import config, create_model, keras_compat
from convnext_hub.weights_io import build_shell, fill_shell, is_shell


def _small_model(**kwargs):
    return create_model("convnext_atto", input_shape=(32, 32, 3), **kwargs)


def test_layers_in_order_equal_keras_functional_call():
    """The graph-order runner gives Keras' own outputs, bit for bit, on any backend (torch uses it)."""
    model = _small_model(features_only=True)
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    assert keras_compat.graph_internals_present(model)
    ours = keras_compat.run_layers_in_order(model, x)
    with config.settings(fast_path=False):  # the fallback: Keras' functional call
        theirs = model(x, training=False)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_shell_gets_its_values_once_and_leaves_nothing_to_initialise():
    """Deferred variables: a shell has no values, is filled from arrays, and no later build initialises it."""
    assert keras_compat.shells_supported()
    reference = _small_model()
    values = {v.path: keras.ops.convert_to_numpy(v) for v in reference.weights}
    shell = build_shell(_small_model)
    assert is_shell(shell) and all(keras_compat.has_no_value(v) for v in shell.weights)
    fill_shell(shell, values, "reference")
    assert not is_shell(shell)
    for v in shell.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), values[v.path])
    _small_model()  # a later build must not re-initialise the filled shell's variables
    for v in shell.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), values[v.path])


def test_fallback_without_shells_builds_a_model_with_values(monkeypatch):
    import convnext_hub.weights_io as weights_io

    monkeypatch.setattr(weights_io, "shells_supported", lambda: False)
    reference = _small_model()
    values = {v.path: keras.ops.convert_to_numpy(v) for v in reference.weights}
    model = build_shell(_small_model)
    assert not is_shell(model)
    fill_shell(model, values, "reference")
    for v in model.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), values[v.path])


@pytest.mark.parametrize("use_private_record", [True, False], ids=["private", "fallback"])
def test_get_config_and_tensorflow(use_private_record):
    """On JAX, `get_config` leaves TensorFlow unimported; where Keras lacks the record, it still works."""
    patch = "" if use_private_record else "import keras.src.utils.module_utils as m; m.tensorflow = object()"
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        import convnext_hub
        {patch}
        config = convnext_hub.create_model("convnext_atto", input_shape=(32, 32, 3)).get_config()
        assert config["architecture"] == "convnext_atto"
        print("tensorflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = result.stdout.strip().splitlines()[-1]
    assert imported == ("False" if use_private_record else "True")


def test_accept_any_input_lets_a_layer_run_inside_tf_data():
    import tensorflow as tf

    from convnext_hub.preprocessing import _fixed_crop_class

    layer = _fixed_crop_class()(1, 2, 3, 4)
    images = np.arange(2 * 6 * 7 * 3, dtype="float32").reshape(2, 6, 7, 3)
    out = next(iter(tf.data.Dataset.from_tensor_slices(images).batch(2).map(layer)))
    np.testing.assert_array_equal(out.numpy(), images[:, 1:4, 2:6])


def test_fallback_layer_converts_inputs_and_still_crops_arrays(monkeypatch):
    from convnext_hub.preprocessing import _fixed_crop_class

    monkeypatch.setattr(keras_compat, "accept_any_input", lambda layer: None)
    layer = _fixed_crop_class()(1, 2, 3, 4)
    images = np.arange(2 * 6 * 7 * 3, dtype="float32").reshape(2, 6, 7, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images[:, 1:4, 2:6])


def test_saving_through_writes_what_the_savers_give(tmp_path):
    """Keras' own saver writes the values the per-layer savers hand it, and the layers get their method back."""
    model = _small_model()
    target = _small_model()
    values = {v.path: keras.ops.convert_to_numpy(v) for v in target.weights}

    def saver_of(layer):
        def save_own_variables(store):
            for i, variable in enumerate(layer.trainable_variables + layer.non_trainable_variables):
                store[str(i)] = values[variable.path]

        return save_own_variables

    with keras_compat.saving_through(model, saver_of):
        model.save_weights(tmp_path / "streamed.weights.h5")
    assert all("save_own_variables" not in vars(layer) for layer in model.layers)
    model.load_weights(tmp_path / "streamed.weights.h5")
    for v in model.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), values[v.path])
