"""Fine-tuning from a folder of images (`python -m convnext_hub.finetune`, `fine_tune_folder`).

The end-to-end test trains `convnext_atto` from random weights on real
handwritten digits (scikit-learn's `load_digits`, 8x8 grey scans shipped in
its wheel) written as class-per-folder PNGs, then loads the output folder as a
user would. The resume test compares an interrupted-and-resumed run with an
uninterrupted one, weight by weight. The other tests are fast: the data
pipeline on mixed images and the one-line errors for user mistakes.
"""

import json
import os
import re

import keras
import numpy as np
import pytest
from PIL import Image

import convnext_hub
from convnext_hub import preprocessing, saved_folder
from convnext_hub.finetune import __main__ as command
from convnext_hub.finetune import data, fine_tune_folder, folder

DIGIT_CLASSES = 4  # digits 0..3: chance is 25 %
DIGITS_PER_CLASS = 100
# Stated figure: validation accuracy after 3 epochs from random weights (measured 0.95-0.99 on the three backends).
MIN_VAL_ACCURACY = 0.85
DIGITS_ARGS = [
    "--image-size", "32", "--epochs", "3", "--batch-size", "32", "--lr", "2e-3", "--warmup-epochs", "0.3",
    "--min-scale", "0.5", "--hflip", "0", "--drop-path", "0", "--val-split", "0.2", "--seed", "0",
]  # fmt: skip


def write_digits(root):
    """scikit-learn's digits 0..3 (100 each), upsampled from 8x8 to 32x32, as `root/digit_k/*.png`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = dict.fromkeys(range(DIGIT_CLASSES), 0)
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label >= DIGIT_CLASSES or counts[label] == DIGITS_PER_CLASS:
            continue
        counts[label] += 1
        os.makedirs(root / f"digit_{label}", exist_ok=True)
        grey = Image.fromarray((image * (255.0 / 16.0)).astype(np.uint8), "L")
        grey.resize((32, 32), Image.Resampling.BICUBIC).save(root / f"digit_{label}" / f"{index:04d}.png")
    return root


def write_images(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    """Small random RGB PNGs, `per_class` per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


# --------------------------------------------------------------------------- end to end on real images


def test_digits_from_random_weights_reach_stated_accuracy_and_load_back(tmp_path, capfd):
    digits, out = write_digits(tmp_path / "digits"), tmp_path / "run"
    code = command.main(["convnext_atto", "--no-pretrained", "--data", str(digits), "--out", str(out), *DIGITS_ARGS])
    printed = capfd.readouterr().out
    assert code == 0

    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{keras.backend.backend()}: digits validation accuracy per epoch {[m['val_accuracy'] for m in metrics]}")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_accuracy"] >= MIN_VAL_ACCURACY, metrics
    assert metrics[-1]["loss"] < metrics[0]["loss"], metrics
    # Not a terminal: one plain line per epoch, numbered out of the whole run, and no progress bar.
    assert re.search(r"^Epoch 3/3$", printed, re.M) and re.search(r"^10/10 - \d+s - ", printed, re.M), printed
    assert "\r" not in printed and "━" not in printed
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = convnext_hub.load_pretrained(str(out))
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == [f"digit_{k}" for k in range(DIGIT_CLASSES)] and model.num_classes == DIGIT_CLASSES
    assert cfg["input_size"] == [3, 32, 32]
    expected_source = dict(fine_tuned_from="convnext_atto", checkpoint=None, checkpoint_source=None, pretrained=False)
    assert cfg["source"] == expected_source and "license" not in cfg  # random weights: no source license
    assert convnext_hub.Preprocessor(cfg).params["crop_size"] == (32, 32)
    # The reloaded model classifies the held-out images as well as training reported.
    train, validation = data.split(data.scan(digits), 0.2, seed=0)
    images = np.stack([convnext_hub.preprocess_image(Image.open(p), cfg) for p in validation.paths])
    logits = keras.ops.convert_to_numpy(model(images, training=False))  # eager: no second compile
    accuracy = float(np.mean(logits.argmax(-1) == np.asarray(validation.labels)))
    assert abs(accuracy - metrics[-1]["val_accuracy"]) < 1e-6, (accuracy, metrics[-1])
    same = convnext_hub.create_model("convnext_atto", pretrained=str(out), num_classes=DIGIT_CLASSES)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(same(images[:4], training=False)), logits[:4], atol=1e-5)
    top = convnext_hub.decode_predictions(logits[:2], model, top=2)
    assert [len(row) for row in top] == [2, 2] and all(name.startswith("digit_") for row in top for _, name, _ in row)
    assert top[0][0][1] == f"digit_{logits[0].argmax()}"


# --------------------------------------------------------------------------- resume


class Interrupt(keras.callbacks.Callback):
    """Stops the run after the first batch of `epoch` (a kill mid-epoch, after the previous checkpoint)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            raise KeyboardInterrupt


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    # A small custom geometry, loaded from a saved folder as a pretrained source: tracing the
    # training step of a 12-block model three times would dominate the test's time.
    source = tmp_path / "small"
    small = convnext_hub.ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), num_classes=5, input_shape=(32, 32, 3))
    saved_folder.write(source, small)
    images = write_images(tmp_path / "images", per_class=8, size=(36, 33))
    args = dict(data=images, val_split=0.25, epochs=2, batch_size=4, image_size=32, lr=1e-3, drop_path=0.2, verbose=0)
    whole = fine_tune_folder(source, out=tmp_path / "whole", **args)

    with pytest.raises(KeyboardInterrupt):
        fine_tune_folder(source, out=tmp_path / "parts", callbacks=[Interrupt(1)], **args)
    assert sorted(os.listdir(tmp_path / "parts")) == ["checkpoint.npz", "metrics.json"]  # no half-written model
    with pytest.raises(folder.RunError, match="--resume"):  # the folder now holds a run
        fine_tune_folder(source, out=tmp_path / "parts", **args)
    resumed = fine_tune_folder(source, out=tmp_path / "parts", resume=True, **args)

    for a, b in zip(whole.variables, resumed.variables, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), rtol=0, atol=1e-6, err_msg=a.path
        )
    assert resumed.pretrained_cfg["source"]["fine_tuned_from"] == str(source)
    assert resumed.pretrained_cfg["source"]["pretrained"] is True
    trained = keras.ops.convert_to_numpy(whole.get_layer("stem_0").kernel)
    assert not np.allclose(trained, keras.ops.convert_to_numpy(small.get_layer("stem_0").kernel))  # they trained
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "parts")]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        np.testing.assert_allclose([m[key] for m in metrics[1]], [m[key] for m in metrics[0]], rtol=1e-6, err_msg=key)

    with pytest.raises(folder.RunError, match="differ"):  # a resumed run must be the same run
        fine_tune_folder(source, out=tmp_path / "parts", resume=True, **{**args, "lr": 2e-3})


@pytest.mark.backend_independent
def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "checkpoint.npz"
    folder._atomic_write(str(path), lambda f: f.write(b"first"))

    def dies_half_way(f):
        f.write(b"half of the sec")
        raise KeyboardInterrupt  # a kill while writing

    with pytest.raises(KeyboardInterrupt):
        folder._atomic_write(str(path), dies_half_way)
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["checkpoint.npz"]


# --------------------------------------------------------------------------- the data pipeline


@pytest.mark.backend_independent
def test_folder_of_mixed_images_decodes_to_rgb_and_skips_unreadable_files(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rgb).save(tmp_path / "a" / "rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "a" / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "a" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "b" / "palette.png")
    Image.fromarray(rgb[:20, :20]).save(tmp_path / "b" / "small.webp")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "b" / "notes.txt").write_text("ignored: not an image extension")

    with caplog.at_level("WARNING", logger="convnext_hub.finetune"):
        images = data.scan(tmp_path)
    assert images.class_names == ("a", "b") and len(images) == 5 and images.labels == (0, 0, 0, 1, 1)
    assert [os.path.basename(p) for p, _ in images.skipped] == ["broken.jpg"]
    assert "skipped 1 unreadable" in caplog.text and "broken.jpg" in caplog.text

    cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "crop_pct": 0.875}
    transforms = data.Transforms(cfg, 32)
    batches = list(data.eval_dataset(images, transforms, batch_size=2).as_numpy_iterator())
    assert [x.shape for x, _ in batches] == [(2, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3)]
    evaluated = np.concatenate([x for x, _ in batches])
    for x, path in zip(evaluated, images.paths):  # timm's eval transform of the RGB image, exactly
        np.testing.assert_array_equal(x, preprocessing.preprocess_image(Image.open(path).convert("RGB"), cfg, 32))
    grey = evaluated[images.paths.index(str(tmp_path / "a" / "grey.png"))]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # grey replicated on the three channels

    first = np.concatenate([x for x, _ in data.train_dataset(images, transforms, 2, seed=3, epoch=0)])
    again = np.concatenate([x for x, _ in data.train_dataset(images, transforms, 2, seed=3, epoch=0)])
    other = np.concatenate([x for x, _ in data.train_dataset(images, transforms, 2, seed=3, epoch=1)])
    assert first.shape == (5, 32, 32, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)  # the epoch's order and augmentation depend on (seed, epoch) only
    assert not np.array_equal(first, other)


@pytest.mark.backend_independent
def test_random_resized_crop_boxes_and_stratified_split(tmp_path):
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        left, top, right, bottom = data.random_resized_crop_box(60, 40, rng, scale=(0.3, 1.0))
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
        areas.append((right - left) * (bottom - top) / 2400)
    assert min(areas) > 0.25 and max(areas) > 0.8  # rounding aside, within the scale range, and spread over it

    images = data.scan(write_images(tmp_path, classes=("x", "y", "z"), per_class=10, size=(8, 8)))
    train, validation = data.split(images, 0.2, seed=5)
    assert sorted(train.paths + validation.paths) == sorted(images.paths)
    assert not set(train.paths) & set(validation.paths)
    assert [validation.labels.count(k) for k in range(3)] == [2, 2, 2]
    assert data.split(images, 0.2, seed=5) == (train, validation)


# --------------------------------------------------------------------------- user mistakes


def run_command(capsys, *argv):
    code = command.main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such folder"),
        ("empty", "no class sub-folders"),
        ("no_images", "no readable"),
        ("one_class", "one class only"),
        ("split_too_small", "leaves none for validation"),
        ("val_other_classes", "not the training folder's"),
        ("out_holds_a_run", "already holds a checkpoint of another run; pass --resume"),
        ("out_holds_files", "already holds files"),
        ("resume_without_checkpoint", "holds no checkpoint"),
        ("unknown_source", "--no-pretrained needs an architecture"),
        ("missing_source_file", "no such file or folder"),
        ("bad_number", "--epochs must be >= 1"),
    ],
)
def test_user_mistakes_get_one_error_line_and_write_nothing(tmp_path, capsys, case, expected):
    images = write_images(tmp_path / "images", size=(8, 8))
    out = tmp_path / "out"
    source, extra = "convnext_atto", ["--no-pretrained"]
    data_dir = images
    if case == "missing":
        data_dir = tmp_path / "nowhere"
    elif case == "empty":
        data_dir = tmp_path / "empty"
        data_dir.mkdir()
    elif case == "no_images":
        data_dir = tmp_path / "no_images"
        (data_dir / "a").mkdir(parents=True)
        (data_dir / "b").mkdir()
    elif case == "one_class":
        data_dir = write_images(tmp_path / "one", classes=("only",), size=(8, 8))
    elif case == "split_too_small":
        extra += ["--val-split", "0.1"]  # 3 images per class: 0.3 rounds to none
    elif case == "val_other_classes":
        extra += ["--val", write_images(tmp_path / "val", classes=("cat", "cow"), size=(8, 8))]
    elif case in ("out_holds_a_run", "out_holds_files"):
        out.mkdir()
        (out / ("checkpoint.npz" if case == "out_holds_a_run" else "notes.txt")).write_text("x")
    elif case == "resume_without_checkpoint":
        extra += ["--resume"]
    elif case == "unknown_source":
        source = "convnext_nonexistent"
    elif case == "missing_source_file":
        source, extra = str(tmp_path / "nowhere" / "model.safetensors"), []
    elif case == "bad_number":
        extra += ["--epochs", "0"]
    if case not in ("split_too_small", "val_other_classes"):
        extra += ["--val-split", "0.34"]
    before = sorted(os.listdir(out)) if out.exists() else None

    code, lines = run_command(capsys, source, "--data", data_dir, "--out", out, *extra)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert (sorted(os.listdir(out)) if out.exists() else None) == before  # nothing written


@pytest.mark.backend_independent
def test_python_function_rejects_unknown_arguments(tmp_path):
    with pytest.raises(TypeError, match="learning_rate"):
        fine_tune_folder("convnext_atto", data=tmp_path, out=tmp_path / "out", learning_rate=1e-3)
    with pytest.raises(SystemExit) as exit_info:  # argparse: both validation options
        command.main(["convnext_atto", "--data", "d", "--out", "o", "--val", "v", "--val-split", "0.2"])
    assert exit_info.value.code == 2


@pytest.mark.backend_independent
def test_progress_bar_on_a_terminal_epoch_lines_otherwise(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert folder._verbosity("auto") == 1
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert folder._verbosity("auto") == 2 and folder._verbosity(0) == 0


@pytest.mark.backend_independent
def test_decode_predictions_takes_a_models_own_class_names():
    cfg = {"label_names": ["cat", "dog", "emu"], "name": "convnext_atto.fine_tuned"}
    model = convnext_hub.create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3), pretrained_cfg=cfg)
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    assert [row[0][1] for row in convnext_hub.decode_predictions(logits, model, top=1)] == ["dog", "cat"]
    assert convnext_hub.decode_predictions(logits, cfg, top=3)[0][2][1] == "cat"
    assert convnext_hub.decode_predictions(np.zeros((1, 1000)), "convnext_atto", top=1)[0][0][1]  # names still work
