"""Fine-tuning and inference under half-precision policies, shared by `tests/test_half_precision.py`
(a few steps, in CI) and `benchmarks/half_precision.py` (300 steps on every backend).

Training: a converted randomized-timm model fine-tuned on scikit-learn's digits (real handwritten
scans, in its wheel) with `model.compile` + `train_on_batch`, the same weights and the same batch
order under every policy, so that the float32 run is the reference of the others. Each step's loss,
every few steps the weights and the gradients of a fixed probe batch, are checked for NaN and Inf.
Randomized weights (layer scale about 0.5, GRN gamma about N(0, 0.5), as the equivalence tests use)
make larger activations than timm's initialisation (layer scale 1e-6, GRN zeros), so they are the
harder case for float16's range.
"""

import math

import keras
import numpy as np

from convnext_hub.convert import convert
from convnext_hub.convert.randomize import randomize_

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
# Unit roundoff: half the distance from 1 to the next number (float16 has 10 stored mantissa bits,
# bfloat16 7).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def digits(size=32, seed=0):
    """scikit-learn's 1797 digits (8x8 grey scans, 10 classes), bicubic to `size`x`size`, as normalized RGB.

    Resized with PIL in NumPy, so every backend trains on the same arrays. Returns `(x, y)`:
    float32 NHWC images (ImageNet mean / std, as the models' preprocessing does) and int labels,
    in an order shuffled with `seed`.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = np.stack(
        [
            np.asarray(Image.fromarray((image * (255.0 / 16.0)).astype(np.uint8), "L").resize((size, size), 3))
            for image in data.images
        ]
    )
    rgb = np.repeat(grey[..., None].astype("float32") / 255.0, 3, axis=-1)
    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    order = np.random.default_rng(seed).permutation(len(rgb))
    return ((rgb - mean) / std)[order], data.target[order].astype("int32")


def randomized_timm_state_dict(arch, num_classes=10, seed=0):
    """`{timm key: float32 array}` of timm's `arch` with every parameter randomized (no download)."""
    import timm

    model = randomize_(timm.create_model(arch, pretrained=False, num_classes=num_classes), seed)
    return {key: value.detach().float().numpy().copy() for key, value in model.state_dict().items()}


def converted(state_dict, arch, policy, size=32):
    """The converted Keras model of `state_dict` under dtype policy `policy` (its variables stay float32)."""
    return convert(state_dict, arch, input_shape=(size, size, 3), dtype=policy)


def batch_order(n_examples, steps, batch, seed=0):
    """Index arrays of `steps` batches: a fresh permutation each epoch, the same for every policy."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch / n_examples) + 1
    order = np.concatenate([rng.permutation(n_examples) for _ in range(epochs)])
    return [order[i * batch : (i + 1) * batch] for i in range(steps)]


def gradients(model, x, y, scale=1.0):
    """The gradients of `scale` x the mean cross-entropy on `(x, y)` (training mode) w.r.t. the
    trainable variables, divided by `scale`, as float32 NumPy arrays.

    `scale` is what the loss-scale optimizer multiplies the loss by before the backward pass, so the
    half-precision backward runs through the values the optimizer's own step sees.
    """
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x, training=True)) * scale
        grads = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        fixed = [v.value for v in model.non_trainable_variables]

        def scaled_loss(trainable):
            logits, _ = model.stateless_call(trainable, fixed, x, training=True)
            return LOSS(y, logits) * scale

        grads = jax.grad(scaled_loss)([v.value for v in variables])
    elif backend == "torch":
        for variable in variables:
            variable.value.grad = None
        loss = LOSS(y, model(x, training=True)) * scale
        loss.backward()
        grads = [variable.value.grad for variable in variables]
        for variable in variables:
            variable.value.grad = None
    else:
        raise ValueError(f"no gradient helper for backend {backend!r}")
    return [keras.ops.convert_to_numpy(g).astype("float32") / scale for g in grads]


def _finite(arrays):
    return all(np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(a, "float32"))).all() for a in arrays)


def loss_scale(model):
    """The loss-scale optimizer's current scale, or 1.0 when the optimizer does not scale the loss."""
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
    return 1.0


def tensorflow_remapping(enabled):
    """Turns TensorFlow's graph remapper on or off (no-op on other backends).

    On CPU the remapper fuses MatMul + BiasAdd into one kernel whose float16 version is about 300x
    slower than the unfused ops (measured here: 0.3 s against 1 ms for a 2048x40 @ 40x160 product),
    which makes a float16 training step of convnext_atto take 10 s instead of 0.1 s. Results are the
    same either way; only float16 on TensorFlow's CPU needs it off.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"remapping": enabled})


def fine_tune(state_dict, arch, policy, x, y, steps, batch=32, lr=2e-4, check_every=25, size=32):
    """Fine-tunes the converted model under `policy` for `steps` steps; what happened, as a dict.

    Every step's loss is kept and checked; every `check_every` steps (and after the last) the
    trainable weights and optimizer variables, and the gradients of the first batch (at loss scale 1
    and at the optimizer's current scale, each divided back), are checked for NaN / Inf.
    """
    keras.utils.set_random_seed(0)
    tensorflow_remapping(policy != "mixed_float16")
    model = converted(state_dict, arch, policy, size)
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=0.05), loss=LOSS)
    scales_loss = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    probe_x, probe_y = x[:batch], y[:batch]
    losses, checks = [], []
    for step, index in enumerate(batch_order(len(x), steps, batch), 1):
        losses.append(float(np.asarray(model.train_on_batch(x[index], y[index]))))
        if step % check_every == 0 or step == steps:
            scale = loss_scale(model)
            unscaled = gradients(model, probe_x, probe_y)
            scaled = gradients(model, probe_x, probe_y, scale) if scale != 1.0 else unscaled
            checks.append(
                {
                    "step": step,
                    "weights_finite": _finite(v.value for v in model.trainable_variables)
                    and _finite(v.value for v in model.optimizer.variables),
                    "gradients_finite": _finite(unscaled),
                    "scaled_gradients_finite": _finite(scaled),
                    "max_abs_gradient": max(float(np.abs(g).max()) for g in unscaled),
                    "loss_scale": scale,
                }
            )
    applied = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return {
        "policy": policy,
        "loss_scale_optimizer": scales_loss,
        "losses": losses,
        "checks": checks,
        "skipped_steps": steps - applied,
        "final_loss_scale": loss_scale(model),
    }


def final_loss(run, last=50):
    """The mean training loss of the last `last` steps (one batch's loss is noisy)."""
    return float(np.mean(run["losses"][-last:]))


def all_finite(run):
    """No NaN or Inf in any step's loss, nor in the checked weights and gradients."""
    return (
        bool(np.isfinite(run["losses"]).all())
        and all(c["weights_finite"] and c["gradients_finite"] for c in run["checks"])
        and bool(run["checks"])
    )
