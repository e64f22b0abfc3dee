"""timm's training augmentations after the crop and flip, on Keras' own preprocessing layers in `tf.data`.

- RandAugment (`keras.layers.RandAugment`, two operations per image), on the 0..255
  pixels as timm applies it before `ToTensor`. The layer draws its operations once
  per call, so it runs on each image, not on a batch, to give every image its own.
- Random erasing (`keras.layers.RandomErasing`) on the normalised batch, as timm's
  `RandomErasing` follows `Normalize`; the erased box is filled with normal noise
  (timm's `--remode pixel`), which Keras' layer truncates to +-1.
- Mixup / CutMix (`keras.layers.MixUp`, `keras.layers.CutMix`) on each batch, with
  timm's rule for both: label smoothing on the one-hot targets (`1 - s + s / n` and
  `s / n`), then one of the two per batch, with probability 1/2 each when both are on.
  Keras draws a mixing weight per image and pairs the images by a random permutation,
  as timm's `mixup_mode="elem"`, not its default of one weight per batch paired with
  the reversed batch.

The Keras layers take their random numbers from seed generators whose state advances
with each call, so a pipeline built with the same seed and run in order gives the same
images: the layers are made per epoch from `(seed, epoch)` and their `map`s run in
order, which keeps a resumed run equal to an uninterrupted one.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["Augment"]


@dataclass(frozen=True)
class Augment:
    """The augmentations after the crop and flip; every field at 0 turns its step off.

    Attributes:
        rand_augment: Keras' RandAugment `factor` (strength in [0, 1]; its rotations
            reach `factor * 360` degrees, its shifts `factor` of the side); 0 for none.
        erase_prob: probability of erasing a box of each image (timm's `--reprob`).
        mixup: alpha of the Beta distribution of mixup's weights (timm's `--mixup`); 0 for none.
        cutmix: alpha of CutMix's Beta distribution, in (0, 1] (Keras' bound; timm's
            `--cutmix`); 0 for none.
        label_smoothing: smoothing of the one-hot targets (used when mixing is on; the
            loss smooths integer labels otherwise).
    """

    rand_augment: float = 0.0
    erase_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    @property
    def active(self):
        """Whether any step is on (the pipeline then holds seed generators that advance per call)."""
        return bool(self.rand_augment or self.erase_prob or self.mixes)

    @property
    def mixes(self):
        """Whether batches are mixed, and labels become soft one-hot targets."""
        return self.mixup > 0 or self.cutmix > 0

    def problems(self):
        """One message per out-of-range field, naming the command-line flag."""
        found = []
        if not 0.0 <= self.rand_augment <= 1.0:
            found.append(f"--rand-augment must be in [0, 1] (got {self.rand_augment})")
        if not 0.0 <= self.erase_prob <= 1.0:
            found.append(f"--reprob must be in [0, 1] (got {self.erase_prob})")
        if self.mixup < 0:
            found.append(f"--mixup must be >= 0 (got {self.mixup})")
        if not 0.0 <= self.cutmix <= 1.0:
            found.append(f"--cutmix must be in [0, 1] (got {self.cutmix})")
        return found

    def image_map(self, seed, epoch):
        """A function for `Dataset.map` on one (H, W, 3) 0..255 image, or None when there is nothing to do."""
        if not self.rand_augment:
            return None
        import keras

        layer = keras.layers.RandAugment(
            value_range=(0, 255), num_ops=2, factor=self.rand_augment, seed=_seed(seed, epoch, 0)
        )
        return layer

    def batch_map(self, num_classes, seed, epoch):
        """A function for `Dataset.map` on a normalised batch `(images, integer labels)`, or None."""
        if not (self.erase_prob or self.mixes):
            return None
        import keras
        import tensorflow as tf

        erase = None
        if self.erase_prob:
            erase = keras.layers.RandomErasing(
                factor=(self.erase_prob, self.erase_prob), value_range=(-1.0, 1.0), seed=_seed(seed, epoch, 1)
            )
        mixup = keras.layers.MixUp(alpha=self.mixup, seed=_seed(seed, epoch, 2)) if self.mixup else None
        cutmix = (
            keras.layers.CutMix(factor=(self.cutmix, self.cutmix), seed=_seed(seed, epoch, 3)) if self.cutmix else None
        )
        switch_seed = _seed(seed, epoch, 4)

        def apply(index, batch):
            images, labels = batch
            if erase is not None:
                images = erase(images)
            if not self.mixes:
                return images, labels
            targets = smoothed_one_hot(labels, num_classes, self.label_smoothing)

            def mix(layer):
                mixed = layer({"images": images, "labels": targets})
                return mixed["images"], mixed["labels"]

            if mixup is not None and cutmix is not None:
                draw = tf.random.stateless_uniform([], seed=tf.stack([tf.constant(switch_seed, tf.int64), index]))
                return tf.cond(draw < 0.5, lambda: mix(cutmix), lambda: mix(mixup))
            return mix(mixup or cutmix)

        return apply


def smoothed_one_hot(labels, num_classes, smoothing):
    """timm's targets: `1 - smoothing + smoothing / n` for the class, `smoothing / n` elsewhere (float32)."""
    import tensorflow as tf

    off = smoothing / num_classes
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, on_value=1.0 - smoothing + off, off_value=off)


def _seed(seed, epoch, stream):
    """A 31-bit seed for one layer of one epoch (Keras seeds are Python ints)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] % (2**31))
