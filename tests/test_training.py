"""Serialization, mixed precision and training of the Keras models."""

import keras
import numpy as np
import pytest

from convnext_hub import create_model

ARCHS = ["convnext_atto", "convnextv2_atto"]


def _images(n=4, size=64, seed=0):
    return np.random.RandomState(seed).rand(n, size, size, 3).astype("float32")


def _randomize(model, seed=0):
    """Non-trivial values in every weight (layer scale 1e-6 and GRN zeros would hide bugs)."""
    rng = np.random.RandomState(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.3, w.shape).astype(w.dtype) + (1.0 if "gamma" in w.path else 0.0))


@pytest.mark.parametrize("arch", ARCHS)
def test_keras_file_round_trip(arch, tmp_path):
    model = create_model(arch, num_classes=7, input_shape=(64, 64, 3), drop_path_rate=0.1)
    _randomize(model)
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    x = _images()
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_and_weights_file_round_trip(arch, tmp_path):
    model = create_model(arch, num_classes=5, include_top=False, pooling="avg", name="custom_name")
    _randomize(model, seed=1)
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    clone.load_weights(path)
    x = _images(2, 48)
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_precision(arch, policy):
    keras.mixed_precision.set_global_policy(policy)
    model = create_model(arch, num_classes=4, input_shape=(64, 64, 3), drop_path_rate=0.1)
    assert model.get_layer("stages_0_blocks_0_mlp_fc1").compute_dtype == policy.split("_")[1]
    assert model.get_layer("stages_0_blocks_0_mlp_fc1").kernel.dtype == "float32"
    x = _images() * 255.0  # unnormalized input: large activations
    y = model.predict(x, verbose=0)
    assert np.isfinite(y.astype("float32")).all()
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(True))
    loss = model.train_on_batch(x, np.arange(4) % 4)
    assert np.isfinite(loss)
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.trainable_weights)


@pytest.mark.parametrize("arch", ARCHS)
def test_fit_lowers_loss_with_drop_path(arch):
    """A small synthetic task: the class is which image quadrant is bright."""
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 4, 64)
    x = rng.rand(64, 32, 32, 3).astype("float32") * 0.2
    for i, label in enumerate(labels):
        r, c = divmod(label, 2)
        x[i, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] += 0.8
    x = (x - 0.5) / 0.25  # normalized, as preprocessing would
    model = create_model(arch, num_classes=4, input_shape=(32, 32, 3), drop_path_rate=0.1)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(True))
    before = model.evaluate(x, labels, verbose=0)
    model.fit(x, labels, epochs=6, batch_size=16, verbose=0)
    after = model.evaluate(x, labels, verbose=0)
    assert after < 0.5 * before, (before, after)
