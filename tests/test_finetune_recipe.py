"""timm's training recipe in `fine_tune_folder`: layer-wise decay, the per-variable AdamW, EMA, augmentations.

The layer groups are checked against timm's own `param_groups_layer_decay` on
`timm.create_model` (no forward pass). The optimizer is checked against Keras' stock
`AdamW` run with the scaled learning rate, on the current backend (on torch the stock
class is a fused implementation, the subclass the generic path). The augmentation
pipeline runs in `tf.data` on every backend, so its test runs once; the run with EMA,
layer decay, erasing, mixup and CutMix is checked for resume equality on each backend.
"""

import json

import keras
import numpy as np
import pytest

import convnext_hub
from convnext_hub import saved_folder
from convnext_hub.convert.mapping import weight_slots
from convnext_hub.finetune import data, fine_tune_folder
from convnext_hub.finetune.augment import Augment, smoothed_one_hot
from convnext_hub.finetune.layer_decay import layer_scales
from convnext_hub.finetune.optimizer import LayerDecayAdamW, decays

from .test_finetune_folder import Interrupt, write_images

REPRESENTATIVE = ["convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_atto_rms", "convnext_tiny_hnf"]


# --------------------------------------------------------------------------- layer decay against timm


@pytest.mark.backend_independent
@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_layer_scales_and_weight_decay_match_timms_param_groups(arch):
    import timm
    from timm.optim import param_groups_layer_decay

    decay = 0.7
    reference = timm.create_model(arch, pretrained=False, num_classes=7)
    names = {id(p): name for name, p in reference.named_parameters()}
    timm_scale, timm_decays = {}, {}
    for group in param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=decay):
        for param in group["params"]:
            timm_scale[names[id(param)]] = group["lr_scale"]
            timm_decays[names[id(param)]] = group["weight_decay"] > 0

    model = convnext_hub.create_model(arch, num_classes=7, input_shape=(64, 64, 3))
    scales = layer_scales(model, decay)
    slots = {id(slot.variable): slot.timm_key for slot in weight_slots(model)}
    keys = {v.path: slots[id(v)] for v in model.trainable_variables}
    assert sorted(keys.values()) == sorted(timm_scale)  # one Keras variable per timm parameter
    for variable in model.trainable_variables:
        key = keys[variable.path]
        assert scales[variable.path] == pytest.approx(timm_scale[key], rel=1e-12), (variable.path, key)
        assert decays(variable) == timm_decays[key], (variable.path, key)
    # Not all alike: the stem, one group per block (a downsample with its stage's first block), the head.
    blocks = len({k.split(".")[3] + "." + k.split(".")[1] for k in timm_scale if ".blocks." in k})
    assert len(set(scales.values())) == len(set(timm_scale.values())) == blocks + 2


@pytest.mark.backend_independent
def test_layer_decay_rejects_bad_values_and_non_convnext_models():
    model = convnext_hub.create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3))
    assert set(layer_scales(model, 1.0).values()) == {1.0}
    with pytest.raises(ValueError, match="layer_decay"):
        layer_scales(model, 0.0)
    other = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(TypeError, match="No timm mapping for layer 'bn'"):
        layer_scales(other, 0.8)


# --------------------------------------------------------------------------- the optimizer


def _dense_pair():
    fc1, fc2 = keras.layers.Dense(4, name="fc1"), keras.layers.Dense(3, name="fc2")
    fc1.build((None, 3))
    fc2.build((None, 4))
    return fc1, fc2


def test_update_with_multiplier_equals_stock_adamw_with_scaled_learning_rate():
    """A variable with multiplier m moves as under Keras' own AdamW at lr * m, weight decay included."""
    lr, weight_decay, scale = 1e-2, 0.05, 0.3
    fc1, fc2 = _dense_pair()
    ours = [fc1.kernel, fc1.bias, fc2.kernel, fc2.bias]
    rng = np.random.default_rng(0)
    for v in ours:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    references = [keras.Variable(keras.ops.convert_to_numpy(v), name=v.name) for v in ours]
    optimizer = LayerDecayAdamW(lr, weight_decay, layer_scales={"fc1/kernel": scale, "fc1/bias": scale})
    stock = {}
    for m in (scale, 1.0):
        stock[m] = keras.optimizers.AdamW(learning_rate=lr * m, weight_decay=weight_decay)
        stock[m].exclude_from_weight_decay(var_names=["bias"])
    for _ in range(3):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in ours]
        optimizer.apply(grads, ours)
        stock[scale].apply(grads[:2], references[:2])
        stock[1.0].apply(grads[2:], references[2:])
    for v, reference in zip(ours, references):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(reference), rtol=0, atol=1e-6, err_msg=v.path
        )

    config = optimizer.get_config()
    again = LayerDecayAdamW.from_config(json.loads(json.dumps(config)))
    assert again.layer_scales == {"fc1/kernel": scale, "fc1/bias": scale}
    assert again.decoupled_weight_decay == weight_decay and not again.use_ema
    assert keras.optimizers.deserialize(keras.optimizers.serialize(optimizer)).layer_scales == again.layer_scales


def test_ema_is_kept_by_the_optimizer_and_put_in_on_request():
    momentum = 0.8
    fc1, _ = _dense_pair()
    variables = [fc1.kernel, fc1.bias]
    optimizer = LayerDecayAdamW(1e-1, 0.0, ema_momentum=momentum)
    optimizer.build(variables)
    rng = np.random.default_rng(1)
    average = None
    for _ in range(4):
        optimizer.apply(
            [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in variables], variables
        )
        now = [keras.ops.convert_to_numpy(v) for v in variables]
        # Keras' EMA: the first step copies the weights, then average = m * average + (1 - m) * weights.
        average = now if average is None else [momentum * a + (1 - momentum) * w for a, w in zip(average, now)]
    optimizer.finalize_variable_values(variables)  # what `fit` calls at its end: the weights stay
    for v, w in zip(variables, now):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), w)
    optimizer.assign_average_to(variables)
    for v, a, w in zip(variables, average, now):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a, rtol=0, atol=1e-6)
        assert not np.allclose(a, w, atol=1e-4)


# --------------------------------------------------------------------------- augmentation


@pytest.mark.backend_independent
def test_smoothed_targets_are_timms():
    import torch
    from timm.data.mixup import mixup_target

    labels = np.array([0, 3, 2, 2])
    expected = mixup_target(torch.tensor(labels), 5, lam=1.0, smoothing=0.1).numpy()
    np.testing.assert_allclose(smoothed_one_hot(labels, 5, 0.1).numpy(), expected, rtol=0, atol=1e-7)


@pytest.mark.backend_independent
def test_augmented_batches_depend_on_seed_and_epoch_only(tmp_path):
    images = data.scan(write_images(tmp_path, classes=("a", "b", "c"), per_class=4, size=(40, 36)))
    cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "crop_pct": 0.875}
    transforms = data.Transforms(cfg, 32, min_scale=0.5)
    full = Augment(rand_augment=0.3, erase_prob=0.5, mixup=0.8, cutmix=1.0, label_smoothing=0.1)

    def batches(augment, seed=0, epoch=0):
        pipeline = data.train_dataset(images, transforms, 4, seed=seed, epoch=epoch, augment=augment)
        return [(x.copy(), y.copy()) for x, y in pipeline.as_numpy_iterator()]

    plain, first, again = batches(None), batches(full), batches(full)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):  # a resumed epoch sees the same batches
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], batches(full, epoch=1)[0][0])
    assert all(not np.array_equal(x, p) for (x, _), (p, _) in zip(first, plain))

    targets = np.concatenate([y for _, y in first])
    assert targets.shape == (12, 3) and np.allclose(targets.sum(-1), 1.0, atol=1e-6)
    assert targets.min() >= 0.1 / 3 - 1e-6  # smoothing before mixing: no class below s / n
    pure = np.isclose(targets.max(-1), 1 - 0.1 + 0.1 / 3, atol=1e-6)
    assert not pure.all()  # some targets are mixtures

    # Validation: the eval transform, with targets of the training kind.
    (_, val_labels), *_ = list(data.eval_dataset(images, transforms, 12, augment=full).as_numpy_iterator())
    np.testing.assert_allclose(val_labels, smoothed_one_hot(np.asarray(images.labels), 3, 0.1).numpy())


@pytest.mark.backend_independent
def test_random_erasing_replaces_one_box_and_keeps_the_rest(tmp_path):
    images = data.scan(write_images(tmp_path, classes=("a", "b"), per_class=4, size=(40, 36)))
    cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "crop_pct": 0.875}
    transforms = data.Transforms(cfg, 32)
    plain = np.concatenate([x for x, _ in data.train_dataset(images, transforms, 8, seed=1, epoch=0)])
    erased, labels = next(
        data.train_dataset(images, transforms, 8, 1, 0, augment=Augment(erase_prob=1.0)).as_numpy_iterator()
    )
    assert labels.dtype == np.int32  # no mixing: integer labels, the loss smooths them
    for x, p in zip(erased, plain):
        changed = np.any(x != p, axis=-1)
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert changed.sum() > 0 and changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].mean() > 0.9
        assert np.abs(x[changed]).max() <= 1.0 + 1e-6  # the fill: noise within +-1


# --------------------------------------------------------------------------- the whole recipe in fine_tune_folder


def test_recipe_run_validates_and_saves_the_ema_and_resumes_exactly(tmp_path):
    source = tmp_path / "small"
    small = convnext_hub.ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), num_classes=5, input_shape=(32, 32, 3))
    saved_folder.write(source, small)
    images = write_images(tmp_path / "images", per_class=8, size=(36, 33))
    args = dict(
        data=images, val_split=0.25, epochs=2, batch_size=4, image_size=32, lr=1e-3, drop_path=0.1, verbose=0,
        layer_decay=0.7, ema=0.9, reprob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
    )  # fmt: skip
    whole = fine_tune_folder(source, out=tmp_path / "whole", **args)
    with pytest.raises(KeyboardInterrupt):
        fine_tune_folder(source, out=tmp_path / "parts", callbacks=[Interrupt(1)], **args)
    resumed = fine_tune_folder(source, out=tmp_path / "parts", resume=True, **args)
    for a, b in zip(whole.variables, resumed.variables, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), rtol=0, atol=1e-6, err_msg=a.path
        )
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "parts")]
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([m[key] for m in metrics[1]], [m[key] for m in metrics[0]], rtol=1e-6, err_msg=key)

    # The saved model is the average, not the trained weights the checkpoint holds for resuming.
    with np.load(tmp_path / "whole" / "checkpoint.npz") as stored:
        trained = [stored[f"model_{i}"] for i in range(len(whole.variables))]
    index = [v.path for v in whole.variables].index("stem_0/kernel")
    saved = keras.ops.convert_to_numpy(convnext_hub.load_pretrained(str(tmp_path / "whole")).get_layer("stem_0").kernel)
    np.testing.assert_array_equal(saved, keras.ops.convert_to_numpy(whole.get_layer("stem_0").kernel))
    assert not np.allclose(saved, trained[index], atol=1e-6)
    # Validation ran on the average: evaluating the saved model gives the last epoch's val_loss.
    train, validation = data.split(data.scan(images), 0.25, seed=0)
    transforms = data.Transforms(whole.pretrained_cfg, 32)
    augment = Augment(mixup=0.8, label_smoothing=0.1)
    val_loss = whole.evaluate(data.eval_dataset(validation, transforms, 4, augment), verbose=0, return_dict=True)[
        "loss"
    ]
    assert val_loss == pytest.approx(metrics[0][-1]["val_loss"], rel=1e-5)


# --------------------------------------------------------------------------- the command line


@pytest.mark.backend_independent
def test_recipe_flags_reach_the_function_and_bad_values_get_one_line(tmp_path, capsys, monkeypatch):
    from convnext_hub.finetune import __main__ as command

    seen = {}
    monkeypatch.setattr(command, "fine_tune_folder", lambda source, **kwargs: seen.update(kwargs))
    flags = ["--layer-decay", "0.8", "--ema", "0.999", "--rand-augment", "0.3", "--reprob", "0.25"]
    assert command.main(["convnext_atto", "--data", "d", "--out", "o", *flags, "--mixup", "0.8", "--cutmix", "1"]) == 0
    expected = dict(layer_decay=0.8, ema=0.999, rand_augment=0.3, reprob=0.25, mixup=0.8, cutmix=1.0)
    assert {key: seen[key] for key in expected} == expected
    assert command.main(["convnext_atto", "--data", "d", "--out", "o"]) == 0  # off unless given
    assert {key: seen[key] for key in expected} == dict(
        layer_decay=None, ema=None, rand_augment=0.0, reprob=0.0, mixup=0.0, cutmix=0.0
    )
    monkeypatch.undo()
    capsys.readouterr()

    images = write_images(tmp_path / "images", size=(8, 8))
    for flag, value, message in [
        ("--layer-decay", "0", "--layer-decay must be in (0, 1]"),
        ("--ema", "1", "--ema must be in (0, 1)"),
        ("--rand-augment", "1.5", "--rand-augment must be in [0, 1]"),
        ("--reprob", "-0.1", "--reprob must be in [0, 1]"),
        ("--mixup", "-1", "--mixup must be >= 0"),
        ("--cutmix", "2", "--cutmix must be in [0, 1]"),
    ]:
        out = tmp_path / "out"
        code = command.main(["convnext_atto", "--no-pretrained", "--data", str(images), "--out", str(out), flag, value])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
        assert not out.exists()


@pytest.mark.backend_independent
def test_checkpoint_from_before_the_recipe_flags_compares_as_a_run_without_them(tmp_path):
    from convnext_hub.finetune import folder

    arguments = {"seed": 0, "layer_decay": None, "ema": None, "rand_augment": 0.0, "reprob": 0.0}
    arguments.update(mixup=0.0, cutmix=0.0)
    older = {key: arguments.get(key) for key in folder.RECIPE_ARGUMENTS if key not in folder.RECIPE_ADDITIONS}
    state = json.dumps({"version": 1, "arguments": older, "epoch": 1, "history": []}).encode()
    np.savez(tmp_path / "checkpoint.npz", state=np.frombuffer(state, np.uint8))
    current = {key: arguments.get(key) for key in folder.RECIPE_ARGUMENTS}
    assert folder._read_checkpoint(str(tmp_path), current)["epoch"] == 1
    with pytest.raises(folder.RunError, match=r"mixup=0.8 \(checkpoint: 0.0\)"):
        folder._read_checkpoint(str(tmp_path), {**current, "mixup": 0.8})
