"""The torch inference fast path: same results as Keras' own call, off by switch, and a guarded fallback."""

import logging

import keras
import numpy as np
import pytest

from convnext_hub import config, create_model, fast_path, keras_compat
from tests.conftest import BACKEND

ON_TORCH = BACKEND == "torch"


def _run(model, x):
    out = model.predict_on_batch(x)
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("name", ["convnext_atto_ols", "convnextv2_atto", "convnext_tiny_hnf"])
def test_fast_path_equals_keras_call(name, monkeypatch):
    """Inference skips `Layer.__call__` on torch; the outputs are those of Keras' functional run, bit for bit."""
    model = create_model(name, input_shape=(64, 64, 3), features_only=True)
    assert fast_path.applies(model, None, None, {}) == ON_TORCH
    x = np.random.RandomState(0).rand(2, 64, 64, 3).astype("float32")
    fast = _run(model, x)
    monkeypatch.setattr(config.current(), "fast_path", False)
    assert not fast_path.applies(model, None, None, {})
    plain = _run(model, x)
    assert len(fast) == len(plain) == 4
    for a, b in zip(fast, plain):
        np.testing.assert_array_equal(a, b)


def test_fast_path_not_taken_for_training_or_mixed_precision():
    model = create_model("convnext_atto", input_shape=(64, 64, 3))
    assert not fast_path.applies(model, True, None, {})
    mixed = create_model("convnext_atto", input_shape=(64, 64, 3), dtype="mixed_bfloat16")
    assert not fast_path.applies(mixed, None, None, {})


def test_missing_keras_internals_fall_back_with_one_notice(monkeypatch, caplog):
    """A Keras release without the private attributes runs Keras' own call and says so once (torch)."""
    model = create_model("convnext_atto", input_shape=(64, 64, 3))
    if not ON_TORCH:  # other backends never take the fast path
        assert not fast_path.applies(model, None, None, {})
        return
    x = np.random.RandomState(1).rand(1, 64, 64, 3).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    monkeypatch.setattr(keras_compat, "_notice_given", False)
    monkeypatch.setattr(keras_compat, "MODEL_INTERNALS", (*keras_compat.MODEL_INTERNALS, "_renamed_by_a_later_keras"))
    with caplog.at_level(logging.INFO, logger="convnext_hub"):
        first = keras.ops.convert_to_numpy(model(x))
        second = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(first, second)
    assert caplog.text.count("lacks the internals") == 1
