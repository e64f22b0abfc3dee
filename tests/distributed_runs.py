"""The JAX training runs that tests/test_distribution.py compares, each in a process of its own.

    python -m tests.distributed_runs devices OUT              # 1 device, DataParallel on 8, ModelParallel 2x4
    python -m tests.distributed_runs process ID PORT OUT      # one of 2 processes x 2 devices on localhost

Run with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=8 (or 2 per process):
the device count is fixed when JAX starts. Each run writes `OUT/<run>.npz`: the loss after each step and
every trainable variable before and after training, by path.

Every run trains the same tiny ConvNeXt V2 (one block per stage, widths 8 ... 64, GRN, drop path) from
the same initial weights, on the same global batches in the same order, for `STEPS` AdamW steps. The
initial kernels are drawn once with numpy (seed 0) and set into each model built under
`zeros_initialized()`: Keras' random initializers compile one XLA program per weight shape, about 20 s of
the test's budget on a 2-core machine, for no part of what is compared.
"""

import json
import os
import random
import sys

import jax
import keras
import numpy as np

from convnext_hub import ConvNeXt
from convnext_hub.distribution import get_layout_map
from convnext_hub.model import zeros_initialized

STEPS = 3
GLOBAL_BATCH = 8
NUM_CLASSES = 8
IMAGE = (32, 32, 3)
LEARNING_RATE = 3e-3
SHARDED = ("stages_0_blocks_0_mlp_fc1/kernel", "stages_3_blocks_0_mlp_fc2/kernel", "head_fc/kernel")


def data():
    """`STEPS` global batches of random images and labels, in training order."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((STEPS * GLOBAL_BATCH, *IMAGE)).astype("float32")
    return x, rng.integers(0, NUM_CLASSES, STEPS * GLOBAL_BATCH).astype("int32")


def build():
    """The tiny model, with the same weights whatever the distribution."""
    random.seed(0)  # drop path's seed generator (keras.utils.set_random_seed would import TensorFlow: 4 s)
    with zeros_initialized():
        model = ConvNeXt(
            depths=(1, 1, 1, 1),
            dims=(8, 16, 32, 64),
            use_grn=True,
            layer_scale_init_value=None,
            num_classes=NUM_CLASSES,
            input_shape=IMAGE,
            drop_path_rate=0.1,
        )
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.path.endswith("kernel"):
            variable.assign(rng.normal(0.0, 0.02, variable.shape).astype("float32"))
    return model


def local_value(variable):
    """The whole value of a replicated or sharded variable, from this process's devices."""
    value = variable.value
    if value.is_fully_addressable:
        return np.asarray(value)
    shard = value.addressable_shards[0].data  # several processes: only replicated variables are read
    assert shard.shape == value.shape, (variable.path, value.sharding)
    return np.asarray(shard)


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(x, y, batch_size):
    """Builds and trains the model under the current distribution; returns what the tests compare."""
    model = build()
    before = {v.path: local_value(v) for v in model.trainable_variables}
    model.compile(
        optimizer=keras.optimizers.AdamW(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = StepLosses()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, callbacks=[losses], verbose=0)
    after = {v.path: local_value(v) for v in model.trainable_variables}
    return model, dict(losses=np.array(losses.losses), **{f"before:{k}": v for k, v in before.items()}), after


def save(out, name, arrays, after, **info):
    np.savez(os.path.join(out, f"{name}.npz"), **arrays, **{f"after:{k}": v for k, v in after.items()})
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(info, f)


def devices(out):
    assert len(jax.devices()) == 8, jax.devices()
    x, y = data()

    _, arrays, after = train(x, y, GLOBAL_BATCH)  # no distribution: everything on the first device
    save(out, "one_device", arrays, after)

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    model, arrays, after = train(x, y, GLOBAL_BATCH)
    kernel = model.get_layer("stages_0_blocks_0_mlp_fc1").kernel.value
    save(out, "data_parallel", arrays, after, kernel_devices=len(kernel.sharding.device_set))

    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices=keras.distribution.list_devices())
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=get_layout_map(mesh), batch_dim_name="batch")
    )
    model, arrays, after = train(x, y, GLOBAL_BATCH)
    sharding = {}
    for path in SHARDED:
        variable = next(v for v in model.trainable_variables if v.path == path)
        optimizer_moments = [v for v in model.optimizer.variables if path.replace("/", "_") in v.path]
        sharding[path] = dict(
            spec=[a for a in variable.value.sharding.spec],
            shape=list(variable.shape),
            shard_shapes=sorted({tuple(s.data.shape) for s in variable.value.addressable_shards}),
            moment_specs=sorted({str(m.value.sharding.spec) for m in optimizer_moments}),
        )
    save(out, "model_parallel", arrays, after, sharding=sharding, tensorflow="tensorflow" in sys.modules)

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    save(out, "recipes", {}, {}, **recipes(out))


def recipes(out):
    """`fine_tune` and `fine_tune_folder` under DataParallel on 8 devices: their one-line errors for a
    batch that does not split, and a whole run of `python -m convnext_hub.finetune --data-parallel`
    (pipeline, checkpoint, saved folder)."""
    from PIL import Image

    from convnext_hub import saved_folder
    from convnext_hub.finetune import RunError, fine_tune, fine_tune_folder
    from convnext_hub.finetune import __main__ as command

    x, y = data()
    model = build()
    errors = {}
    for batch_size, samples in ((12, 24), (8, 20)):
        try:
            fine_tune(model, (x[:samples], y[:samples]), batch_size=batch_size, verbose=0)
        except ValueError as e:
            errors[f"fine_tune {batch_size} {samples}"] = str(e)

    rng = np.random.default_rng(2)
    root = os.path.join(out, "images")
    for split, per_class in (("train", 8), ("val", 4)):
        for name in ("cat", "dog"):
            os.makedirs(os.path.join(root, split, name))
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, name, f"{i}.png"))
    source = os.path.join(out, "tiny")  # the tiny model as the project's saved folder: a custom geometry
    saved_folder.write(source, model)
    run = dict(data=os.path.join(root, "train"), epochs=1, batch_size=8, image_size=32, warmup_epochs=0, verbose=0)
    try:  # 12 images to train on and 4 held out: last batches of 4 on 8 devices
        fine_tune_folder(source, out=os.path.join(out, "uneven"), val_split=0.25, **run)
    except RunError as e:
        errors["fine_tune_folder val_split=0.25"] = str(e)
    # The command line sets the distribution itself (`--data-parallel`).
    keras.distribution.set_distribution(None)
    code = command.main(
        [source, "--data", run["data"], "--val", os.path.join(root, "val"), "--out", os.path.join(out, "run")]
        + ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--warmup-epochs", "0", "--data-parallel"]
    )
    distribution = keras.distribution.distribution()
    with open(os.path.join(out, "run", "metrics.json")) as f:
        metrics = json.load(f)
    return dict(
        errors=errors,
        command_exit_code=code,
        command_distribution=[type(distribution).__name__, distribution.device_mesh.devices.size],
        folder_files=sorted(os.listdir(os.path.join(out, "run"))),
        folder_metrics=metrics,
        uneven_left_nothing=not os.path.exists(os.path.join(out, "uneven")),
    )


def process(process_id, port, out):
    keras.distribution.initialize(job_addresses=f"localhost:{port}", num_processes=2, process_id=process_id)
    assert (jax.process_count(), len(jax.devices()), len(jax.local_devices())) == (2, 4, 2)
    # Arrays are not split between processes by Keras (only a tf.data.Dataset is): each process feeds its
    # half of every global batch, rows [8 s + 4 p, 8 s + 4 p + 4) of step s.
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
    x, y = data()
    half = GLOBAL_BATCH // 2
    x = x.reshape(STEPS, 2, half, *IMAGE)[:, process_id].reshape(-1, *IMAGE)
    y = y.reshape(STEPS, 2, half)[:, process_id].reshape(-1)
    _, arrays, after = train(x, y, half)
    save(out, f"process_{process_id}", arrays, after)


if __name__ == "__main__":
    assert keras.backend.backend() == "jax", keras.backend.backend()
    if sys.argv[1] == "devices":
        devices(sys.argv[2])
    else:
        process(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
