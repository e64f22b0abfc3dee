"""Fine-tuning from a folder of images to a saved folder: `fine_tune_folder` and its output files.

`out` ends up as the project's saved folder (`config.json` + `model.weights.h5`,
so `load_pretrained(out)` loads it), beside:

    metrics.json          one record per epoch (loss, accuracy, val_loss, val_accuracy, lr, seconds)
    training_curves.png   loss and accuracy per epoch (when matplotlib is installed)
    checkpoint.npz        the state after the last finished epoch, for `resume=True`

Every file is written to a temporary name and moved into place with `os.replace`,
so a run killed at any moment leaves either the previous file or the new one.
"""

import json
import logging
import math
import os
import sys
import tempfile
import time

import keras
import numpy as np

import checkpoints

from .. import saved_folder
from ..distribution import check_batches
from ..families import create_model
from ..hub import load_pretrained
from . import data as folders
from .augment import Augment
from .recipe import _loss, jit_compile, make_optimizer, warmup_cosine

logger = logging.getLogger("convnext_hub.finetune")

CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CHECKPOINT_VERSION = 1
# The arguments a resumed run must share with the run it continues (they shape the weights it reaches).
RECIPE_ARGUMENTS = (
    "source",
    "pretrained",
    "data",
    "val",
    "val_split",
    "epochs",
    "batch_size",
    "image_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "drop_path",
    "label_smoothing",
    "min_scale",
    "hflip",
    "seed",
    "layer_decay",
    "ema",
    "rand_augment",
    "reprob",
    "mixup",
    "cutmix",
)

# Recipe arguments added after checkpoints were first written, with the value a run without them had.
RECIPE_ADDITIONS = dict(layer_decay=None, ema=None, rand_augment=0.0, reprob=0.0, mixup=0.0, cutmix=0.0)


class RunError(ValueError):
    """A user mistake about the run itself (`out`, `resume`, the source): reported in one line."""


def fine_tune_folder(
    source,
    *,
    data,
    out,
    val=None,
    val_split=0.1,
    epochs=10,
    batch_size=32,
    image_size=None,
    lr=1e-4,
    weight_decay=0.05,
    warmup_epochs=1,
    drop_path=0.1,
    label_smoothing=0.1,
    min_scale=0.08,
    hflip=0.5,
    seed=0,
    layer_decay=None,
    ema=None,
    rand_augment=0.0,
    reprob=0.0,
    mixup=0.0,
    cutmix=0.0,
    resume=False,
    pretrained=True,
    callbacks=None,
    verbose="auto",
):
    """Fine-tunes a ConvNeXt on a class-per-folder image tree and saves it as a loadable folder.

    The recipe is `convnext_hub.finetune`'s second stage over every layer: AdamW
    (`make_optimizer`, no decay on rank-1 variables) with `warmup_cosine` over all
    steps, cross-entropy with label smoothing, stochastic depth. The warm-up stands in
    for the head-only stage, so that one optimizer state covers the whole run and a
    resumed run equals an uninterrupted one. Each epoch is one `fit` call on a pipeline
    built for that epoch, whose order and augmentation depend on `(seed, epoch)` only.

    Args:
        source: anything `load_pretrained` takes (a Hub name, `hf://`, a local folder or
            file); with `pretrained=False`, a timm architecture or checkpoint name.
        data: the training folder, one sub-folder of images per class.
        out: the output folder; it must be missing or empty unless `resume`.
        val: a validation folder with the same class sub-folders; None splits `data`.
        val_split: fraction of each class of `data` held out for validation when `val`
            is None (default 0.1); 0 trains on everything and skips validation.
        epochs: training epochs.
        batch_size: images per step.
        image_size: training and validation image side; None takes the source's.
        lr: peak learning rate, reached after `warmup_epochs`.
        weight_decay: decoupled weight decay of AdamW.
        warmup_epochs: epochs of linear warm-up (may be fractional; capped below `epochs`).
        drop_path: stochastic depth rate of the last block.
        label_smoothing: label smoothing of the cross-entropy.
        min_scale: smallest area fraction of the random resized crop (timm: 0.08).
        hflip: probability of a horizontal flip.
        seed: seed of the weights, the split, the order and the augmentation.
        layer_decay: timm's layer-wise learning-rate decay (`layer_decay.layer_scales`:
            the head at `lr`, each layer below at `layer_decay` times the one above);
            None for none.
        ema: the momentum of an exponential moving average of the weights (timm's
            `--model-ema-decay`), kept by the optimizer and checkpointed with it; None for
            none. With it, validation runs on the average and the saved model holds it.
        rand_augment: Keras' RandAugment strength in [0, 1] (`augment.Augment`); 0 for none.
        reprob: probability of random erasing per image (timm's `--reprob`).
        mixup: mixup's alpha (timm's `--mixup`); 0 for none.
        cutmix: CutMix's alpha in [0, 1] (timm's `--cutmix`); 0 for none. With mixup or
            CutMix the targets are smoothed one-hot vectors, mixed per batch.
        resume: continue the run whose checkpoint is in `out`.
        pretrained: False starts from random weights (no download).
        callbacks: extra Keras callbacks for every epoch's `fit`.
        verbose: as for `model.fit`; "auto" shows a progress bar on a terminal and
            one line per epoch otherwise.

    Returns:
        The trained `ConvNeXt`; its `pretrained_cfg` holds the class names (`label_names`),
        the training image size (`input_size`) and the source (`fine_tuned_from`).

    Raises:
        folders.DataError, RunError: bad input (reported before anything is written).
    """
    arguments = dict(
        source=os.fspath(source) if isinstance(source, os.PathLike) else source,
        pretrained=bool(pretrained),
        data=os.path.abspath(data),
        val=os.path.abspath(val) if val is not None else None,
        val_split=float(val_split) if val is None else None,
        epochs=int(epochs),
        batch_size=int(batch_size),
        image_size=None if image_size is None else int(image_size),
        lr=float(lr),
        weight_decay=float(weight_decay),
        warmup_epochs=float(warmup_epochs),
        drop_path=float(drop_path),
        label_smoothing=float(label_smoothing),
        min_scale=float(min_scale),
        hflip=float(hflip),
        seed=int(seed),
        layer_decay=None if layer_decay is None else float(layer_decay),
        ema=None if ema is None else float(ema),
        rand_augment=float(rand_augment),
        reprob=float(reprob),
        mixup=float(mixup),
        cutmix=float(cutmix),
    )
    _check_numbers(arguments)
    out = os.path.abspath(out)
    state = _read_checkpoint(out, arguments) if resume else _check_fresh(out)

    train, validation, skipped = _folders(arguments)
    check_batches(arguments["batch_size"], *(len(f) for f in (train, validation) if f is not None), error=RunError)
    model, base_cfg = _build(arguments, len(train.class_names))
    image_size = arguments["image_size"] or _source_image_size(base_cfg)
    transforms = folders.Transforms(base_cfg, image_size, arguments["min_scale"], arguments["hflip"])

    steps = math.ceil(len(train) / arguments["batch_size"])
    total_steps = arguments["epochs"] * steps
    warmup_steps = min(int(arguments["warmup_epochs"] * steps), total_steps - 1)
    schedule = warmup_cosine(arguments["lr"], total_steps, warmup_steps)
    augment = _augment(arguments)
    model.compile(
        optimizer=make_optimizer(
            model,
            schedule,
            arguments["weight_decay"],
            layer_decay=arguments["layer_decay"],
            ema_momentum=arguments["ema"],
        ),
        loss=_loss(model, arguments["label_smoothing"], soft_targets=augment.mixes),
        metrics=["accuracy"],
        jit_compile=jit_compile(),
    )
    model.optimizer.build(model.trainable_variables)
    history, first_epoch = [], 0
    if state is not None:
        _restore(model, state)
        history, first_epoch = state["history"], state["epoch"]
        logger.info("%s: resuming after epoch %d of %d", out, first_epoch, arguments["epochs"])

    os.makedirs(out, exist_ok=True)
    verbose = _verbosity(verbose)
    _log_start(arguments, train, validation, image_size)
    if augment.active:
        _build_compiled_state(model, augment.mixes)
    # Validation on the EMA weights: Keras' callback swaps them in for `evaluate` and back after.
    epoch_callbacks = [
        *(callbacks or []),
        *([keras.callbacks.SwapEMAWeights()] if arguments["ema"] is not None else []),
    ]
    for epoch in range(first_epoch, arguments["epochs"]):
        started = time.perf_counter()
        fit = model.fit(
            folders.train_dataset(train, transforms, arguments["batch_size"], arguments["seed"], epoch, augment),
            validation_data=folders.eval_dataset(validation, transforms, arguments["batch_size"], augment)
            if validation is not None
            else None,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=False,  # the pipeline is already in this epoch's order
            callbacks=[*epoch_callbacks, _EpochProgress(arguments["epochs"])] if verbose else epoch_callbacks,
            verbose=verbose,
        )
        record = {"epoch": epoch + 1, **{k: float(v[-1]) for k, v in fit.history.items()}}
        record["lr"] = float(keras.ops.convert_to_numpy(schedule(min((epoch + 1) * steps, total_steps))))
        record["seconds"] = round(time.perf_counter() - started, 3)
        history.append(record)
        _write_checkpoint(out, model, arguments, epoch + 1, history)
        _write_json(os.path.join(out, METRICS_FILE), history)

    if arguments["ema"] is not None:
        # The output is the average; the checkpoint keeps the trained weights and the average.
        model.optimizer.assign_average_to(model.trainable_variables)
    model.pretrained_cfg = _output_cfg(base_cfg, arguments, train.class_names, image_size)
    _save(out, model, arguments, train, validation, skipped)
    _write_json(os.path.join(out, METRICS_FILE), history)
    _plot(history, os.path.join(out, CURVES_FILE))
    return model


# --------------------------------------------------------------------------- checks before anything is written


def _check_numbers(arguments):
    problems = []
    if arguments["epochs"] < 1:
        problems.append(f"--epochs must be >= 1 (got {arguments['epochs']})")
    if arguments["batch_size"] < 1:
        problems.append(f"--batch-size must be >= 1 (got {arguments['batch_size']})")
    if arguments["image_size"] is not None and arguments["image_size"] < 32:
        problems.append(f"--image-size must be >= 32 (got {arguments['image_size']})")
    if arguments["lr"] <= 0:
        problems.append(f"--lr must be > 0 (got {arguments['lr']})")
    if not 0.0 <= arguments["drop_path"] < 1.0:
        problems.append(f"--drop-path must be in [0, 1) (got {arguments['drop_path']})")
    if not 0.0 <= arguments["label_smoothing"] < 1.0:
        problems.append(f"--label-smoothing must be in [0, 1) (got {arguments['label_smoothing']})")
    if not 0.0 < arguments["min_scale"] <= 1.0:
        problems.append(f"--min-scale must be in (0, 1] (got {arguments['min_scale']})")
    if not 0.0 <= arguments["hflip"] <= 1.0:
        problems.append(f"--hflip must be in [0, 1] (got {arguments['hflip']})")
    if arguments["val_split"] is not None and not 0.0 <= arguments["val_split"] < 1.0:
        problems.append(f"--val-split must be in [0, 1) (got {arguments['val_split']})")
    if arguments["layer_decay"] is not None and not 0.0 < arguments["layer_decay"] <= 1.0:
        problems.append(f"--layer-decay must be in (0, 1] (got {arguments['layer_decay']})")
    if arguments["ema"] is not None and not 0.0 < arguments["ema"] < 1.0:
        problems.append(f"--ema must be in (0, 1) (got {arguments['ema']})")
    problems += _augment(arguments).problems()
    if problems:
        raise RunError("; ".join(problems))


def _augment(arguments):
    return Augment(
        rand_augment=arguments["rand_augment"],
        erase_prob=arguments["reprob"],
        mixup=arguments["mixup"],
        cutmix=arguments["cutmix"],
        label_smoothing=arguments["label_smoothing"],
    )


def _check_fresh(out):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        what = "a checkpoint of another run" if os.path.isfile(os.path.join(out, CHECKPOINT_FILE)) else "files"
        raise RunError(f"{out} already holds {what}; pass --resume to continue it, or choose another --out")
    return None


def _folders(arguments):
    """(train, validation or None, the unreadable files of both) per the arguments."""
    train = folders.scan(arguments["data"])
    folders.check_trainable(train)
    skipped = list(train.skipped)
    if arguments["val"] is not None:
        validation = folders.scan(arguments["val"], class_names=train.class_names)
        folders.check_trainable(validation, role="validation")
        skipped += validation.skipped
    elif arguments["val_split"]:
        train, validation = folders.split(train, arguments["val_split"], arguments["seed"])
    else:
        validation = None
    return train, validation, skipped


def _build(arguments, num_classes):
    """The model with a fresh `num_classes` head, and the source's pretrained_cfg."""
    keras.utils.set_random_seed(arguments["seed"])
    kwargs = dict(num_classes=num_classes, drop_path_rate=arguments["drop_path"])
    if arguments["image_size"]:
        kwargs["input_shape"] = (arguments["image_size"], arguments["image_size"], 3)
    source = arguments["source"]
    if arguments["pretrained"]:
        try:
            model = load_pretrained(source, **kwargs)
        except (FileNotFoundError, checkpoints.UnknownCheckpointError) as e:
            raise RunError(str(e).strip("'\"")) from None
        return model, dict(model.pretrained_cfg or {})
    try:
        entry = checkpoints.resolve(source)
    except checkpoints.UnknownCheckpointError as e:
        raise RunError(f"--no-pretrained needs an architecture or checkpoint name: {e}") from None
    cfg = {**entry, "source": None}
    return create_model(entry["architecture"], pretrained_cfg=cfg, **kwargs), cfg


def _build_compiled_state(model, soft_targets):
    """Builds the compiled loss and metrics on one batch of zeros (`fit` with no epoch).

    Otherwise the first `fit` of a process draws a batch from the epoch's pipeline to build
    them (Keras does on JAX and torch), which advances the seed generators of the augmentation
    layers before the epoch starts: a resumed epoch would differ from the uninterrupted one.
    """
    x = np.zeros((1, *model.input_shape[1:]), np.float32)
    y = np.zeros((1, model.num_classes), np.float32) if soft_targets else np.zeros((1,), np.int32)
    model.fit(x, y, epochs=0, verbose=0)


def _source_image_size(cfg):
    size = cfg.get("input_size") or [3, 224, 224]
    return int(size[-1])


# --------------------------------------------------------------------------- output


def _output_cfg(base_cfg, arguments, class_names, image_size):
    """The source's preprocessing with this run's classes, size and provenance.

    The source checkpoint's Hub id, tags and test sizes describe other weights and are
    dropped; its license stays when its weights were the starting point (the result is
    derived from them) and goes for a run from random weights.
    """
    dropped = {"hf_hub_id", "tag", "is_default", "test_input_size", "test_crop_pct", "label_set", "source"}
    if not arguments["pretrained"]:
        dropped.add("license")
    cfg = {key: value for key, value in base_cfg.items() if key not in dropped}
    cfg.update(
        name=f"{cfg.get('architecture') or 'convnext'}.fine_tuned",
        num_classes=len(class_names),
        label_names=list(class_names),
        label_set=None,
        input_size=[3, image_size, image_size],
        source={
            "fine_tuned_from": arguments["source"],
            "checkpoint": base_cfg.get("name") if arguments["pretrained"] else None,
            "checkpoint_source": base_cfg.get("source") if arguments["pretrained"] else None,
            "pretrained": arguments["pretrained"],
        },
    )
    return cfg


def _save(out, model, arguments, train, validation, skipped):
    """The saved folder (`config.json` + `model.weights.h5`), each file replaced atomically."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".saving-") as staging:
        config = saved_folder.write(
            staging,
            model,
            finetune={
                "arguments": arguments,
                "train_images": len(train),
                "validation_images": len(validation) if validation is not None else 0,
                "skipped_files": [list(item) for item in skipped],
            },
        )
        os.replace(os.path.join(staging, saved_folder.WEIGHTS_FILE), os.path.join(out, saved_folder.WEIGHTS_FILE))
        os.replace(os.path.join(staging, saved_folder.CONFIG_FILE), os.path.join(out, saved_folder.CONFIG_FILE))
    return config


def _write_json(path, value):
    _atomic_write(path, lambda f: f.write((json.dumps(value, indent=1) + "\n").encode()))


def _atomic_write(path, write):
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # as `open` would create it; mkstemp makes it private
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _plot(history, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        logger.info("matplotlib is not installed: no %s (the figures are in %s)", CURVES_FILE, METRICS_FILE)
        return
    epochs = [record["epoch"] for record in history]
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix in ("", "val_"):
            values = [record.get(prefix + metric) for record in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, marker="o", label=("validation " if prefix else "training ") + metric)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    _atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))
    pyplot.close(figure)


# --------------------------------------------------------------------------- checkpoints


def _write_checkpoint(out, model, arguments, epoch, history):
    """Every model variable (seed generators included), every optimizer variable, the epoch and the history."""
    state = {"version": CHECKPOINT_VERSION, "arguments": arguments, "epoch": epoch, "history": history}
    arrays = {f"model_{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.variables)}
    arrays.update(
        {f"optimizer_{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.optimizer.variables)}
    )
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
    _atomic_write(os.path.join(out, CHECKPOINT_FILE), lambda f: np.savez(f, **arrays))


def _read_checkpoint(out, arguments):
    path = os.path.join(out, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise RunError(f"--resume: {out} holds no checkpoint ({CHECKPOINT_FILE}) to resume from")
    try:
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        state = json.loads(arrays.pop("state").tobytes().decode())
    except Exception as e:
        raise RunError(f"--resume: {path} is unreadable ({type(e).__name__}: {e})") from None
    stored = {**RECIPE_ADDITIONS, **state["arguments"]}
    differing = [
        f"{key}={arguments[key]!r} (checkpoint: {stored.get(key)!r})"
        for key in RECIPE_ARGUMENTS
        if stored.get(key) != arguments[key]
    ]
    if differing:
        raise RunError(f"--resume: the arguments differ from the checkpoint's run: {', '.join(differing)}")
    state["arrays"] = arrays
    return state


def _restore(model, state):
    arrays = state["arrays"]
    for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        stored = sorted((k for k in arrays if k.startswith(prefix + "_")), key=lambda k: int(k.split("_")[1]))
        if len(stored) != len(variables):
            raise RunError(f"--resume: the checkpoint holds {len(stored)} {prefix} variables, the run {len(variables)}")
        for key, variable in zip(stored, variables):
            variable.assign(arrays[key])


# --------------------------------------------------------------------------- progress


def _verbosity(verbose):
    """A progress bar (1) on a terminal, one line per epoch (2) otherwise, as `fit`'s "auto" intends."""
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else 2


class _EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar / epoch lines, numbered out of the whole run (each `fit` call is one epoch)."""

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def _log_start(arguments, train, validation, image_size):
    logger.info(
        "fine-tuning %s on %d images of %d classes (%s), validating on %s, %dx%d, %d epochs",
        arguments["source"],
        len(train),
        len(train.class_names),
        ", ".join(train.class_names[:10]) + (", ..." if len(train.class_names) > 10 else ""),
        f"{len(validation)} images" if validation is not None else "nothing",
        image_size,
        image_size,
        arguments["epochs"],
    )
