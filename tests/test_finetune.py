"""The fine-tuning recipe (`convnext_hub.finetune`): head warm-up, then AdamW + warmup-cosine.

One run of the recipe on a small synthetic task serves several checks; a
subprocess runs it again under `keras.distribution.DataParallel` on two
simulated CPU devices (JAX backend), whatever this process's backend.
"""

import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from convnext_hub import ConvNeXt, create_model
from convnext_hub.finetune import (
    SparseCategoricalCrossentropyWithSmoothing,
    fine_tune,
    head_layers,
    warmup_cosine,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES, BATCH, HEAD_EPOCHS, EPOCHS = 64, 16, 1, 2
STEPS = SAMPLES // BATCH
BACKBONE_WEIGHT = "stages_1_blocks_0_mlp_fc1/kernel"
HEAD_WEIGHTS = ("head_fc/kernel", "head_norm/gamma")


def quadrant_task(n=64, size=32, seed=0):
    """4 classes: which image quadrant is bright; inputs normalized to mean 0, std 1."""
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 4, n)
    x = rng.rand(n, size, size, 3).astype("float32") * 0.2
    half = size // 2
    for i, label in enumerate(labels):
        r, c = divmod(label, 2)
        x[i, r * half : (r + 1) * half, c * half : (c + 1) * half] += 0.8
    return (x - x.mean()) / x.std(), labels


def expected_lr(step, peak, total, warmup, min_lr):
    """Linear warm-up from 0 to `peak`, then cosine from `peak` to `min_lr` at `total`."""
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Snapshots(keras.callbacks.Callback):
    """The model's weights (by path) at the start and end of every `fit`."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = [], []

    def _weights(self):
        return {w.path: keras.ops.convert_to_numpy(w).copy() for w in self.model.weights}

    def on_train_begin(self, logs=None):
        self.begin.append(self._weights())

    def on_train_end(self, logs=None):
        self.end.append(self._weights())


@pytest.fixture(scope="module")
def recipe():
    keras.utils.set_random_seed(0)
    x, y = quadrant_task(SAMPLES)
    model = create_model("convnextv2_atto", num_classes=4, input_shape=(32, 32, 3), drop_path_rate=0.1)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    initial_loss = model.evaluate(x, y, verbose=0)
    snapshots = Snapshots()
    head_history, history = fine_tune(
        model,
        (x, y),
        batch_size=BATCH,
        head_epochs=HEAD_EPOCHS,
        epochs=EPOCHS,
        head_lr=1e-3,
        peak_lr=2e-3,
        warmup_fraction=0.25,
        callbacks=[snapshots],
        verbose=0,
    )
    final_loss, final_accuracy = model.evaluate(x, y, verbose=0)
    return dict(
        model=model,
        snapshots=snapshots,
        head_history=head_history,
        history=history,
        initial_loss=initial_loss,
        final_loss=final_loss,
        final_accuracy=final_accuracy,
    )


def test_head_layers():
    model = create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3), dropout_rate=0.1)
    assert [layer.name for layer in head_layers(model)] == ["head_global_pool", "head_norm", "head_drop", "head_fc"]
    hnf = ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), head_norm_first=True, num_classes=3, input_shape=(32, 32, 3))
    assert [layer.name for layer in head_layers(hnf)] == ["norm_pre", "head_global_pool", "head_fc"]


def test_stage_1_trains_only_the_head(recipe):
    snapshots = recipe["snapshots"]
    assert len(snapshots.begin) == len(snapshots.end) == 2
    before, after = snapshots.begin[0], snapshots.end[0]
    head_paths = {w.path for layer in head_layers(recipe["model"]) for w in layer.weights}
    for path in before:
        if path in head_paths:
            continue
        np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    for path in HEAD_WEIGHTS:
        assert not np.allclose(after[path], before[path]), path
    assert len(recipe["head_history"].history["loss"]) == HEAD_EPOCHS


def test_stage_2_trains_everything_and_lowers_the_loss(recipe):
    model, snapshots = recipe["model"], recipe["snapshots"]
    start, end = snapshots.begin[1], snapshots.end[1]
    np.testing.assert_array_equal(start[BACKBONE_WEIGHT], snapshots.end[0][BACKBONE_WEIGHT])
    for path in (BACKBONE_WEIGHT, "stem_0/kernel", "stages_0_blocks_0_mlp_grn/gamma") + HEAD_WEIGHTS:
        assert not np.allclose(end[path], start[path]), path
    assert recipe["final_loss"] < 0.5 * recipe["initial_loss"], (recipe["initial_loss"], recipe["final_loss"])
    assert recipe["history"].epoch == list(range(HEAD_EPOCHS, HEAD_EPOCHS + EPOCHS))  # numbered after stage 1
    assert all(layer.trainable for layer in model.layers)  # stage 1's freezing is undone

    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.05
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == EPOCHS * STEPS
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert (schedule.warmup_steps, schedule.decay_steps + schedule.warmup_steps) == (2, EPOCHS * STEPS)
    # Keras has no public query for it: no decay on norms, biases, layer scale, GRN; decay on kernels.
    decayed = {w.path: optimizer._use_weight_decay(w) for w in model.trainable_weights}
    for path in (
        "stem_0/bias",
        "stem_1/gamma",
        "stem_1/beta",
        "stages_0_blocks_0_mlp_grn/gamma",
        "stages_0_blocks_0_mlp_grn/beta",
        "head_norm/gamma",
        "head_fc/bias",
    ):
        assert decayed[path] is False, path
    for path in ("stem_0/kernel", "stages_0_blocks_0_conv_dw/kernel", BACKBONE_WEIGHT, "head_fc/kernel"):
        assert decayed[path] is True, path


def test_v1_layer_scale_gets_no_weight_decay():
    from convnext_hub.finetune import make_optimizer

    model = create_model("convnext_atto", num_classes=2, input_shape=(32, 32, 3))
    optimizer = make_optimizer(model, 1e-3)
    assert optimizer._use_weight_decay(model.get_layer("stages_0_blocks_0_gamma").weights[0]) is False
    assert optimizer._use_weight_decay(model.get_layer("stages_0_blocks_0_mlp_fc2").kernel) is True


@pytest.mark.parametrize("peak, total, warmup, min_lr", [(1e-3, 100, 10, 1e-5), (4e-4, 50, 0, 0.0), (1.0, 8, 3, 0.1)])
def test_warmup_cosine_schedule(peak, total, warmup, min_lr):
    schedule = warmup_cosine(peak, total, warmup, min_lr)
    steps = sorted({0, 1, warmup // 2, max(warmup - 1, 0), warmup, (warmup + total) // 2, total - 1, total, total + 7})
    values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]
    np.testing.assert_allclose(
        values, [expected_lr(s, peak, total, warmup, min_lr) for s in steps], rtol=1e-5, atol=1e-9
    )
    if warmup > 1:  # rises linearly, from 0
        ramp = values[: steps.index(warmup) + 1]
        assert ramp[0] == 0.0 and all(a < b for a, b in zip(ramp, ramp[1:]))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    np.testing.assert_allclose([float(keras.ops.convert_to_numpy(restored(step))) for step in steps], values)


@pytest.mark.parametrize(
    "bad",
    [
        dict(total_steps=10, warmup_steps=10),
        dict(total_steps=0, warmup_steps=0),
        dict(total_steps=10, warmup_steps=1, min_lr=1.0),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        warmup_cosine(peak_lr=1e-3, **bad)


def test_label_smoothing_loss():
    logits = np.random.RandomState(0).normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 3, 1, 2, 3])
    loss = SparseCategoricalCrossentropyWithSmoothing(from_logits=True, label_smoothing=0.1)
    ours = loss(labels, logits)
    reference = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(np.eye(4)[labels], logits)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(reference), rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SparseCategoricalCrossentropyWithSmoothing)
    assert restored.get_config() == loss.get_config()


def test_rejects_models_without_head_and_unsized_data():
    x, y = quadrant_task(n=4)
    with pytest.raises(ValueError, match="no classification head"):
        fine_tune(create_model("convnext_atto", include_top=False, input_shape=(32, 32, 3)), (x, y))
    model = create_model("convnext_atto", num_classes=4, input_shape=(32, 32, 3))

    def batches():
        while True:
            yield x, y

    with pytest.raises(ValueError, match="steps_per_epoch"):
        fine_tune(model, batches(), head_epochs=0, epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        fine_tune(model, batches(), batch_size=4)
    assert all(layer.trainable for layer in model.layers)


def test_steps_per_epoch_of_datasets():
    from convnext_hub.finetune import _steps_per_epoch

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return quadrant_task(n=2)

    assert _steps_per_epoch(Batches(), None) == 3
    assert _steps_per_epoch((np.zeros((10, 32, 32, 3)), np.zeros(10)), 4) == 3
    tf = pytest.importorskip("tensorflow")
    assert _steps_per_epoch(tf.data.Dataset.range(10).batch(4), None) == 3
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _steps_per_epoch(tf.data.Dataset.range(10).repeat().batch(4), None)


DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import keras
    import numpy as np

    assert keras.backend.backend() == "jax", keras.backend.backend()
    devices = jax.devices()
    assert len(devices) == 2, devices
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    from convnext_hub import create_model
    from convnext_hub.finetune import fine_tune

    # QUADRANT_TASK
    keras.utils.set_random_seed(0)
    x, y = quadrant_task()
    model = create_model("convnextv2_atto", num_classes=4, input_shape=(32, 32, 3), drop_path_rate=0.1)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    initial = float(model.evaluate(x, y, batch_size=16, verbose=0))
    head_history, history = fine_tune(
        model, (x, y), batch_size=16, head_epochs=1, epochs=1, head_lr=1e-3, peak_lr=2e-3,
        warmup_fraction=0.25, verbose=0,
    )
    final = float(model.evaluate(x, y, batch_size=16, verbose=0)[0])
    print(json.dumps(dict(
        initial=initial, final=final, train_loss=history.history["loss"][-1],
        kernel_devices=len(model.get_layer("stem_0").kernel.value.sharding.device_set),
        heavy_imports=sorted(m for m in ("torch", "timm") if m in sys.modules),
    )))
    """
)


@pytest.mark.backend_independent  # always JAX, in a subprocess: once per suite is enough
def test_data_parallel_on_two_simulated_jax_devices():
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    script = DATA_PARALLEL_SCRIPT.replace("# QUADRANT_TASK", inspect.getsource(quadrant_task))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert math.isfinite(report["final"]) and report["final"] < report["initial"], report
    assert report["kernel_devices"] == 2, report  # variables replicated on both devices
    assert report["heavy_imports"] == [], report
