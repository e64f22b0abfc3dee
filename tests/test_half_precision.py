"""Half precision without NaN: fine-tuning and inference under mixed_float16 and mixed_bfloat16.

* Fine-tuning V2 (GRN, the layer known for NaN in float16) from converted randomized-timm weights on
  real images (scikit-learn's digits) for a few steps: no NaN / Inf in any loss, weight or gradient,
  the optimizer of a mixed_float16 model scales the loss, and the loss stays near float32's (a
  diverged run is far from it). V1 (layer scale) trains under both policies in
  `tests/test_training.py::test_mixed_precision`; `benchmarks/half_precision.py` runs both for 300 steps.
* Inference of the representative set: logits within `TOLERANCE_IN_ROUNDOFFS` unit roundoffs of
  the format x max|float32 logits| of the float32 model's, and every stage map finite.
* Where float16 would overflow: GRN's sum of squares over the map (computed in float32 by the
  layer), and GRN's gradient where a channel is zero over the whole map (NaN before the fix).
"""

import keras
import numpy as np
import pytest

from convnext_hub import create_model
from convnext_hub.layers import GlobalResponseNorm
from tests import half_precision_runs as runs

POLICIES = ["mixed_float16", "mixed_bfloat16"]
TRAINED = ["convnextv2_atto"]
REPRESENTATIVE = ["convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_atto_rms", "convnext_tiny_hnf"]
# Logits may differ from float32's by this many unit roundoffs of the half format, times max|logits|.
# Each layer rounds its output once to the format (relative error <= u); the norms rescale every
# block's input, so the error does not compound through the depth. Measured here: 2-5 u on the
# representative set on every backend (float16 u = 4.9e-4, bfloat16 u = 3.9e-3), so 16 u leaves a
# margin of three while a NaN, an overflow or a half-precision norm statistic lands far above it.
TOLERANCE_IN_ROUNDOFFS = 16
STEPS, BATCH = 6, 16
# A run that diverged (NaN skipped by the loss scale, or a wrong gradient) ends far from float32's.
MAX_LOSS_RATIO_DEVIATION = 0.1


@pytest.fixture(scope="module")
def data():
    x, y = runs.digits()
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def state_dicts():
    return {arch: runs.randomized_timm_state_dict(arch) for arch in REPRESENTATIVE}


@pytest.fixture(scope="module")
def float32_runs(data, state_dicts):
    x, y = data
    return {
        arch: runs.fine_tune(state_dicts[arch], arch, "float32", x, y, STEPS, BATCH, check_every=STEPS)
        for arch in TRAINED
    }


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("arch", TRAINED)
def test_fine_tuning_has_no_nan_and_follows_float32(arch, policy, data, state_dicts, float32_runs):
    x, y = data
    run = runs.fine_tune(state_dicts[arch], arch, policy, x, y, STEPS, BATCH, check_every=STEPS // 2)
    assert runs.all_finite(run), run["checks"]
    assert run["loss_scale_optimizer"] == (policy == "mixed_float16")
    # The loss scale starts at 2^15 and halves (skipping that step) until the gradients fit float16.
    assert run["skipped_steps"] <= 2, run["skipped_steps"]
    reference = float32_runs[arch]
    assert runs.all_finite(reference)
    ratio = runs.final_loss(run, STEPS // 2) / runs.final_loss(reference, STEPS // 2)
    assert abs(ratio - 1.0) <= MAX_LOSS_RATIO_DEVIATION, (ratio, run["losses"], reference["losses"])


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_inference_within_the_formats_roundoff_of_float32(arch, data, state_dicts):
    images = data[0][:8]
    expected = [keras.ops.convert_to_numpy(o) for o in runs.converted(state_dicts[arch], arch, "float32")
                .stage_and_output_model()(images)]  # fmt: skip
    for policy in POLICIES:
        half = policy.split("_")[1]
        outputs = runs.converted(state_dicts[arch], arch, policy).stage_and_output_model()(images)
        assert keras.backend.standardize_dtype(outputs[-1].dtype) == half  # the model does run in half
        actual = [keras.ops.convert_to_numpy(keras.ops.cast(o, "float32")) for o in outputs]
        assert all(np.isfinite(a).all() for a in actual), policy
        bar = TOLERANCE_IN_ROUNDOFFS * runs.UNIT_ROUNDOFF[half] * np.abs(expected[-1]).max()
        assert np.abs(actual[-1] - expected[-1]).max() <= bar, (policy, np.abs(actual[-1] - expected[-1]).max(), bar)


def test_grn_sum_of_squares_would_overflow_float16_and_the_layer_does_not():
    """A 56 x 56 map (stage 0 at 224 px) with |x| about 8: sum of x^2 over the map is about 2e5 > 65504."""
    x = np.random.RandomState(0).uniform(6.0, 10.0, (1, 56, 56, 8)).astype("float32")
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(np.square(x.astype(np.float16)), axis=(1, 2), dtype=np.float16)).all()
    gamma = np.random.RandomState(1).normal(0.0, 0.5, 8).astype("float32")
    outputs = {}
    for dtype in ("float32", "mixed_float16"):
        layer = GlobalResponseNorm(dtype=dtype)
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        outputs[dtype] = keras.ops.convert_to_numpy(keras.ops.cast(layer(x), "float32"))
    assert np.isfinite(outputs["mixed_float16"]).all()
    bar = TOLERANCE_IN_ROUNDOFFS * runs.UNIT_ROUNDOFF["float16"] * np.abs(outputs["float32"]).max()
    assert np.abs(outputs["mixed_float16"] - outputs["float32"]).max() <= bar


@pytest.mark.parametrize("dtype", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_grn_gradient_is_finite_where_a_channel_is_zero_over_the_map(dtype):
    """GELU is exactly 0 below about -5 (float32) or -3 (half), and the last stage on a small input is
    one position: a channel can be zero over the whole map, where d sqrt / d(sum of squares) is infinite.
    timm's GRN (torch's `norm`) takes the gradient there as 0; the NaN would reach every weight below."""
    inputs = keras.Input((3, 3, 4))
    dense, grn = keras.layers.Dense(4, dtype=dtype), GlobalResponseNorm(dtype=dtype)
    pooled = keras.layers.GlobalAveragePooling2D(dtype=dtype)(grn(dense(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2, dtype=dtype)(pooled))
    kernel = np.random.RandomState(1).normal(size=(4, 4)).astype("float32")
    kernel[:, 1] = 0.0  # channel 1 of the map is exactly zero
    dense.kernel.assign(kernel)
    grn.gamma.assign(np.full(4, 0.5, "float32"))
    x = np.random.RandomState(0).normal(size=(2, 3, 3, 4)).astype("float32")
    grads = runs.gradients(model, x, np.array([0, 1]))
    assert all(np.isfinite(g).all() for g in grads), [v.path for v, g in zip(model.trainable_variables, grads)]
    assert np.abs(grads[0]).max() > 0.0


def test_an_explicit_mixed_float16_dtype_gets_loss_scaling():
    """`compile` adds the LossScaleOptimizer from the model's own policy, which Keras sets from the
    global policy only: a model built with `dtype="mixed_float16"` under a float32 global policy got
    none, and trained float16 gradients unscaled (small ones underflow to zero)."""
    keras.mixed_precision.set_global_policy("float32")
    model = create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3), dtype="mixed_float16")
    model.compile(optimizer="adam", loss=runs.LOSS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_config()["dtype"] == keras.dtype_policies.serialize(keras.dtype_policies.get("mixed_float16"))
