"""timm's model features on the Keras ConvNeXt, against real timm with every parameter randomized.

`forward_intermediates` / `prune_intermediate_layers` (every combination of their
arguments, eager and compiled), `output_stride` 16 / 8 (logits and every stage
map), `data_format="channels_first"` (the channels-last model's outputs,
transposed, from the same weights file) and `remat=True` (the same gradients).
Bar: max|d| <= 1e-5 * max|reference| (tests/timm_comparison.py). Atto models at
32-64 px keep the module fast.
"""

import copy
import functools
import itertools

import keras
import numpy as np
import pytest
import timm
import torch

from converters import convert
from convnext_hub import ConvNeXt, create_model
from tests.checkpoint_factory import random_timm_model, save_safetensors, state_dict_numpy
from tests.conftest import BACKEND
from tests.timm_comparison import assert_close, assert_matches_timm, random_images

REPRESENTATIVE = ["convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_atto_rms", "convnext_tiny_hnf"]
# Every combination of the flags with both kinds of `indices` (last n; a list with a negative index) on the
# architecture where `norm` changes something (`norm_pre`); a few, None and a list ending at the last stage
# included, on the others.
ARGUMENT_GRID = [
    dict(indices=i, norm=n, stop_early=s, intermediates_only=o)
    for i, n, s, o in itertools.product([2, [0, -2]], (False, True), (False, True), (False, True))
]
SOME_ARGUMENTS = [
    dict(),
    dict(indices=2, norm=True, stop_early=True),
    dict(indices=[0, -1], intermediates_only=True),
    dict(indices=[1], stop_early=True, intermediates_only=False),
]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _nchw(images_nhwc):
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _cached_pair(arch, num_classes, items):
    kwargs = dict(items)
    ref = random_timm_model(arch, num_classes=num_classes, seed=1, **kwargs)
    return ref, convert(state_dict_numpy(ref), arch=arch, **kwargs)


def _pair(arch, num_classes=5, **kwargs):
    """A randomized timm model and its conversion (with `kwargs` for both), made once per module."""
    return _cached_pair(arch, num_classes, tuple(sorted(kwargs.items())))


def _assert_same_structure(actual, expected, what):
    """timm's return structure (a list of maps, or `(final, maps)`) and every map within the bar."""
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), what
        pairs = list(zip(actual, expected))
    else:
        assert isinstance(actual, tuple) and len(actual) == 2 and isinstance(actual[1], list), what
        assert len(actual[1]) == len(expected[1]), what
        pairs = [(actual[0], expected[0]), *zip(actual[1], expected[1])]
    return max(assert_close(_numpy(a), e.numpy(), what) for a, e in pairs)


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_forward_intermediates_matches_timm(arch):
    """Every combination of indices / norm / stop_early / intermediates_only, NCHW against timm's own
    (timm returns NCHW only), and NHWC the same maps transposed."""
    ref, model = _pair(arch)
    images = random_images(45, 37)
    for kwargs in ARGUMENT_GRID if arch == "convnext_tiny_hnf" else SOME_ARGUMENTS:
        with torch.no_grad():
            expected = ref.forward_intermediates(_nchw(images), **kwargs)
        actual = model.forward_intermediates(images, output_fmt="NCHW", **kwargs)
        _assert_same_structure(actual, expected, f"{arch} {kwargs}")
    nhwc = model.forward_intermediates(images, indices=[1, 3], intermediates_only=True)
    nchw = model.forward_intermediates(images, indices=[1, 3], intermediates_only=True, output_fmt="NCHW")
    for a, b in zip(nhwc, nchw):
        np.testing.assert_array_equal(_numpy(a), np.transpose(_numpy(b), (0, 2, 3, 1)))


def _compiled(fn):
    """`fn` compiled by the backend's own tracer: `jax.jit`, `tf.function`, `torch.compile`."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return torch.compile(fn, backend="eager", fullgraph=False)


@pytest.mark.parametrize("arch", ["convnext_atto"])
def test_forward_intermediates_compiled(arch):
    """Inside a traced / compiled function, the same results as timm's."""
    ref, model = _pair(arch)
    images = random_images(37, 45)
    for kwargs in (dict(indices=2, norm=True), dict(indices=[0, 1], stop_early=True, intermediates_only=True)):

        def run(x, kwargs=kwargs):
            return model.forward_intermediates(x, output_fmt="NCHW", **kwargs)

        with torch.no_grad():
            expected = ref.forward_intermediates(_nchw(images), **kwargs)
        actual = _compiled(run)(keras.ops.convert_to_tensor(images))
        if isinstance(actual, (list, tuple)) and not kwargs.get("intermediates_only"):
            actual = (actual[0], list(actual[1]))
        else:
            actual = list(actual)
        _assert_same_structure(actual, expected, f"compiled {arch} {kwargs}")


def test_forward_intermediates_refuses_bad_arguments():
    model = _pair("convnext_atto")[1]
    images = random_images(32, 32)
    with pytest.raises(ValueError, match="Received: indices=5"):
        model.forward_intermediates(images, indices=5)
    with pytest.raises(ValueError, match="Received: indices=\\[4\\]"):
        model.forward_intermediates(images, indices=[4])
    with pytest.raises(ValueError, match="Received: output_fmt='NLC'"):
        model.forward_intermediates(images, output_fmt="NLC")


# (architecture, prunings): `norm_pre` exists on `tiny_hnf` only, so the norm cases run there.
PRUNINGS = [
    ("convnext_tiny_hnf", [dict(indices=1, prune_norm=False, prune_head=True)]),
    ("convnext_tiny_hnf", [dict(indices=[1, 3], prune_norm=True, prune_head=False)]),
    (
        "convnext_atto",
        [dict(indices=[0, 1], prune_norm=False, prune_head=False), dict(indices=2, prune_norm=False, prune_head=True)],
    ),
]


@pytest.mark.parametrize("arch, prunings", PRUNINGS)
def test_prune_intermediate_layers_matches_timm(arch, prunings, tmp_path):
    """After pruning (once or twice in a row): the indices returned, the model's output and
    forward_intermediates equal pruned timm's; the pruning survives get_config() and a .keras file (atto)."""
    base_ref, base = _pair(arch)
    images = random_images(40, 33)
    ref = copy.deepcopy(base_ref)
    model = ConvNeXt.from_config(base.get_config())
    model.set_weights(base.get_weights())
    for prune in prunings:
        assert model.prune_intermediate_layers(**prune) == ref.prune_intermediate_layers(**prune), prune
        with torch.no_grad():
            expected = ref(_nchw(images))
            expected_intermediates = ref.forward_intermediates(_nchw(images), indices=1, norm=True)
        actual = model(images, training=False)
        if expected.ndim == 4:
            actual = keras.ops.transpose(actual, (0, 3, 1, 2))
        assert_close(_numpy(actual), expected.numpy(), f"{arch} pruned {prune}")
        intermediates = model.forward_intermediates(images, indices=1, norm=True, output_fmt="NCHW")
        _assert_same_structure(intermediates, expected_intermediates, f"{arch} pruned {prune} intermediates")
    if arch != "convnext_atto":
        return
    # the pruned model, saved and loaded (the small architecture: a file of a few MB)
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.intermediate_pruning == model.intermediate_pruning
    np.testing.assert_allclose(_numpy(loaded(images)), _numpy(model(images)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "arch, output_stride",
    [("convnext_atto", 16), ("convnext_atto", 8), ("convnextv2_atto", 16), ("convnext_atto_ols", 8)],
)
def test_output_stride_matches_timm(arch, output_stride):
    """timm's `create_model(arch, output_stride=N)`: logits, every stage map and feature_info's reductions."""
    ref, model = _pair(arch, output_stride=output_stride)
    assert [f["reduction"] for f in model.feature_info] == [f["reduction"] for f in ref.feature_info]
    assert model.output_stride == output_stride
    assert_matches_timm(model, ref, random_images(35, 42), f"{arch} output_stride={output_stride}")


def test_output_stride_keeps_weight_shapes_and_refuses_other_values():
    """A stride-32 model's weights load unchanged at 16 and 8; any other value is refused."""
    base = create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3))
    for output_stride in (16, 8):
        dilated = create_model("convnext_atto", num_classes=3, input_shape=(32, 32, 3), output_stride=output_stride)
        assert [w.shape for w in dilated.weights] == [w.shape for w in base.weights]
        dilated.set_weights(base.get_weights())
        assert dilated.get_config()["output_stride"] == output_stride
    for bad in (4, 12, 64, "16", True):
        with pytest.raises(ValueError, match=f"Received: output_stride={bad!r}"):
            create_model("convnext_atto", output_stride=bad)


def test_output_stride_through_load_pretrained(tmp_path):
    """A stride-32 checkpoint file loads unchanged into a stride-16 model (`load_pretrained`), equal to
    timm's stride-16 model holding the same state dict."""
    from convnext_hub import load_pretrained

    ref32 = random_timm_model("convnextv2_atto", num_classes=4, seed=3)
    path = save_safetensors(ref32.state_dict(), tmp_path / "model.safetensors")
    ref16 = timm.create_model("convnextv2_atto", num_classes=4, output_stride=16).eval()
    ref16.load_state_dict(ref32.state_dict(), strict=True)
    model = load_pretrained(str(path), output_stride=16)
    assert model.output_stride == 16
    assert_matches_timm(model, ref16, random_images(33, 40), "load_pretrained output_stride=16")


def _copy_weights(model, source):
    """`source`'s weights into `model`'s layers of the same names (the layers `model` has)."""
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return model


@pytest.mark.parametrize("arch", ["convnextv2_atto"])
def test_channels_first_equals_channels_last(arch, tmp_path):
    """The same weights file loads in a channels-first model; NCHW input gives the channels-last logits,
    and feature maps (features_only, include_top=False, pyramid outputs) transposed. Keras' global
    `image_data_format` is the default."""
    path = str(tmp_path / "w.weights.h5")
    last = create_model(arch, num_classes=4)
    last.save_weights(path)
    images = random_images(37, 45)
    images_first = np.transpose(images, (0, 3, 1, 2))
    first = create_model(arch, num_classes=4, data_format="channels_first")
    first.load_weights(path)
    assert first.input_shape == (None, 3, None, None)
    assert_close(_numpy(first(images_first)), _numpy(last(images)), f"{arch} logits")

    keras.config.set_image_data_format("channels_first")
    try:
        maps_first = _copy_weights(create_model(arch, features_only=True), last)
        no_top_first = _copy_weights(create_model(arch, include_top=False), last)
    finally:
        keras.config.set_image_data_format("channels_last")
    assert maps_first.data_format == no_top_first.data_format == "channels_first"
    maps_last = _copy_weights(create_model(arch, features_only=True), last)
    no_top_last = _copy_weights(create_model(arch, include_top=False), last)
    for i, (a, b) in enumerate(zip(maps_first(images_first), maps_last(images))):
        assert_close(_numpy(a), np.transpose(_numpy(b), (0, 3, 1, 2)), f"{arch} stage {i}")
    expected = np.transpose(_numpy(no_top_last(images)), (0, 3, 1, 2))
    assert_close(_numpy(no_top_first(images_first)), expected, f"{arch} include_top=False")
    p3 = keras.Model(maps_first.inputs, maps_first.pyramid_outputs["P3"])(images_first)
    assert tuple(p3.shape) == (2, 80, 4, 5)  # 37x45 at stride 8


def test_channels_first_refuses_channels_last_shape():
    with pytest.raises(ValueError, match=r"\(3, height, width\)"):
        create_model("convnext_atto", data_format="channels_first", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="Received: data_format='NCHW'"):
        create_model("convnext_atto", data_format="NCHW")


def _gradients(model, images, labels):
    """Gradients of a cross-entropy loss w.r.t. every trainable weight, as numpy, on this backend."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(trainable):
            logits, _ = model.stateless_call(trainable, non_trainable, images, training=True)
            return loss_fn(labels, logits)

        return [np.asarray(g) for g in jax.jit(jax.grad(loss))(trainable)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    model.zero_grad()
    loss = loss_fn(labels, model(images, training=True))
    loss.backward()
    return [v.value.grad.detach().cpu().numpy() for v in model.trainable_variables]


# Small geometries (V2 with GRN, V1 with layer scale): rematerialisation does not depend on the size, and
# gradients of an eager JAX model take time per layer.
REMAT_GEOMETRIES = {
    "v2": dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), use_grn=True, layer_scale_init_value=None),
    "v1": dict(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), layer_scale_init_value=0.5),
}


@pytest.mark.parametrize("geometry", ["v2", "v1"])
def test_remat_gradients_equal(geometry, monkeypatch):
    """`remat=True` rematerialises each block (each one a call under `keras.remat`, counted here) and gives
    the same gradients as the plain model."""
    plain = ConvNeXt(num_classes=3, input_shape=(32, 32, 3), **REMAT_GEOMETRIES[geometry])
    remat = ConvNeXt(num_classes=3, input_shape=(32, 32, 3), remat=True, **REMAT_GEOMETRIES[geometry])
    remat.set_weights([np.random.RandomState(i).standard_normal(w.shape) * 0.3 for i, w in enumerate(plain.weights)])
    plain.set_weights(remat.get_weights())
    images, labels = random_images(32, 32, batch=2), np.array([0, 2])
    expected = _gradients(plain, images, labels)
    wrapped = []
    keras_remat = keras.remat

    def counting_remat(f):
        wrapped.append(f)
        return keras_remat(f)

    monkeypatch.setattr(keras, "remat", counting_remat)
    actual = _gradients(remat, images, labels)
    assert len(wrapped) == sum(remat.depths)
    assert len(actual) == len(expected) == len(plain.trainable_variables)
    worst = 0.0
    for variable, a, e in zip(plain.trainable_variables, actual, expected):
        scale = max(float(np.abs(e).max()), 1e-12)
        worst = max(worst, float(np.abs(a - e).max()) / scale)
        assert np.abs(a - e).max() <= 1e-5 * scale, variable.path
    assert remat.get_config()["remat"] is True


def test_new_arguments_survive_saving(tmp_path):
    """output_stride, data_format and remat are constructor arguments kept by get_config() and .keras files."""
    model = create_model("convnext_atto", num_classes=2, output_stride=16, data_format="channels_first", remat=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for key in ("output_stride", "data_format", "remat", "intermediate_pruning"):
        assert loaded.get_config()[key] == model.get_config()[key], key
    images = np.transpose(random_images(32, 32), (0, 3, 1, 2))
    np.testing.assert_array_equal(_numpy(loaded(images)), _numpy(model(images)))


def test_keras_hub_backbone_output_stride_and_channels_first():
    """The keras-hub backbone at output_stride=16 equals timm's stage maps; its channels-first twin and
    the classifier on it give the channels-last outputs (transposed maps) from the same weights."""
    pytest.importorskip("keras_hub")
    from convnext_hub.keras_hub import ConvNeXtBackbone, ConvNeXtImageClassifier
    from convnext_hub.keras_hub.convnext_from_timm import from_model

    ref, model = _pair("convnext_atto", output_stride=16)
    backbone = from_model(model, task="backbone")
    assert backbone.output_stride == 16 and [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 16]
    images = random_images(35, 42)
    with torch.no_grad():
        expected = ref.forward_intermediates(_nchw(images), intermediates_only=True)
    pyramid = keras.Model(backbone.inputs, list(backbone.stage_maps))(images)
    assert len(pyramid) == len(expected) == 4
    for a, e in zip(pyramid, expected):
        assert_close(_numpy(a), e.permute(0, 2, 3, 1).numpy(), "keras-hub backbone output_stride=16")
    # keras-hub's keys name strides: the two stages at stride 16 give one key, the last stage's map.
    assert list(backbone.pyramid_outputs) == ["P2", "P3", "P4"]
    assert backbone.pyramid_outputs["P4"] is backbone.stage_maps[3]

    config = {**backbone.get_config(), "data_format": "channels_first", "image_shape": [3, None, None]}
    first = ConvNeXtBackbone.from_config(config)
    first.set_weights(backbone.get_weights())
    images_first = np.transpose(images, (0, 3, 1, 2))
    pyramid_first = keras.Model(first.inputs, list(first.stage_maps))(images_first)
    assert len(pyramid_first) == 4
    for a, b in zip(pyramid_first, pyramid):
        assert_close(_numpy(a), np.transpose(_numpy(b), (0, 3, 1, 2)), "keras-hub channels_first map")
    last_classifier = ConvNeXtImageClassifier(backbone, 5)
    first_classifier = ConvNeXtImageClassifier(first, 5)
    first_classifier.set_weights(last_classifier.get_weights())
    assert_close(
        _numpy(first_classifier(images_first)), _numpy(last_classifier(images)), "keras-hub channels_first logits"
    )
