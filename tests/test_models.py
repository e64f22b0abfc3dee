"""The model family: every timm architecture, the family classes (`ConvNeXtV1` / `ConvNeXtV2`), features,
bad arguments.
"""

import logging

import keras
import numpy as np
import pytest
import timm
import torch

import convnext_hub
from convnext_hub import ConvNeXtV1, ConvNeXtV2, create_convnext_v1, create_convnext_v2, create_model
from convnext_hub.convert.mapping import weight_slots
from convnext_hub.model import zeros_initialized
from convnext_hub.weights_io import build_shell

BIG = {"convnext_xlarge", "convnext_xxlarge", "convnextv2_huge"}


def _arch_params():
    return [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in timm.list_models("convnext*")]


def _timm_on_meta(arch, num_classes):
    with torch.device("meta"):
        return timm.create_model(arch, num_classes=num_classes)


def test_list_models_is_timms_list():
    assert convnext_hub.list_models() == sorted(timm.list_models("convnext*"))
    assert len(convnext_hub.list_models()) == 28


@pytest.mark.backend_independent
@pytest.mark.parametrize("arch", _arch_params())
def test_parameters_match_timm(arch):
    """Same parameter count as timm for num_classes 1000 and 0, and weights one-to-one in shape."""
    for num_classes in (1000, 0):
        with zeros_initialized():  # only shapes matter here
            model = create_model(arch, num_classes=num_classes)
        ref = _timm_on_meta(arch, num_classes)
        assert model.count_params() == sum(p.numel() for p in ref.parameters())
        timm_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        ours = {s.timm_key: tuple(s.timm_shape(model.conv_mlp)) for s in weight_slots(model)}
        assert ours == timm_shapes
        del model


def test_seed_quick_start():
    """The family-class API as keras.applications users write it."""
    model = create_convnext_v2(variant="atto", num_classes=10, input_shape=(32, 32, 3))
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    images = np.random.rand(16, 32, 32, 3).astype("float32")
    labels = np.random.randint(0, 10, 16)
    loss, acc = model.train_on_batch(images, labels)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0
    assert model.predict(images, verbose=0).shape == (16, 10)


def test_seed_backbone_and_micro_variant():
    """`create_convnext_v1` / `create_convnext_v2` with sizes and classes."""
    backbone = create_convnext_v1(variant="base", include_top=False, input_shape=(512, 512, 3))
    features = backbone.predict(np.random.rand(2, 512, 512, 3).astype("float32"), verbose=0)
    assert features.shape == (2, 16, 16, 1024)
    pico = create_convnext_v2(variant="pico", num_classes=100, input_shape=(96, 96, 3))
    assert pico.count_params() == sum(p.numel() for p in _timm_on_meta("convnextv2_pico", 100).parameters())


def test_seed_fine_tune_from_keras_file(tmp_path, caplog):
    """A pretrained .keras file, other classes and input size: the head is skipped with a warning."""
    source = create_convnext_v2("atto", num_classes=1000, input_shape=(224, 224, 3))
    path = tmp_path / "convnext_v2_atto_imagenet.keras"
    source.save(path)
    with caplog.at_level(logging.WARNING, logger="convnext_hub"):
        model = create_convnext_v2("atto", num_classes=20, input_shape=(128, 128, 3), pretrained=str(path))
    assert "head_fc" in caplog.text
    for name in ("stem_0", "stages_3_blocks_1_mlp_grn", "head_norm"):
        for a, b in zip(model.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert model.output_shape == (None, 20)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-5), loss="categorical_crossentropy")


def test_pretrained_weights_h5_same_head_loads_exactly(tmp_path):
    source = create_convnext_v1("atto", num_classes=3, input_shape=(64, 64, 3))
    path = tmp_path / "w.weights.h5"
    source.save_weights(path)
    model = create_convnext_v1("atto", num_classes=3, pretrained=str(path))
    x = np.random.rand(2, 64, 64, 3).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), source.predict(x, verbose=0))


def test_pretrained_from_other_architecture_is_refused(tmp_path):
    path = tmp_path / "femto.weights.h5"
    create_convnext_v1("femto", num_classes=3).save_weights(path)
    with pytest.raises(ValueError, match="femto.weights.h5"):
        create_convnext_v1("atto", num_classes=3, pretrained=str(path))


def test_seed_variant_tables():
    assert list(ConvNeXtV1.MODEL_VARIANTS) == [
        "atto",
        "femto",
        "pico",
        "nano",
        "tiny",
        "small",
        "base",
        "large",
        "xlarge",
        "xxlarge",
    ]
    assert list(ConvNeXtV2.MODEL_VARIANTS) == [
        "atto",
        "femto",
        "pico",
        "nano",
        "tiny",
        "small",
        "base",
        "large",
        "huge",
    ]
    assert ConvNeXtV1.MODEL_VARIANTS["tiny"]["depths"] == (3, 3, 9, 3)
    assert ConvNeXtV2.MODEL_VARIANTS["huge"]["dims"] == (352, 704, 1408, 2816)
    model = ConvNeXtV2.from_variant("tiny", num_classes=10, input_shape=(128, 128, 3))
    assert isinstance(model, ConvNeXtV2) and isinstance(model, convnext_hub.ConvNeXt)
    assert model.predict(np.random.rand(4, 128, 128, 3).astype("float32"), verbose=0).shape == (4, 10)
    assert isinstance(create_model("convnext_atto"), ConvNeXtV1)


@pytest.mark.slow
def test_seed_creation_all_variants():
    """Every V1 and V2 variant builds at 64x64 with 10 classes. Built as shells (variables declared, no values):
    the building is what is checked, and initialising the 846M-parameter xxlarge took minutes and 13 GB on torch."""
    for family in (ConvNeXtV1, ConvNeXtV2):
        for variant in family.MODEL_VARIANTS:
            model = build_shell(lambda: family.from_variant(variant, num_classes=10, input_shape=(64, 64, 3)))
            assert model.output_shape == (None, 10)
            del model


def test_v1_has_layer_scale_v2_has_grn_after_gelu():
    v1, v2 = create_model("convnext_atto"), create_model("convnextv2_atto")
    names1 = [layer.name for layer in v1.layers if layer.name.startswith("stages_0_blocks_0_")]
    names2 = [layer.name for layer in v2.layers if layer.name.startswith("stages_0_blocks_0_")]
    assert "stages_0_blocks_0_gamma" in names1 and not any("grn" in n for n in names1)
    order = [n.replace("stages_0_blocks_0_", "") for n in names2]
    assert order == ["conv_dw", "norm", "mlp_fc1", "mlp_grn", "mlp_fc2", "add"]
    assert v2.get_layer("stages_0_blocks_0_mlp_fc1").activation is keras.activations.gelu  # GRN after GELU
    assert v1.get_layer("stages_0_blocks_0_norm").epsilon == 1e-6
    with zeros_initialized():
        assert create_model("convnext_xxlarge", input_shape=(64, 64, 3)).get_layer("stem_1").epsilon == 1e-5


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 3), (2,)])
def test_features_only(out_indices):
    model = create_model("convnext_atto_ols", features_only=True, out_indices=out_indices, input_shape=(96, 128, 3))
    outputs = model.predict(np.random.rand(2, 96, 128, 3).astype("float32"), verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    dims = (40, 80, 160, 320)
    for i, y in zip(out_indices, outputs):
        stride = 4 * 2**i
        assert y.shape == (2, 96 // stride, 128 // stride, dims[i])


def test_features_feed_a_detection_head():
    backbone = create_model("convnextv2_atto", features_only=True, input_shape=(None, None, 3))
    fpn = [keras.layers.Conv2D(16, 1)(f) for f in backbone.outputs]
    head = keras.Model(backbone.input, [keras.layers.GlobalAveragePooling2D()(f) for f in fpn])
    assert [tuple(o.shape) for o in head(np.zeros((1, 64, 96, 3), "float32"))] == [(1, 16)] * 4


def test_include_top_false_pooling():
    for pooling, shape in (("avg", (None, 320)), ("max", (None, 320)), (None, (None, 2, 2, 320))):
        model = create_model("convnext_atto", include_top=False, pooling=pooling, input_shape=(64, 64, 3))
        assert model.output_shape == shape


def test_classifier_activation_and_num_classes_zero():
    model = create_model("convnext_atto", num_classes=4, classifier_activation="softmax", input_shape=(64, 64, 3))
    probs = model.predict(np.random.rand(3, 64, 64, 3).astype("float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with zeros_initialized():
        headless = create_model("convnext_large_mlp", num_classes=0, input_shape=(32, 32, 3))
    assert headless.output_shape == (None, 1536) and headless.layers[-1].name == "head_pre_logits_fc"
    assert headless.layers[-1].activation is keras.activations.gelu


def test_drop_path_rates_rise_linearly():
    model = create_model("convnext_atto", drop_path_rate=0.3)
    rates = [layer.rate for layer in model.layers if isinstance(layer, convnext_hub.StochasticDepth)]
    expected = np.linspace(0, 0.3, 12)[1:]  # the first block's rate is 0: no layer
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument, received",
    [
        (dict(model_name="convnext_tiniest"), "model_name", "'convnext_tiniest'"),
        (dict(model_name="convnext_atto", input_shape=(16, 16, 3)), "input_shape", "(16, 16, 3)"),
        (dict(model_name="convnext_atto", input_shape=(64, 64, 1)), "input_shape", "(64, 64, 1)"),
        (dict(model_name="convnext_atto", input_shape=(64, 64)), "input_shape", "(64, 64)"),
        (dict(model_name="convnext_atto", features_only=True, out_indices=(0, 4)), "out_indices", "(0, 4)"),
        (dict(model_name="convnext_atto", include_top=False, pooling="mean"), "pooling", "'mean'"),
        (dict(model_name="convnext_atto", num_classes=-1), "num_classes", "-1"),
        (dict(model_name="convnext_atto", drop_path_rate=1.0), "drop_path_rate", "1.0"),
    ],
)
def test_bad_arguments(kwargs, argument, received):
    """ValueError naming the argument, the value received and what is accepted."""
    with pytest.raises(ValueError) as info:
        create_model(**kwargs)
    message = str(info.value)
    assert f"{argument}={received}" in message
    assert "ccepted" in message or "must be" in message


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"variant='gigantic'.*accepted"):
        create_convnext_v1("gigantic")
    with pytest.raises(ValueError, match="Did you mean"):
        create_model("convnext_tinyy")
