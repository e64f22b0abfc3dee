"""Image folders (one sub-folder per class) as streaming `tf.data` pipelines with timm's transforms.

Only file names and labels live in memory: every epoch's pipeline decodes the
files in parallel with PIL (JPEG, PNG and WebP alike; `tf.io` reads no WebP),
converts grey, RGBA and palette images to RGB as timm's datasets do, applies
the transform and batches, with prefetch. TensorFlow is imported only when a
pipeline is built, so `import convnext_hub` stays light; Keras accepts a
`tf.data.Dataset` in `fit` on every backend.

Training transform: timm's `RandomResizedCrop` (scale `min_scale`..1, ratio
3/4..4/3, the checkpoint's interpolation) then a horizontal flip, then, when asked
for, the `augment` module's RandAugment, random erasing and mixup / CutMix. The random
numbers of an image depend only on `(seed, epoch, index in the epoch)`, and
the order of an epoch only on `(seed, epoch)`, so that a resumed run sees the
same batches as an uninterrupted one. Validation uses timm's eval transform
(`convnext_hub.preprocessing`) at the training image size.
"""

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import preprocessing
from .augment import smoothed_one_hot

logger = logging.getLogger("convnext_hub.finetune")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)


class DataError(ValueError):
    """An image folder that cannot be trained on (empty, one class, a bad split): a user mistake."""


@dataclass(frozen=True)
class ImageFolder:
    """The readable images of a class-per-folder tree: paths, integer labels, class names, skipped files."""

    root: str
    paths: tuple
    labels: tuple
    class_names: tuple
    skipped: tuple  # (path, reason) of files that could not be read

    def __len__(self):
        return len(self.paths)

    def subset(self, indices):
        """The images at `indices` (same classes, no skipped files listed)."""
        paths = tuple(self.paths[i] for i in indices)
        return ImageFolder(self.root, paths, tuple(self.labels[i] for i in indices), self.class_names, ())


def scan(root, class_names=None):
    """Lists the images of `root`, one sub-folder per class (sorted by name), checking each file's header.

    Args:
        root: the folder.
        class_names: the classes to expect (a validation folder must have the training folder's);
            None takes the sub-folders found.

    Returns:
        An `ImageFolder`. Files PIL cannot identify are skipped and logged with a count.

    Raises:
        DataError: `root` is missing, has no class sub-folder, or (with `class_names`) other classes.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class sub-folders (expected one sub-folder of images per class)")
    if class_names is not None and found != list(class_names):
        raise DataError(f"{root}: its classes {found} are not the training folder's {list(class_names)}")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(found):
        for directory, subdirs, files in os.walk(os.path.join(root, name)):
            subdirs.sort()
            for file in sorted(files):
                if not file.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(directory, file)
                reason = _unreadable(path)
                if reason:
                    skipped.append((path, reason))
                else:
                    paths.append(path)
                    labels.append(label)
    if skipped:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        logger.warning("%s: skipped %d unreadable image file(s):\n%s", root, len(skipped), listing)
    return ImageFolder(root, tuple(paths), tuple(labels), tuple(found), tuple(skipped))


def _unreadable(path):
    """Why PIL cannot read `path` (its header and structure), or None."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # PIL raises many kinds for corrupt files
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


def check_trainable(folder, role="training"):
    """Raises DataError unless `folder` has images of at least two classes."""
    if not len(folder):
        raise DataError(f"{folder.root}: no readable {'/'.join(IMAGE_EXTENSIONS)} images for {role}")
    present = sorted(set(folder.labels))
    if role == "training" and len(present) < 2:
        raise DataError(
            f"{folder.root}: images of one class only ({folder.class_names[present[0]]!r}); a classifier needs two"
        )


def split(folder, fraction, seed):
    """(train, validation) folders: a stratified `fraction` of each class held out, chosen by `seed`.

    Raises:
        DataError: `fraction` outside (0, 1) or a class too small to give both parts an image.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-split must be between 0 and 1 (exclusive). Received: {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(folder.labels)
    train, val = [], []
    for label in range(len(folder.class_names)):
        members = np.flatnonzero(labels == label)
        if not len(members):
            continue
        members = members[rng.permutation(len(members))]
        held = int(round(fraction * len(members)))
        if held == 0 or held == len(members):
            raise DataError(
                f"{folder.root}: class {folder.class_names[label]!r} has {len(members)} image(s); "
                f"a validation split of {fraction} leaves none for "
                f"{'validation' if held == 0 else 'training'} (add images or pass --val DIR)"
            )
        val.extend(members[:held].tolist())
        train.extend(members[held:].tolist())
    return folder.subset(sorted(train)), folder.subset(sorted(val))


def load_rgb(path):
    """The image at `path` as an RGB PIL image (grey replicated, alpha and palettes resolved).

    Raises:
        DataError: naming the file, for one whose header `scan` accepted but whose pixels
            do not decode (a truncated file): the pipeline stops rather than train on a blank.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
            return image.convert("RGB")
    except OSError as e:
        raise DataError(f"{path}: cannot decode the image ({e})") from e


def random_resized_crop_box(width, height, rng, scale=(0.08, 1.0), ratio=RATIO_RANGE):
    """timm / torchvision `RandomResizedCrop.get_params`: a (left, top, right, bottom) box."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    # Fallback to a central crop of the ratio-clamped whole image.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class Transforms:
    """timm's training and evaluation transforms of one checkpoint cfg at one image size, on PIL images."""

    def __init__(self, cfg, image_size, min_scale=0.08, hflip=0.5):
        self.params = preprocessing.eval_transform_params(cfg, input_size=image_size)
        self.size = self.params["crop_size"]
        self.resample = preprocessing._PIL_RESAMPLE[self.params["interpolation"]]
        self.mean = np.asarray(self.params["mean"], np.float32)
        self.std = np.asarray(self.params["std"], np.float32)
        self.min_scale = float(min_scale)
        self.hflip = float(hflip)

    def train(self, path, seed, normalize=True):
        """Random resized crop, flip, normalize: an (H, W, 3) float32 array; randomness from `seed` only.

        `normalize=False` leaves the 0..255 pixels, for RandAugment to work on first.
        """
        rng = np.random.default_rng(seed)
        image = load_rgb(path)
        box = random_resized_crop_box(*image.size, rng, scale=(self.min_scale, 1.0))
        image = image.resize(self.size[::-1], self.resample, box=box)
        x = np.asarray(image)
        if rng.uniform() < self.hflip:
            x = x[:, ::-1]
        if not normalize:
            return x.astype(np.float32)
        return preprocessing._normalize(x, self.mean, self.std)

    def eval(self, path):
        """timm's eval transform (resize, center crop, normalize) of the image at `path`."""
        return preprocessing._preprocess(load_rgb(path), self.params)


def epoch_order(num_images, seed, epoch):
    """The order of the training images in `epoch`: a permutation that depends on `(seed, epoch)` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def train_dataset(folder, transforms, batch_size, seed, epoch, augment=None):
    """`epoch`'s training batches `(images, labels)` of `folder`, decoded in parallel, prefetched.

    With an `augment.Augment`, its RandAugment runs on each 0..255 image before the
    normalisation and its erasing / mixing on each batch after it; the labels are soft
    one-hot targets when it mixes. Those steps run in order (their random numbers come
    from seed generators that advance per call) so that the epoch depends on
    `(seed, epoch)` only.
    """
    order = epoch_order(len(folder), seed, epoch)
    paths = [folder.paths[i] for i in order]
    labels = np.asarray(folder.labels, np.int32)[order]
    # One seed per image: (seed, epoch, position) through numpy's SeedSequence.
    image_seeds = np.random.SeedSequence([seed, epoch]).generate_state(len(paths), dtype=np.uint32)
    image_map = augment.image_map(seed, epoch) if augment is not None else None

    def load(path, image_seed):
        return transforms.train(path.decode(), int(image_seed), normalize=image_map is None)

    dataset = _decoded(paths, labels, load, transforms.size, extra=image_seeds.astype(np.int64))
    if image_map is not None:
        mean, std = transforms.mean, transforms.std
        dataset = dataset.map(lambda image, label: ((image_map(image) / np.float32(255) - mean) / std, label))
    dataset = dataset.batch(batch_size)
    batch_map = augment.batch_map(len(folder.class_names), seed, epoch) if augment is not None else None
    if batch_map is not None:
        dataset = dataset.enumerate().map(batch_map)
    return _prefetched(dataset)


def eval_dataset(folder, transforms, batch_size, augment=None):
    """The evaluation batches `(images, labels)` of `folder`, in folder order.

    The labels are the training targets' kind: integers, or smoothed one-hot vectors
    when `augment` mixes batches (so that one loss and one accuracy serve both).
    """

    def load(path):
        return transforms.eval(path.decode())

    labels = np.asarray(folder.labels, np.int32)
    dataset = _decoded(list(folder.paths), labels, load, transforms.size).batch(batch_size)
    if augment is not None and augment.mixes:
        classes, smoothing = len(folder.class_names), augment.label_smoothing
        dataset = dataset.map(lambda images, y: (images, smoothed_one_hot(y, classes, smoothing)))
    return _prefetched(dataset)


def _decoded(paths, labels, load, size, extra=None):
    """`(image, label)` elements: `load(path, *extra)` run in parallel, in order."""
    import tensorflow as tf

    columns = (paths, labels) if extra is None else (paths, labels, extra)
    dataset = tf.data.Dataset.from_tensor_slices(columns)

    def decode(path, label, *rest):
        image = tf.numpy_function(lambda *args: load(*args).astype(np.float32), [path, *rest], tf.float32)
        image.set_shape((*size, 3))
        return image, label

    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _prefetched(dataset):
    import tensorflow as tf

    return dataset.prefetch(tf.data.AUTOTUNE)
