"""A fine-tuning recipe for ConvNeXt classifiers: head-only warm-up, then the whole network.

Stage 1 trains only the classification head (a fresh head from
`load_pretrained(..., num_classes=...)` would otherwise send large gradients
through the pretrained backbone). Stage 2 trains every layer with AdamW and a
linear-warmup + cosine-decay learning rate, without weight decay on norms,
biases, layer scale and GRN, as timm does.

Example:
    ```python
    import keras
    import convnext_hub
    from convnext_hub.finetune import fine_tune

    # keras.distribution.set_distribution(keras.distribution.DataParallel())  # JAX: all devices
    model = convnext_hub.load_pretrained(
        "convnextv2_atto", num_classes=5, input_shape=(224, 224, 3), drop_path_rate=0.1
    )
    head_history, history = fine_tune(
        model, (x_train, y_train), batch_size=32, validation_data=(x_val, y_val),
        head_epochs=1, epochs=10, head_lr=1e-3, peak_lr=1e-4, label_smoothing=0.1,
    )
    ```

Inputs must be preprocessed as the weights expect (`convnext_hub.preprocess_input`
or `model.pretrained_cfg`); labels are integer class ids.
"""

import math

import keras

from ..distribution import check_batches
from .layer_decay import layer_scales
from .optimizer import NO_WEIGHT_DECAY, LayerDecayAdamW

__all__ = ["NO_WEIGHT_DECAY", "fine_tune", "head_layers", "make_optimizer", "warmup_cosine"]


def head_layers(model):
    """The layers of `model`'s classification head, in model order (`ConvNeXt.head_layers`)."""
    return model.head_layers()


def warmup_cosine(peak_lr, total_steps, warmup_steps, min_lr=0.0):
    """Learning rate rising linearly from 0 to `peak_lr`, then a cosine decay to `min_lr`.

    Args:
        peak_lr: learning rate at the end of the warm-up.
        total_steps: optimizer steps of the whole schedule, warm-up included;
            the rate stays at `min_lr` after them.
        warmup_steps: steps of the linear warm-up (0 for none): the rate at step
            `s < warmup_steps` is `peak_lr * s / warmup_steps`.
        min_lr: final learning rate.

    Returns:
        A `keras.optimizers.schedules.CosineDecay` (serializable).
    """
    total_steps, warmup_steps = int(total_steps), int(warmup_steps)
    if peak_lr <= 0 or not 0 <= min_lr <= peak_lr:
        raise ValueError(f"Expected 0 <= min_lr <= peak_lr, peak_lr > 0. Received: {peak_lr=}, {min_lr=}")
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Expected total_steps >= 1 and 0 <= warmup_steps < total_steps. Received: {total_steps=}, {warmup_steps=}"
        )
    alpha = float(min_lr) / float(peak_lr)
    decay_steps = total_steps - warmup_steps
    if warmup_steps == 0:  # no warm-up branch (it would divide by zero steps)
        return keras.optimizers.schedules.CosineDecay(float(peak_lr), decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, alpha=alpha, warmup_target=float(peak_lr), warmup_steps=warmup_steps
    )


def make_optimizer(model, learning_rate, weight_decay=0.05, layer_decay=None, ema_momentum=None):
    """AdamW without weight decay on `model`'s rank-1 variables (norms, biases, layer scale, GRN).

    Args:
        model: the model to train (a `ConvNeXt` when `layer_decay` is given).
        learning_rate: a float or a schedule.
        weight_decay: decoupled weight decay.
        layer_decay: None, or timm's layer-wise learning-rate decay (`layer_decay.layer_scales`).
        ema_momentum: None, or the momentum of an EMA of the weights kept by the optimizer.

    Returns:
        Keras' own `AdamW` (fused on torch) when neither `layer_decay` nor `ema_momentum`
        is given; a `LayerDecayAdamW` otherwise, which `fit` leaves the EMA out of the
        model with (`LayerDecayAdamW.assign_average_to` puts it in).
    """
    if layer_decay is not None or ema_momentum is not None:
        scales = layer_scales(model, layer_decay) if layer_decay is not None else None
        return LayerDecayAdamW(learning_rate, weight_decay, layer_scales=scales, ema_momentum=ema_momentum)
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.weights if len(v.shape) <= 1], var_names=list(NO_WEIGHT_DECAY)
    )
    return optimizer


def fine_tune(
    model,
    train_data,
    *,
    validation_data=None,
    head_epochs=1,
    epochs=5,
    head_lr=1e-3,
    peak_lr=1e-4,
    weight_decay=0.05,
    warmup_fraction=0.1,
    min_lr=0.0,
    steps_per_epoch=None,
    batch_size=None,
    label_smoothing=0.0,
    callbacks=None,
    verbose="auto",
):
    """Fine-tunes a ConvNeXt classifier: head only, then the whole network.

    Stage 1 (`head_epochs`, skipped if 0) freezes every layer but `head_layers(model)`
    and trains with AdamW at the constant `head_lr`. Stage 2 (`epochs`, skipped if 0)
    trains every layer that was trainable before the call (all, for a fresh model)
    with AdamW and `warmup_cosine(peak_lr, epochs * steps_per_epoch,
    warmup_fraction * epochs * steps_per_epoch, min_lr)`. Both stages minimise sparse
    categorical cross-entropy (from logits unless the model ends in a softmax), use no
    weight decay on rank-1 variables, report accuracy, and leave `model` compiled.
    Stage 2's epochs are numbered after stage 1's, so `callbacks` (given to both stages)
    see one run. Runs under any `keras.distribution` set before the model was built; then
    `batch_size` and the last batch of a tuple of arrays must divide by the devices the batch
    is split over (a one-line ValueError otherwise).

    Args:
        model: a `ConvNeXt` with a classifier (`num_classes > 0`), or any Keras model
            whose head layers follow the same names.
        train_data: anything `model.fit` takes as `x` (a `tf.data.Dataset`, a
            `keras.utils.PyDataset`, a generator...) yielding `(images, labels)`, or a
            tuple `(images, labels)` / `(images, labels, sample_weight)` of arrays.
        validation_data: as for `model.fit`.
        head_epochs: epochs of stage 1.
        epochs: epochs of stage 2.
        head_lr: learning rate of stage 1.
        peak_lr: learning rate of stage 2 at the end of its warm-up.
        weight_decay: decoupled weight decay of both stages.
        warmup_fraction: fraction of stage 2's steps spent warming up.
        min_lr: learning rate at the end of stage 2.
        steps_per_epoch: batches per epoch; needed when `train_data` has no `len()`
            (an infinite or unknown-size dataset), and then passed to `model.fit`.
        batch_size: batch size when `train_data` is a tuple of arrays (default 32).
        label_smoothing: label smoothing of the cross-entropy.
        callbacks: Keras callbacks, given to both stages.
        verbose: as for `model.fit`.

    Returns:
        `(head_history, history)`: the `History` of each stage (None for a skipped stage).
    """
    head = head_layers(model)
    if not any(layer.weights for layer in head):
        raise ValueError(f"{model.name} has no classification head (`include_top=False` or `features_only`) to train.")
    if head_epochs < 0 or epochs < 0 or not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(
            f"Expected head_epochs >= 0, epochs >= 0 and 0 <= warmup_fraction < 1. Received: "
            f"{head_epochs=}, {epochs=}, {warmup_fraction=}"
        )
    fit_kwargs, explicit_steps = _fit_inputs(train_data, batch_size, steps_per_epoch)
    if isinstance(train_data, tuple):  # a dataset's batches are its own (JAX refuses an uneven one when it comes)
        arrays = [train_data, *([validation_data] if isinstance(validation_data, tuple) else [])]
        check_batches(fit_kwargs["batch_size"], *(keras.tree.flatten(d[0])[0].shape[0] for d in arrays))
    fit_kwargs.update(validation_data=validation_data, callbacks=callbacks, verbose=verbose)
    loss = _loss(model, label_smoothing)

    head_history = history = None
    if head_epochs:
        was_trainable = {id(layer): layer.trainable for layer in model.layers}
        head_ids = {id(layer) for layer in head}
        try:
            for layer in model.layers:
                layer.trainable = id(layer) in head_ids and was_trainable[id(layer)]
            model.compile(
                optimizer=make_optimizer(model, head_lr, weight_decay),
                loss=loss,
                metrics=["accuracy"],
                jit_compile=jit_compile(),
            )
            head_history = model.fit(epochs=head_epochs, **fit_kwargs)
        finally:
            for layer in model.layers:
                layer.trainable = was_trainable[id(layer)]
    if epochs:
        steps = explicit_steps or _steps_per_epoch(train_data, fit_kwargs.get("batch_size"))
        total_steps = epochs * steps
        schedule = warmup_cosine(peak_lr, total_steps, int(warmup_fraction * total_steps), min_lr)
        model.compile(
            optimizer=make_optimizer(model, schedule, weight_decay),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=jit_compile(),
        )
        history = model.fit(initial_epoch=head_epochs, epochs=head_epochs + epochs, **fit_kwargs)
    return head_history, history


def jit_compile():
    """`model.compile`'s `jit_compile` for training: XLA except on TensorFlow without a GPU, where it loses.

    Measured on the project's 2-core CPU with convnext_atto at 32x32, batch 32: 580 ms per
    step with XLA against 121 ms without, and several times the tracing time.
    """
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False


def _fit_inputs(train_data, batch_size, steps_per_epoch):
    """`model.fit` keyword arguments for `train_data`, and the explicit steps per epoch."""
    if isinstance(train_data, tuple):
        if len(train_data) not in (2, 3):
            raise ValueError(
                f"A tuple `train_data` must be (x, y) or (x, y, sample_weight); got {len(train_data)} items."
            )
        kwargs = dict(x=train_data[0], y=train_data[1], batch_size=batch_size or 32)
        if len(train_data) == 3:
            kwargs["sample_weight"] = train_data[2]
    else:
        if batch_size is not None:
            raise ValueError("`batch_size` applies to a tuple of arrays; a dataset sets its own batches.")
        kwargs = dict(x=train_data)
    if steps_per_epoch is not None:
        if int(steps_per_epoch) < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1. Received: {steps_per_epoch=}")
        kwargs["steps_per_epoch"] = int(steps_per_epoch)
    return kwargs, kwargs.get("steps_per_epoch")


def _steps_per_epoch(train_data, batch_size):
    if isinstance(train_data, tuple):
        samples = keras.tree.flatten(train_data[0])[0].shape[0]
        return math.ceil(samples / batch_size)
    try:
        steps = len(train_data)
    except TypeError:  # infinite or unknown-size dataset, generator
        steps = 0
    if steps < 1:
        raise ValueError(
            "Cannot tell the number of batches per epoch of `train_data` (no `len()`): pass `steps_per_epoch`."
        )
    return steps


def _loss(model, label_smoothing, soft_targets=False):
    """The cross-entropy for `model`'s output; `soft_targets`: one-hot / mixed targets, already smoothed."""
    activation = getattr(model, "classifier_activation", None)
    function = keras.activations.get(activation)
    if function is keras.activations.linear:
        from_logits = True
    elif function is keras.activations.softmax:
        from_logits = False
    else:
        raise ValueError(f"The classifier must return logits or softmax probabilities. Received: {activation=}")
    if soft_targets:
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    if label_smoothing:
        return SparseCategoricalCrossentropyWithSmoothing(from_logits=from_logits, label_smoothing=label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


@keras.saving.register_keras_serializable(package="convnext_hub")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, from_logits=True, label_smoothing=0.0, name="sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}
