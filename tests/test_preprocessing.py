"""convnext_hub.preprocessing against timm's own eval transform, on real photos.

Reference: ``timm.data.create_transform(**resolve_data_config(args,
pretrained_cfg=cfg), is_training=False)`` applied to a PIL image, CHW output
transposed to HWC. Photos: scikit-image's astronaut (512x512), chelsea
(300x451), coffee (400x600), rocket (427x640) and a portrait, odd-sized crop
of coffee (597x399, which hits torchvision's round-half-to-even crop offset).
|Δ| is in normalized units, i.e. after (x / 255 - mean) / std.

Measured with timm 1.0.31, torchvision 0.29.1, Pillow 13.0, Keras 3.15 (the
Keras figures are the same on the TensorFlow, JAX and torch backends):

PIL path (preprocess_image / preprocess_batch / Preprocessor.__call__):
    max|Δ| = 0.0 (bit-identical) for every config below, including border
    mode and crop_pct > 1 (padding), grey and RGBA inputs. Same PIL resize,
    same integer crop, same float32 op order as ToTensor + Normalize.

Keras layer path (Preprocessor.keras_layer, Resizing with antialias=True),
worst photo per config:
    config                              max|Δ|   mean|Δ|
    bicubic 224, crop_pct 0.875          0.262    0.0053
    bicubic 288, crop_pct 0.95           0.319    0.0053
    bicubic 224, crop_pct 1.0            0.265    0.0052
    squash bicubic 384, 1.0, CLIP stats  0.199    0.0045
    squash bicubic 224, 0.875            0.265    0.0053
    bicubic 224x320 (non-square)         0.323    0.0052
    bilinear 224, crop_pct 0.9           0.0174   0.0051
    lanczos 224 (not on torch backend)   0.472    0.0055
    nearest 224                          0.0      0.0
The Keras resize equals PIL's resampling done in float (our float-array PIL
path, 32-bit "F" planes) to < 2e-4 (asserted: 1e-3). The whole gap to timm is
PIL's 8-bit arithmetic: each of its two separable passes rounds to an integer
and clips to 0..255. With a non-negative kernel (bilinear) that is at most
one grey level, 1 / (255 * 0.224) = 0.0175; with bicubic/lanczos the clipped
overshoot at hard edges reaches ~18 (bicubic) / ~27 (lanczos) grey levels
on a few pixels; the 99.9th percentile of |Δ| is below 0.092 (bicubic) and
0.155 (lanczos). Clipping the Keras output to 0..255 would cut the bicubic
max|Δ| 2-4x but cannot undo the clipping between PIL's passes.
"""

import functools

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image
from timm.data import create_transform, resolve_data_config

from convnext_hub import preprocessing
from convnext_hub.preprocessing import (
    Preprocessor,
    eval_transform_params,
    preprocess_batch,
    preprocess_image,
    preprocess_input,
    resized_shape,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# id -> (pretrained cfg, input_size override passed to both sides)
CONFIGS = {
    "bicubic_224_crop0.875": ({"input_size": (3, 224, 224), "crop_pct": 0.875}, None),
    "bicubic_288_crop0.95_test_size": (
        {
            "input_size": (3, 224, 224),
            "test_input_size": (3, 288, 288),
            "crop_pct": 0.95,
            "interpolation": "bicubic",
        },
        (3, 288, 288),
    ),
    "bicubic_224_crop1.0": ({"input_size": (3, 224, 224), "crop_pct": 1.0}, None),
    "squash_384_crop1.0_clip_stats": (
        {
            "input_size": (3, 384, 384),
            "crop_pct": 1.0,
            "crop_mode": "squash",
            "interpolation": "bicubic",
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
        },
        None,
    ),
    "squash_224_crop0.875": (
        {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "squash"},
        None,
    ),
    "nonsquare_224x320": ({"input_size": (3, 224, 320), "crop_pct": 0.875}, None),
    "bilinear_224_crop0.9": (
        {"input_size": (3, 224, 224), "crop_pct": 0.9, "interpolation": "bilinear"},
        None,
    ),
    "lanczos_224": ({"input_size": (3, 224, 224), "interpolation": "lanczos"}, None),
    "nearest_224": ({"input_size": (3, 224, 224), "interpolation": "nearest"}, None),
    # Geometries that pad; the PIL path only.
    "border_224_crop1.0": (
        {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "border"},
        None,
    ),
    "center_224_crop1.15": ({"input_size": (3, 224, 224), "crop_pct": 1.15}, None),
}
PADDING_CONFIGS = ("border_224_crop1.0", "center_224_crop1.15")
KERAS_CONFIGS = [c for c in CONFIGS if c not in PADDING_CONFIGS]

# Keras path vs timm, (max|Δ|, mean|Δ|) bounds per interpolation; see the
# module docstring for the measured values and why they differ.
KERAS_BOUNDS = {
    "nearest": (1e-6, 1e-7),
    "bilinear": (1 / (255 * 0.224) + 1e-4, 0.006),
    "bicubic": (0.35, 0.006),
    "lanczos": (0.5, 0.006),
}
PIL_EXACT = 1e-6  # float32 round-off allowance; measured 0.0


@functools.lru_cache(maxsize=None)
def _photos():
    photos = {n: getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")}
    photos["coffee_portrait_odd"] = np.ascontiguousarray(skimage.data.coffee().transpose(1, 0, 2)[:597, :399])
    return photos


def _timm_eval(cfg, input_size, image):
    """timm's eval transform of a PIL image, as an HWC numpy array."""
    args = {"input_size": input_size} if input_size else {}
    transform = create_transform(**resolve_data_config(args, pretrained_cfg=cfg), is_training=False)
    return transform(image).numpy().transpose(1, 2, 0)


def _timm_resize_step(cfg, image):
    """The first (resize) step of timm's eval transform."""
    transform = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)
    return transform.transforms[0](image)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_params_match_timm_resolve_data_config(config):
    cfg, input_size = CONFIGS[config]
    args = {"input_size": input_size} if input_size else {}
    expected = resolve_data_config(args, pretrained_cfg=cfg)
    params = eval_transform_params(cfg, input_size)
    assert params["crop_size"] == tuple(expected["input_size"][1:])
    for key in ("crop_pct", "crop_mode", "interpolation"):
        assert params[key] == expected[key]
    np.testing.assert_array_equal(params["mean"], expected["mean"])
    np.testing.assert_array_equal(params["std"], expected["std"])


def test_params_defaults_and_overrides():
    params = eval_transform_params({})
    assert params["crop_size"] == (224, 224) and params["resize_size"] == (256, 256)
    assert (params["crop_mode"], params["interpolation"]) == ("center", "bicubic")
    for size in (288, (288, 288), (3, 288, 288)):
        assert eval_transform_params({"input_size": (3, 224, 224)}, size)["crop_size"] == (288, 288)
    assert Preprocessor({"crop_pct": 0.875}, crop_pct=1.0).params["resize_size"] == (224, 224)
    with pytest.raises(ValueError):
        eval_transform_params({"crop_mode": "random"})


@pytest.mark.parametrize(
    "cfg",
    [
        {"input_size": (3, 224, 224), "crop_pct": 0.95},
        {"input_size": (3, 224, 320), "crop_pct": 0.875},
        {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "border"},
        {"input_size": (3, 256, 192), "crop_pct": 0.9, "crop_mode": "border"},
        {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "squash"},
    ],
    ids=["center", "center_nonsquare", "border", "border_nonsquare", "squash"],
)
def test_resized_shape_matches_timm(cfg):
    rng = np.random.default_rng(0)
    sizes = [(h, w) for h, w in rng.integers(90, 900, size=(40, 2))] + [(300, 300), (301, 300)]
    params = eval_transform_params(cfg)
    for height, width in sizes:
        image = Image.new("RGB", (int(width), int(height)))
        expected = _timm_resize_step(cfg, image).size[::-1]
        assert resized_shape(params, height, width) == expected, (height, width)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pil_path_matches_timm(config):
    cfg, input_size = CONFIGS[config]
    crop_size = eval_transform_params(cfg, input_size)["crop_size"]
    for name, photo in _photos().items():
        expected = _timm_eval(cfg, input_size, Image.fromarray(photo))
        for image in (photo, Image.fromarray(photo)):
            ours = preprocess_image(image, cfg, input_size)
            assert ours.shape == (*crop_size, 3) and ours.dtype == np.float32
            assert np.abs(ours - expected).max() <= PIL_EXACT, name


@pytest.mark.parametrize("config", ["bicubic_224_crop0.875", "border_224_crop1.0"])
def test_grey_and_rgba_are_converted_like_timm(config):
    """timm's datasets load images with ``.convert("RGB")`` before the transform."""
    cfg, _ = CONFIGS[config]
    camera, logo = skimage.data.camera(), skimage.data.logo()
    cases = [
        (Image.fromarray(camera), camera),
        (Image.fromarray(camera), camera[..., None]),
        (Image.fromarray(logo), logo),
    ]
    for pil, array in cases:
        expected = _timm_eval(cfg, None, pil.convert("RGB"))
        assert np.abs(preprocess_image(pil, cfg) - expected).max() <= PIL_EXACT, pil.mode
        assert np.abs(preprocess_image(array, cfg) - expected).max() <= PIL_EXACT, array.shape


def test_float_arrays_are_resampled_without_rounding():
    """Float input is resized in PIL's float mode: close to timm, no 8-bit rounding."""
    cfg, _ = CONFIGS["bicubic_224_crop0.875"]
    photo = _photos()["coffee"]
    expected = _timm_eval(cfg, None, Image.fromarray(photo))
    ours = preprocess_image(photo.astype(np.float32), cfg)
    max_bound, mean_bound = KERAS_BOUNDS["bicubic"]
    assert np.abs(ours - expected).max() <= max_bound
    assert np.abs(ours - expected).mean() <= mean_bound
    grey = skimage.data.camera().astype(np.float64)
    np.testing.assert_allclose(preprocess_image(grey, cfg), preprocess_image(np.stack([grey] * 3, -1), cfg))


def test_batch_apis_stack_single_images():
    cfg, _ = CONFIGS["squash_224_crop0.875"]
    photos = list(_photos().values())
    expected = np.stack([preprocess_image(p, cfg) for p in photos])
    np.testing.assert_array_equal(preprocess_batch(photos, cfg), expected)
    np.testing.assert_array_equal(Preprocessor(cfg)([Image.fromarray(p) for p in photos]), expected)
    same_size = np.stack([photos[2], photos[2][:, ::-1]])
    np.testing.assert_array_equal(Preprocessor(cfg)(same_size), np.stack([preprocess_image(p, cfg) for p in same_size]))
    np.testing.assert_array_equal(Preprocessor(cfg)(photos[0]), expected[0])


def _same_size_batch(photo):
    """A batch of two same-size real images: the photo and its mirror image."""
    return np.stack([photo, photo[:, ::-1]])


@pytest.mark.parametrize("config", KERAS_CONFIGS)
def test_keras_layer_matches_timm(config):
    cfg, input_size = CONFIGS[config]
    if cfg.get("interpolation") == "lanczos" and keras.backend.backend() == "torch":
        pytest.skip("Keras' torch backend has no lanczos resize")
    preprocessor = Preprocessor(cfg, input_size)
    max_bound, mean_bound = KERAS_BOUNDS[preprocessor.params["interpolation"]]
    for name, photo in _photos().items():
        batch = _same_size_batch(photo)
        layer = preprocessor.keras_layer(photo.shape[:2])
        ours = keras.ops.convert_to_numpy(layer(batch.astype(np.float32)))
        for image, out in zip(batch, ours):
            delta = np.abs(out - _timm_eval(cfg, input_size, Image.fromarray(image)))
            assert delta.max() <= max_bound, (name, delta.max())
            assert delta.mean() <= mean_bound, (name, delta.mean())
            # The gap is PIL's 8-bit rounding: PIL resampling in float agrees.
            float_pil = preprocessor(image.astype(np.float32))
            np.testing.assert_allclose(out, float_pil, atol=1e-3, err_msg=name)


def test_keras_layer_in_tf_data():
    tf = pytest.importorskip("tensorflow")
    photo = _photos()["chelsea"]
    batch = _same_size_batch(photo)
    layer = Preprocessor(CONFIGS["bicubic_224_crop0.875"][0]).keras_layer(photo.shape[:2])
    expected = keras.ops.convert_to_numpy(layer(batch.astype(np.float32)))
    per_image = tf.data.Dataset.from_tensor_slices(batch).map(layer)
    np.testing.assert_allclose(np.stack([x.numpy() for x in per_image]), expected, atol=1e-5)
    batched = tf.data.Dataset.from_tensor_slices(batch).batch(2).map(layer)
    np.testing.assert_allclose(next(iter(batched)).numpy(), expected, atol=1e-5)


def test_keras_layer_in_model_saves_and_loads(tmp_path):
    photo = _photos()["rocket"]
    batch = _same_size_batch(photo).astype(np.float32)
    layer = Preprocessor(CONFIGS["bicubic_288_crop0.95_test_size"][0], 288).keras_layer(photo.shape)
    inputs = keras.Input(photo.shape)
    model = keras.Model(inputs, layer(inputs))
    expected = keras.ops.convert_to_numpy(layer(batch))
    np.testing.assert_allclose(model.predict(batch, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "pre.keras")
    loaded = keras.saving.load_model(tmp_path / "pre.keras")
    assert isinstance(loaded.layers[-1].layers[1], preprocessing.FixedCrop)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), expected, atol=1e-5)


def test_keras_layer_refuses_what_it_cannot_match():
    chelsea_size = _photos()["chelsea"].shape[:2]
    with pytest.raises(ValueError, match="pads"):
        Preprocessor(CONFIGS["border_224_crop1.0"][0]).keras_layer(chelsea_size)
    with pytest.raises(ValueError, match="box"):
        Preprocessor({"interpolation": "box"}).keras_layer(chelsea_size)


@pytest.mark.parametrize("cfg", [None, {"mean": CLIP_MEAN, "std": CLIP_STD}])
def test_preprocess_input_formula(cfg):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    mean = np.array((cfg or {}).get("mean", (0.485, 0.456, 0.406)))
    std = np.array((cfg or {}).get("std", (0.229, 0.224, 0.225)))
    expected = (x.astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(preprocess_input(x, cfg), expected, atol=1e-6)
    np.testing.assert_allclose(preprocess_input(x[0], cfg), expected[0], atol=1e-6)
    tensor_out = preprocess_input(keras.ops.convert_to_tensor(x.astype(np.float32)), cfg)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor_out), expected, atol=1e-5)
