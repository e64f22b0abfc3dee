"""ConvNeXt in keras-hub's API: equal to timm, presets that keras-hub loads, keras-hub's conventions.

Every timm parameter is randomized before converting (timm initialises layer scale to 1e-6 and GRN
to zero, which hides mapping bugs), so a wrong layer name, head order or layout cannot hide behind an init value.
"""

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import checkpoints
import convnext_hub.config
from converters import convert, load_timm_state_dict
from convnext_hub import ConvNeXt, create_model
from convnext_hub.convert.randomize import randomize_
from convnext_hub.convert.verification import Comparison, timm_outputs
from convnext_hub.keras_hub import (
    ConvNeXtBackbone,
    ConvNeXtImageClassifier,
    ConvNeXtImageClassifierPreprocessor,
    ConvNeXtImageConverter,
    from_model,
    from_timm,
    upload_preset,
    write_preset,
)
from convnext_hub.variants import ARCHITECTURES
from tests.checkpoint_factory import random_timm_model, save_safetensors, state_dict_numpy
from tests.hub_server import local_hub  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
REPRESENTATIVE = [
    "convnext_atto",
    "convnextv2_atto",
    "convnext_atto_ols",
    "convnext_atto_rms",
    "convnext_tiny_hnf",
    "convnext_large_mlp",
]
PRESET_FILES = {
    "config.json",
    "metadata.json",
    "model.weights.h5",
    "task.json",
    "task.weights.h5",
    "preprocessor.json",
    "image_converter.json",
    "README.md",
}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# Preprocessed images against timm's PIL transform, normalized units: Keras' float resize
# vs PIL's 8-bit passes (see tests/test_preprocessing.py for where the gap comes from).
PHOTO_MAX_BOUND, PHOTO_MEAN_BOUND = 0.35, 0.006
LOGITS_BOUND = 0.02  # relative to max|timm logit|, on those photos
CENTER_CFG = checkpoints.resolve("convnext_atto.d2_in1k")  # 224, crop_pct 0.875, center
SQUASH_CFG = next(  # crop_pct 1.0, squash
    checkpoints.resolve(n) for n in checkpoints.list_pretrained() if checkpoints.resolve(n)["crop_mode"] == "squash"
)


def _images(height, width, seed=0):
    return np.random.RandomState(seed).standard_normal((2, height, width, 3)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _pyramid(backbone, images):
    outputs = keras.Model(backbone.input, backbone.pyramid_outputs)(images, training=False)
    return [_numpy(outputs[key]) for key in ("P2", "P3", "P4", "P5")]


def _assert_equal_to_timm(task, reference, images, what):
    """Each pyramid map and the logits within the project's bar; returns the worst relative |Δ|."""
    expected_stages, expected_logits = timm_outputs(reference, images)
    actual = _pyramid(task.backbone, images) + [_numpy(task(images, training=False))]
    worst = 0.0
    for name, a, e in zip(("P2", "P3", "P4", "P5", "logits"), actual, expected_stages + [expected_logits]):
        assert a.shape == e.shape, f"{what} {name}: {a.shape} != {e.shape}"
        comparison = Comparison(name, float(np.abs(a - e).max()), float(np.abs(e).max()))
        assert comparison.passed, f"{what}: {comparison.line()}"
        worst = max(worst, comparison.relative)
    return worst


def _random_classifier(arch="convnext_atto", num_classes=17, seed=1, pretrained_cfg=None):
    reference = random_timm_model(arch, num_classes=num_classes, seed=seed)
    model = convert(state_dict_numpy(reference), arch=arch, source=arch)
    model.pretrained_cfg = pretrained_cfg
    return from_model(model), reference


def _run_python(script):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


# --------------------------------------------------------------------------- equal to timm


@pytest.mark.parametrize("arch", REPRESENTATIVE)
def test_task_and_pyramid_equal_timm(arch):
    task, reference = _random_classifier(arch)
    assert isinstance(task, ConvNeXtImageClassifier) and isinstance(task.backbone, ConvNeXtBackbone)
    for height, width in ((64, 64), (67, 45)):
        _assert_equal_to_timm(task, reference, _images(height, width), f"{arch} {height}x{width}")


def test_custom_geometry_equals_timm():
    """A geometry no timm architecture has: GRN, layer scale, simplenorm, overlap_act stem, 5x5 kernels, hnf."""
    from timm.models.convnext import ConvNeXt as TimmConvNeXt

    geometry = dict(
        depths=(1, 2, 1, 1),
        dims=(16, 24, 32, 48),
        use_grn=True,
        layer_scale_init_value=0.5,
        stem_type="overlap_act",
        norm="simplenorm",
        kernel_size=5,
        head_norm_first=True,
        conv_mlp=True,
    )
    reference = randomize_(
        TimmConvNeXt(
            num_classes=6,
            depths=geometry["depths"],
            dims=geometry["dims"],
            use_grn=True,
            ls_init_value=0.5,
            stem_type="overlap_act",
            norm_layer="simplenorm",
            kernel_sizes=5,
            head_norm_first=True,
            conv_mlp=True,
        ),
        3,
    ).eval()
    model = load_timm_state_dict(ConvNeXt(num_classes=6, **geometry), state_dict_numpy(reference))
    task = from_model(model)
    assert task.backbone.architecture is None and task.backbone.kernel_size == 5
    _assert_equal_to_timm(task, reference, _images(67, 45), "custom geometry")


@pytest.mark.backend_independent
@pytest.mark.parametrize("arch", ARCHITECTURES)  # shapes only: the biggest take a second
def test_every_architecture_has_convnext_weights(arch):
    """The keras-hub task of every architecture holds exactly ConvNeXt's weights: names and shapes."""

    def named_shapes(layers):
        return {(layer.name, i): tuple(w.shape) for layer in layers for i, w in enumerate(layer.weights)}

    with keras.StatelessScope(initialize_variables=False):  # shapes only: nothing is allocated
        model = create_model(arch, num_classes=11)
        config = {k: v for k, v in ARCHITECTURES[arch].items() if k not in ("head_norm_first", "head_hidden_size")}
        backbone = ConvNeXtBackbone(**config, architecture=arch)
        task = ConvNeXtImageClassifier(
            backbone,
            11,
            head_norm_first=ARCHITECTURES[arch]["head_norm_first"],
            head_hidden_size=ARCHITECTURES[arch]["head_hidden_size"],
            compile=False,
        )
    task_layers = [layer for layer in task.layers if layer is not backbone] + list(backbone.layers)
    assert named_shapes(task_layers) == named_shapes(model.layers)
    assert [out.shape[-1] for out in backbone.pyramid_outputs.values()] == list(ARCHITECTURES[arch]["dims"])
    keras.backend.clear_session()  # drop the graphs of big models: later TensorFlow traces slow down otherwise


# --------------------------------------------------------------------------- raw photos through the preprocessor


def _photo(name):
    return getattr(skimage.data, name)()


def _timm_transform(cfg, photo):
    transform = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)
    return transform(Image.fromarray(photo)).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("cfg", [CENTER_CFG, SQUASH_CFG], ids=["center", "squash"])
def test_predict_on_photos_matches_timm_transform_and_model(cfg):
    cfg = {**cfg, "input_size": [3, 128, 160]}  # non-square, small: fast on an atto
    task, reference = _random_classifier(pretrained_cfg=cfg)
    converter = task.preprocessor.image_converter
    for name in PHOTOS:
        photo = _photo(name)
        expected = _timm_transform(cfg, photo)
        ours = _numpy(converter(photo))
        assert ours.shape == expected.shape == (128, 160, 3), name
        delta = np.abs(ours - expected)
        assert delta.max() <= PHOTO_MAX_BOUND and delta.mean() <= PHOTO_MEAN_BOUND, (name, delta.max(), delta.mean())
        # keras-hub's plain converter (resize to image_size) is far from timm: the bar discriminates.
        plain = ConvNeXtImageConverter(**{**converter.get_config(), "crop_pct": None})
        assert np.abs(_numpy(plain(photo)) - expected).mean() > 10 * PHOTO_MEAN_BOUND, name

        logits = task.predict(photo[None], verbose=0)
        with torch.no_grad():
            timm_logits = reference(torch.from_numpy(expected).permute(2, 0, 1)[None]).numpy()
        relative = np.abs(logits - timm_logits).max() / np.abs(timm_logits).max()
        assert relative <= LOGITS_BOUND, (name, relative)


def test_converter_in_tf_data_and_on_batches():
    import tensorflow as tf

    converter = ConvNeXtImageConverter.from_pretrained_cfg(CENTER_CFG, input_size=96)
    photo = _photo("chelsea")
    single = _numpy(converter(photo))
    assert single.shape == (96, 96, 3)
    np.testing.assert_allclose(_numpy(converter(np.stack([photo, photo]))), np.stack([single, single]), atol=1e-5)
    mapped = tf.data.Dataset.from_tensor_slices(photo[None].repeat(2, 0)).batch(2).map(converter)
    # tf.data resizes with TensorFlow whatever the backend: float round-off apart, the same.
    np.testing.assert_allclose(next(iter(mapped)).numpy(), np.stack([single, single]), atol=1e-4)


def test_converter_from_pretrained_cfg():
    converter = ConvNeXtImageConverter.from_pretrained_cfg(SQUASH_CFG)
    config = converter.get_config()
    assert config["image_size"] == tuple(SQUASH_CFG["input_size"][1:])
    assert config["crop_pct"] == SQUASH_CFG["crop_pct"] and config["crop_mode"] == "squash"
    assert config["interpolation"] == "bicubic" and config["antialias"] is True
    np.testing.assert_allclose(config["scale"], 1 / (255 * np.asarray(SQUASH_CFG["std"])))
    np.testing.assert_allclose(config["offset"], -np.asarray(SQUASH_CFG["mean"]) / np.asarray(SQUASH_CFG["std"]))


# --------------------------------------------------------------------------- presets


def _preset_task(tmp_path):
    cfg = {**CENTER_CFG, "input_size": [3, 96, 96]}
    task, reference = _random_classifier(pretrained_cfg=cfg)
    folder = write_preset(
        task,
        tmp_path / "preset",
        card={
            "repo_id": "org/atto-kh",
            "equivalence": {
                "tolerance": 1e-5,
                "input_shape": [2, 96, 96, 3],
                "outputs": {"logits": {"max_abs_diff": 1.5e-6, "max_abs_ref": 3.0}},
            },
        },
    )
    return task, reference, folder


def _assert_same_task(loaded, task, photo):
    assert type(loaded) is ConvNeXtImageClassifier and isinstance(
        loaded.preprocessor.image_converter, ConvNeXtImageConverter
    )
    x = _images(64, 72)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(task(x)))
    np.testing.assert_array_equal(loaded.predict(photo[None], verbose=0), task.predict(photo[None], verbose=0))


def test_preset_round_trip_local(tmp_path):
    task, _, folder = _preset_task(tmp_path)
    assert {p.name for p in folder.iterdir()} == PRESET_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["registered_name"] == "convnext_hub>ConvNeXtBackbone"
    assert json.loads((folder / "metadata.json").read_text())["tasks"] == ["ImageClassifier"]
    card = (folder / "README.md").read_text()
    assert "library_name: keras-hub" in card and "license: apache-2.0" in card and "logits 5e-07" in card
    assert 'ImageClassifier.from_preset("hf://org/atto-kh")' in card

    photo = _photo("coffee")
    _assert_same_task(keras_hub.models.ImageClassifier.from_preset(str(folder)), task, photo)
    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    assert type(backbone) is ConvNeXtBackbone
    x = _images(64, 64)
    for a, e in zip(_pyramid(backbone, x), _pyramid(task.backbone, x)):
        np.testing.assert_array_equal(a, e)

    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    assert type(converter) is ConvNeXtImageConverter and converter.crop_pct == CENTER_CFG["crop_pct"]

    fresh = keras_hub.models.ImageClassifier.from_preset(str(folder), num_classes=5)
    assert fresh.num_classes == 5 and fresh.get_layer("head_fc").kernel.shape == (320, 5)
    assert _numpy(fresh(x)).shape == (2, 5)
    np.testing.assert_array_equal(_numpy(fresh.backbone(x)), _numpy(task.backbone(x)))  # pretrained backbone


def test_preset_round_trip_through_the_hub(local_hub, tmp_path):  # noqa: F811
    task, _, folder = _preset_task(tmp_path)
    url = upload_preset(folder, "org/atto-kh")
    assert "org/atto-kh" in url
    assert "license: apache-2.0" in local_hub.read_file("org/atto-kh", "README.md").decode()  # our card, kept
    _assert_same_task(keras_hub.models.ImageClassifier.from_preset("hf://org/atto-kh"), task, _photo("rocket"))
    backbone = keras_hub.models.Backbone.from_preset("hf://org/atto-kh")
    x = _images(64, 64)
    np.testing.assert_array_equal(_numpy(backbone(x)), _numpy(task.backbone(x)))
    assert _numpy(keras_hub.models.ImageClassifier.from_preset("hf://org/atto-kh", num_classes=3)(x)).shape == (2, 3)


def test_timm_repos_need_from_timm(local_hub, tmp_path, monkeypatch):  # noqa: F811
    """keras-hub's timm loader refuses ConvNeXt; `from_timm` takes the same repo through load_pretrained."""
    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(tmp_path / "cache"))
    reference = random_timm_model("convnext_atto", seed=4)
    weights = save_safetensors(reference.state_dict(), tmp_path / "model.safetensors")
    config = {"architecture": "convnext_atto", "num_classes": 1000, "pretrained_cfg": CENTER_CFG}
    local_hub.add_commit(
        "timm/convnext_atto.d2_in1k", {"model.safetensors": weights, "config.json": json.dumps(config)}
    )
    with pytest.raises(ValueError, match="no converter for timm models"):
        keras_hub.models.ImageClassifier.from_preset("hf://timm/convnext_atto.d2_in1k")

    task = from_timm("convnext_atto.d2_in1k")
    assert task.backbone.pretrained_cfg["name"] == "convnext_atto.d2_in1k"
    assert task.preprocessor.image_converter.crop_pct == CENTER_CFG["crop_pct"]
    _assert_equal_to_timm(task, reference, _images(64, 64), "from_timm")
    backbone = from_timm("convnext_atto.d2_in1k", task="backbone")
    assert type(backbone) is ConvNeXtBackbone and backbone.architecture == "convnext_atto"


def test_from_timm_local_file_keeps_head_norm_with_new_classes(tmp_path):
    reference = random_timm_model("convnext_large_mlp", num_classes=7, seed=5)
    path = save_safetensors(reference.state_dict(), tmp_path / "large_mlp.safetensors")
    task = from_timm(str(path), num_classes=3)
    assert task.num_classes == 3 and task.head_hidden_size == 1536
    for layer, index, key in (
        ("head_norm", 0, "head.norm.weight"),
        ("head_pre_logits_fc", 1, "head.pre_logits.fc.bias"),
    ):
        np.testing.assert_array_equal(_numpy(task.get_layer(layer).weights[index]), reference.state_dict()[key].numpy())


# --------------------------------------------------------------------------- keras-hub conventions


def test_config_is_the_constructor_arguments():
    backbone = ConvNeXtBackbone(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), image_shape=(64, 64, 3), name="bb")
    params = set(inspect.signature(ConvNeXtBackbone.__init__).parameters) - {"self", "kwargs"}
    assert set(backbone.get_config()) == params | {"name", "trainable"}
    rebuilt = ConvNeXtBackbone.from_config(backbone.get_config())
    assert rebuilt.get_config() == backbone.get_config()

    task = ConvNeXtImageClassifier(
        backbone,
        4,
        head_hidden_size=12,
        activation="softmax",
        dropout=0.1,
        preprocessor=ConvNeXtImageClassifierPreprocessor(
            ConvNeXtImageConverter.from_pretrained_cfg(CENTER_CFG, input_size=64)
        ),
    )
    params = set(inspect.signature(ConvNeXtImageClassifier.__init__).parameters) - {"self", "kwargs"}
    assert set(task.get_config()) == params | {"name"}
    rebuilt = ConvNeXtImageClassifier.from_config(task.get_config())
    assert rebuilt.get_config()["head_hidden_size"] == 12 and rebuilt.get_config()["activation"] == "softmax"
    assert rebuilt.preprocessor.image_converter.get_config() == task.preprocessor.image_converter.get_config()


def test_dtype_reaches_every_layer():
    backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), use_grn=True, dtype="bfloat16")
    task = ConvNeXtImageClassifier(backbone, 3, compile=False)
    layers = [layer for layer in task.layers if layer is not backbone] + list(backbone.layers)
    computing = [layer for layer in layers if not isinstance(layer, keras.layers.InputLayer)]
    assert {layer.dtype_policy.name for layer in computing} == {"bfloat16"}
    assert _numpy(keras.ops.cast(task(_images(64, 64)), "float32")).shape == (2, 3)
    converted = from_model(create_model("convnext_atto", num_classes=3, dtype="bfloat16"))
    assert {layer.dtype_policy.name for layer in converted.backbone.layers[1:] + converted.layers[2:]} == {"bfloat16"}


def test_keras_file_save_and_load_safe_mode(tmp_path):
    task, _ = _random_classifier(pretrained_cfg={**CENTER_CFG, "input_size": [3, 64, 64]})
    task.save(tmp_path / "task.keras")
    loaded = keras.saving.load_model(tmp_path / "task.keras", safe_mode=True)
    _assert_same_task(loaded, task, _photo("chelsea"))
    assert loaded.backbone.pretrained_cfg["name"] == CENTER_CFG["name"]


def test_fit_lowers_the_loss():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 2, 32)
    images = rng.standard_normal((32, 32, 32, 3)) * 0.3 + np.where(labels, 1.0, -1.0)[:, None, None, None]
    backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), drop_path_rate=0.1)
    task = ConvNeXtImageClassifier(backbone, 2, dropout=0.1)
    task.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = task.evaluate(images.astype("float32"), labels, verbose=0)[0]
    task.fit(images.astype("float32"), labels, batch_size=8, epochs=4, verbose=0)
    after = task.evaluate(images.astype("float32"), labels, verbose=0)[0]
    assert after < 0.5 * before, (before, after)


def test_backbone_is_a_deeplab_v3_image_encoder():
    backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), image_shape=(64, 64, 3))
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[1, 2],
        image_shape=(64, 64, 3),
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=3)
    assert _numpy(segmenter(_images(64, 64))).shape == (2, 64, 64, 3)


def test_backbone_at_output_stride_16_serves_deeplab_v3():
    """DeepLab's setting: the last stage dilated, its map at stride 16 under keras-hub's name for that
    stride, P4 (keras-hub's DeepLabV3 upsamples the `spatial_pyramid_pooling_key` map by 2**n / `upsampling_size`)."""
    backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), image_shape=(64, 64, 3), output_stride=16)
    assert list(backbone.pyramid_outputs) == ["P2", "P3", "P4"]
    assert backbone.pyramid_outputs["P4"] is backbone.stage_maps[3]  # the deepest map at stride 16
    maps = keras.Model(backbone.inputs, backbone.pyramid_outputs)(_images(64, 64))
    assert {key: tuple(m.shape) for key, m in maps.items()} == {
        "P2": (2, 16, 16, 8),
        "P3": (2, 8, 8, 16),
        "P4": (2, 4, 4, 32),
    }
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        upsampling_size=4,
        dilation_rates=[6, 12, 18],
        image_shape=(64, 64, 3),
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=3)
    assert _numpy(segmenter(_images(64, 64))).shape == (2, 64, 64, 3)
    segmenter.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.RandomState(0).randint(0, 3, (2, 64, 64, 1))
    history = segmenter.fit(_images(64, 64), labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1), dims=(8, 16, 24, 32)), "depths"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 0, 32)), "dims"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_size=4), "kernel_size"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), drop_path_rate=1.0), "drop_path_rate"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), image_shape=(16, 16, 3)), "input_shape"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), stem_type="conv"), "stem_type"),
        (lambda: ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), norm="batchnorm"), "norm"),
        (lambda: ConvNeXtImageConverter(image_size=(64, 64), crop_pct=0), "crop_pct"),
        (lambda: ConvNeXtImageConverter(crop_pct=0.9), "crop_pct"),
        (lambda: ConvNeXtImageConverter(image_size=(64, 64), crop_mode="border"), "crop_mode"),
        (lambda: ConvNeXtImageConverter(image_size=(64, 64), interpolation="area"), "interpolation"),
        (lambda: ConvNeXtImageConverter(image_size=(64, 64), scale=0.0), "scale"),
        (lambda: from_timm("convnext_atto", task="detector"), "task"),
        (lambda: upload_preset(REPO_ROOT / "tests", "org/x"), "folder"),
    ],
)
def test_bad_arguments_name_themselves(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2, pooling="min"), "pooling"),
        (dict(num_classes=2, dropout=1.5), "dropout"),
    ],
)
def test_bad_classifier_arguments(kwargs, argument):
    backbone = ConvNeXtBackbone(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    with pytest.raises(ValueError, match=argument):
        ConvNeXtImageClassifier(backbone, **kwargs)


def test_classifier_of_a_headless_model_is_refused():
    with pytest.raises(ValueError, match="include_top"):
        from_model(create_model("convnext_atto", include_top=False))


@pytest.mark.backend_independent
def test_convnext_hub_does_not_import_keras_hub():
    result = _run_python("""
        import sys
        import convnext_hub
        from convnext_hub import load_pretrained
        from convnext_hub.hub import load_pretrained
        import converters.publish
        assert "keras_hub" not in sys.modules, sorted(m for m in sys.modules if m.startswith("keras_hub"))
        import convnext_hub.keras_hub
        assert "keras_hub" in sys.modules
    """)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.backend_independent
def test_publish_keras_hub_preset_from_a_hub_checkpoint(local_hub, tmp_path, monkeypatch):  # noqa: F811
    """`python -m converters.publish NAME --format keras-hub`: a preset keras-hub's from_preset loads, locally
    and from hf://, equal to timm, with the comparison with timm on its card."""
    from converters import publish as publish_cli
    from tests.hub_server import upload_timm_checkpoint

    monkeypatch.setattr(convnext_hub.config.current(), "cache_dir", str(tmp_path / "cache"))
    reference = random_timm_model("convnext_atto", num_classes=1000, seed=21)
    save_safetensors(reference.state_dict(), tmp_path / "atto.safetensors")
    upload_timm_checkpoint(local_hub, "convnext_atto.d2_in1k", tmp_path / "atto.safetensors")
    folder = tmp_path / "preset"
    assert (
        publish_cli.main(
            ["convnext_atto.d2_in1k", "--repo-id", "org/atto-kh", "--format", "keras-hub", "--dry-run", str(folder)]
        )
        == 0
    )
    card = (folder / "README.md").read_text()
    assert "library_name: keras-hub" in card and "logits" in card and "(bar 1e-05)" in card
    assert publish_cli.main(["convnext_atto.d2_in1k", "--repo-id", "org/atto-kh", "--format", "keras-hub"]) == 0
    x = _images(64, 72)
    expected = timm_outputs(reference, x)[1]
    for where in (str(folder), "hf://org/atto-kh"):
        task = keras_hub.models.ImageClassifier.from_preset(where)
        actual = _numpy(task(x))
        assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max(), where
