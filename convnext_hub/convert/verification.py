"""The one comparison of a Keras ConvNeXt with timm: every stage map and the logits, one relative bar.

Used by `timm_to_keras --verify`, `publish`'s model card and the tests. An
honest float32 port differs from timm by about 1e-6 x max|timm| on CPU; a
wrong formula (GRN, a transposed kernel) by about 0.1-1 x max|timm|, so the
bar `TOLERANCE` separates right from wrong by orders of magnitude.

Needs torch and timm (imported on first use: optional heavy dependencies).
"""

from dataclasses import dataclass, field

import numpy as np

TOLERANCE = 1e-5
STAGE_NAMES = ("stage 0", "stage 1", "stage 2", "stage 3")


@dataclass
class Comparison:
    """max|Δ| of one output against timm's, and the bar it is held to."""

    name: str
    max_abs_diff: float
    max_abs_ref: float
    tolerance: float = TOLERANCE

    @property
    def relative(self):
        return self.max_abs_diff / max(self.max_abs_ref, 1e-30)

    @property
    def passed(self):
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance * self.max_abs_ref

    def line(self):
        return f"{self.name:<8} max|d| = {self.relative:.2e} x max|timm|  {'PASS' if self.passed else 'FAIL'}"


@dataclass
class Report:
    """The comparisons of one model on one input; `skipped` says what was not compared and why."""

    comparisons: list = field(default_factory=list)
    skipped: str | None = None
    input_shape: tuple = ()

    @property
    def passed(self):
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def worst(self):
        return max(self.comparisons, key=lambda c: c.relative)

    def lines(self):
        lines = [c.line() for c in self.comparisons]
        if self.skipped:
            lines.append(f"logits   not compared: {self.skipped}")
        lines.append(
            f"{'PASS' if self.passed else 'FAIL'}: worst {self.worst.name} at {self.worst.relative:.2e} "
            f"x max|timm| (bar {TOLERANCE:g})"
            if self.comparisons
            else "FAIL: nothing compared"
        )
        return lines

    def as_dict(self):
        return {
            "tolerance": TOLERANCE,
            "input_shape": list(self.input_shape),
            "outputs": {
                c.name: {"max_abs_diff": c.max_abs_diff, "max_abs_ref": c.max_abs_ref} for c in self.comparisons
            },
            "logits_not_compared": self.skipped,
            "passed": self.passed,
        }


def timm_kwargs(model):
    """`timm.models.convnext.ConvNeXt` arguments for the geometry of a Keras ConvNeXt.

    timm's default norm (`norm_layer=None`) is LayerNorm; a named norm layer
    is allowed only with `conv_mlp`, as in timm's own rms architectures.
    """
    return dict(
        depths=tuple(model.depths),
        dims=tuple(model.dims),
        use_grn=model.use_grn,
        ls_init_value=model.layer_scale_init_value,
        stem_type=model.stem_type,
        norm_layer=None if model.norm == "layernorm" else model.norm,
        norm_eps=model.norm_eps,
        conv_mlp=model.conv_mlp,
        head_norm_first=model.head_norm_first,
        head_hidden_size=model.head_hidden_size,
        kernel_sizes=model.kernel_size,
    )


def timm_reference(model, timm_state_dict, num_classes):
    """timm's model for `model`'s geometry with `timm_state_dict` loaded, and whether its head was loaded.

    Named architectures come from `timm.create_model`, custom geometries from
    timm's `ConvNeXt` class. Keys the state dict lacks (a headless checkpoint)
    leave the head unloaded; any other mismatch raises.
    """
    import timm
    import torch

    if model.architecture:
        reference = timm.create_model(model.architecture, pretrained=False, num_classes=num_classes)
    else:
        from timm.models.convnext import ConvNeXt

        reference = ConvNeXt(num_classes=num_classes, **timm_kwargs(model))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v, np.float32))) for k, v in timm_state_dict.items()}
    missing, unexpected = reference.load_state_dict(tensors, strict=False)
    if unexpected or any(not key.startswith("head.") for key in missing):
        raise ValueError(
            f"timm's {model.architecture or 'ConvNeXt'} does not take these weights: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return reference.eval(), not missing


def timm_outputs(reference, images_nhwc):
    """timm's four stage maps (NHWC) and head output for NHWC float32 `images_nhwc`."""
    import torch

    with torch.no_grad():
        final, stages = reference.forward_intermediates(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
        head = reference.forward_head(final)
    return [s.permute(0, 2, 3, 1).numpy() for s in stages], head.numpy()


def compare(model, reference, images_nhwc, *, head_loaded=True):
    """A `Report` of `model`'s stage maps and logits against timm module `reference` on `images_nhwc`.

    Logits are compared when `model` ends in timm's head with the same
    classes and the reference's head holds the checkpoint's weights.
    """
    import keras

    images_nhwc = np.asarray(images_nhwc, np.float32)
    expected_stages, expected_head = timm_outputs(reference, images_nhwc)
    actual = [keras.ops.convert_to_numpy(y) for y in model.stage_and_output_model()(images_nhwc, training=False)]
    report = Report(input_shape=images_nhwc.shape)
    for name, a, e in zip(STAGE_NAMES, actual, expected_stages):
        report.comparisons.append(compare_output(name, a, e))
    skipped = why_logits_not_compared(model, reference, head_loaded)
    if skipped is None:
        report.comparisons.append(compare_output("logits", actual[4], expected_head))
    report.skipped = skipped
    return report


def why_logits_not_compared(model, reference, head_loaded):
    """Why `model`'s logits cannot be held against `reference`'s, or None when they can."""
    if model.features_only or not model.include_top or model.classifier_activation is not None:
        return "the model does not end in timm's head (features_only, include_top=False or an activation)"
    if not head_loaded:
        return "the checkpoint has no classifier (a headless checkpoint): the stages were compared"
    if model.num_classes != reference.num_classes:
        return (
            f"--num-classes {model.num_classes} differs from the checkpoint's {reference.num_classes}: "
            "the new classifier is freshly initialised, so only the stages were compared"
        )
    return None


def compare_output(name, actual, expected):
    """The `Comparison` of one output with timm's (same shape required)."""
    if actual.shape != expected.shape:
        raise ValueError(f"{name}: Keras output shape {actual.shape} differs from timm's {expected.shape}")
    return Comparison(name, float(np.abs(actual - expected).max()), float(np.abs(expected).max()))


def random_images(height=96, width=73, batch=2, seed=0):
    """A fixed NHWC float32 batch: a non-square, odd size catches padding and layout bugs."""
    return np.random.RandomState(seed).standard_normal((batch, height, width, 3)).astype("float32")
